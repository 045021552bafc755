// Package rbdopts builds the librbd image options the benchmark's floors
// use, the driver's for a plain volume or a clone, in the test process
// and in the leanfloor process alike.
package rbdopts

import "github.com/ceph/go-ceph/rbd"

// New returns format-2 options with features and, for a clone, clone
// format 2. The caller destroys them.
func New(features uint64, clone bool) (*rbd.ImageOptions, error) {
	opts := rbd.NewRbdImageOptions()
	set := [][2]uint64{{uint64(rbd.ImageOptionFormat), 2}, {uint64(rbd.ImageOptionFeatures), features}}
	if clone {
		set = append(set, [2]uint64{uint64(rbd.ImageOptionCloneFormat), 2})
	}
	for _, o := range set {
		if err := opts.SetUint64(rbd.ImageOption(o[0]), o[1]); err != nil {
			opts.Destroy()
			return nil, err
		}
	}
	return opts, nil
}
