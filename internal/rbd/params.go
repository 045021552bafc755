package rbd

import (
	"math/bits"
	"strconv"
	"strings"

	"github.com/ceph/go-ceph/rbd"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/volid"
)

// Defaults of the StorageClass parameters.
const (
	defaultFeatures = "layering"
	defaultFsType   = "ext4"
)

// volumeParams are the StorageClass parameters CreateVolume acts on.
type volumeParams struct {
	ClusterID      string
	Pool           string
	DataPool       string
	RadosNamespace string
	Features       uint64
	FeatureNames   string
	NamePrefix     string
	FsType         string
	// StripeUnit/StripeCount (bytes, objects) and ObjectOrder (log2 of the
	// object size) are 0 for Ceph's defaults.
	StripeUnit  uint64
	StripeCount uint64
	ObjectOrder uint64
	// Encryption is nil for a plain volume.
	Encryption *encryption
}

// options are the librbd options of the volume's image.
func (v *volumeParams) options() imageOptions {
	return imageOptions{Features: v.Features, DataPool: v.DataPool, StripeUnit: v.StripeUnit,
		StripeCount: v.StripeCount, ObjectOrder: v.ObjectOrder}
}

var featureBits = map[string]uint64{
	rbd.FeatureNameLayering:      rbd.FeatureLayering,
	rbd.FeatureNameExclusiveLock: rbd.FeatureExclusiveLock,
	rbd.FeatureNameObjectMap:     rbd.FeatureObjectMap,
	rbd.FeatureNameFastDiff:      rbd.FeatureFastDiff,
	rbd.FeatureNameDeepFlatten:   rbd.FeatureDeepFlatten,
	rbd.FeatureNameJournaling:    rbd.FeatureJournaling,
}

// featureNeeds lists the features each feature depends on.
var featureNeeds = map[string]string{
	rbd.FeatureNameObjectMap:  rbd.FeatureNameExclusiveLock,
	rbd.FeatureNameFastDiff:   rbd.FeatureNameObjectMap,
	rbd.FeatureNameJournaling: rbd.FeatureNameExclusiveLock,
}

// notImplemented are ceph-csi StorageClass parameters this driver does not
// implement yet. Each is refused when it asks for something, so that a
// user never believes they got it: the value names what would be lost.
var notImplemented = map[string]string{
	"integrityMode":           "dm-integrity verification of encrypted volumes",
	"thickProvision":          "thick provisioning (zero-filling the image)",
	"journalPool":             "a journal in a pool other than the image's",
	"tryOtherMounters":        "falling back to another mounter",
	"cephLogDir":              "rbd-nbd logs in a directory of the node",
	"cephLogStrategy":         "keeping or compressing rbd-nbd logs",
	"BaseReadIops":            "QoS limits",
	"BaseWriteIops":           "QoS limits",
	"BaseReadBytesPerSecond":  "QoS limits",
	"BaseWriteBytesPerSecond": "QoS limits",
	"ReadIopsPerGiB":          "QoS limits",
	"WriteIopsPerGiB":         "QoS limits",
	"ReadBpsPerGiB":           "QoS limits",
	"WriteBpsPerGiB":          "QoS limits",
	"BaseVolSizeBytes":        "QoS limits",
}

// off reports whether a parameter's value asks for nothing: empty or a
// false boolean.
func off(v string) bool {
	v = strings.TrimSpace(v)
	if v == "" {
		return true
	}
	b, err := strconv.ParseBool(v)
	return err == nil && !b
}

// refuseNotImplemented is InvalidArgument for the first parameter of p we
// do not implement that asks for something.
func refuseNotImplemented(p map[string]string, table map[string]string) error {
	for name, what := range table {
		if v, ok := p[name]; ok && !off(v) {
			return csierr.Param(name, "%q is not supported by this driver yet (%s)", v, what)
		}
	}
	return nil
}

// parseFeatures turns "layering,exclusive-lock" into feature bits, checking
// the dependencies between features. A value that names no feature (empty,
// or only commas and spaces) is the default.
func parseFeatures(s string) (uint64, string, error) {
	var set uint64
	var names []string
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" || seen[f] {
			continue
		}
		bit, ok := featureBits[f]
		if !ok {
			return 0, "", csierr.Param("imageFeatures", "unknown feature %q", f)
		}
		seen[f] = true
		set |= bit
		names = append(names, f)
	}
	if len(names) == 0 {
		return featureBits[defaultFeatures], defaultFeatures, nil
	}
	for _, f := range names {
		if need, ok := featureNeeds[f]; ok && !seen[need] {
			return 0, "", csierr.Param("imageFeatures", "feature %q needs %q", f, need)
		}
	}
	return set, strings.Join(names, ","), nil
}

// parseSize parses a byte count parameter; 0 means unset.
func parseSize(name, v string) (uint64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil || n == 0 {
		return 0, csierr.Param(name, "%q is not a positive number of bytes", v)
	}
	return n, nil
}

// Bounds librbd puts on the layout: object sizes from 4 KiB to 32 MiB, and
// stripe units of at least 512 bytes that divide the object size.
const (
	minObjectSize = 4 << 10
	maxObjectSize = 32 << 20
	minStripeUnit = 512
)

// parseLayout reads stripeUnit, stripeCount and objectSize: librbd wants
// powers of two for the sizes, and both striping values or neither.
func parseLayout(v *volumeParams, p map[string]string) error {
	var err error
	if v.StripeUnit, err = parseSize("stripeUnit", p["stripeUnit"]); err != nil {
		return err
	}
	if p["stripeCount"] != "" {
		n, err := strconv.ParseUint(p["stripeCount"], 10, 32)
		if err != nil || n == 0 {
			return csierr.Param("stripeCount", "%q is not a positive number", p["stripeCount"])
		}
		v.StripeCount = n
	}
	switch {
	case v.StripeUnit != 0 && v.StripeCount == 0:
		return csierr.Param("stripeUnit", "needs stripeCount: stripeUnit and stripeCount go together")
	case v.StripeUnit == 0 && v.StripeCount != 0:
		return csierr.Param("stripeCount", "needs stripeUnit: stripeUnit and stripeCount go together")
	}
	if v.StripeUnit != 0 && (bits.OnesCount64(v.StripeUnit) != 1 || v.StripeUnit < minStripeUnit || v.StripeUnit > maxObjectSize) {
		return csierr.Param("stripeUnit", "%d is not a power of two from %d to %d", v.StripeUnit, minStripeUnit, maxObjectSize)
	}
	size, err := parseSize("objectSize", p["objectSize"])
	if err != nil {
		return err
	}
	if size != 0 {
		if bits.OnesCount64(size) != 1 || size < minObjectSize || size > maxObjectSize {
			return csierr.Param("objectSize", "%d is not a power of two from %d to %d", size, minObjectSize, maxObjectSize)
		}
		v.ObjectOrder = uint64(bits.TrailingZeros64(size))
		if v.StripeUnit > size {
			return csierr.Param("stripeUnit", "%d is larger than the object size %d", v.StripeUnit, size)
		}
	}
	return nil
}

func parseVolumeParams(p map[string]string) (*volumeParams, error) {
	v := &volumeParams{
		ClusterID:      p["clusterID"],
		Pool:           p["pool"],
		DataPool:       p["dataPool"],
		RadosNamespace: p["radosNamespace"],
		FsType:         p["csi.storage.k8s.io/fstype"],
	}
	if v.ClusterID == "" {
		return nil, csierr.Param("clusterID", "is required")
	}
	if len(v.ClusterID) > volid.MaxClusterIDLength {
		return nil, csierr.Param("clusterID", "%q is longer than %d bytes", v.ClusterID, volid.MaxClusterIDLength)
	}
	if v.Pool == "" {
		return nil, csierr.Param("pool", "is required")
	}
	if err := request.ValidPoolName("pool", v.Pool); err != nil {
		return nil, err
	}
	if v.DataPool != "" {
		if err := request.ValidPoolName("dataPool", v.DataPool); err != nil {
			return nil, err
		}
	}
	if err := request.ValidNamespace("radosNamespace", v.RadosNamespace); err != nil {
		return nil, err
	}
	if err := refuseNotImplemented(p, notImplemented); err != nil {
		return nil, err
	}
	var err error
	if v.Encryption, err = parseEncryption(p, ""); err != nil {
		return nil, err
	}
	if v.NamePrefix, err = request.NamePrefix(p, "volumeNamePrefix", request.DefaultVolumePrefix); err != nil {
		return nil, err
	}
	switch v.FsType {
	case "":
		v.FsType = defaultFsType
	case "ext4", "xfs":
	default:
		return nil, csierr.Param("csi.storage.k8s.io/fstype", "%q is not ext4 or xfs", v.FsType)
	}
	if f := p["imageFormat"]; f != "" && f != "2" {
		return nil, csierr.Param("imageFormat", "%q: only format 2 images are made", f)
	}
	if v.Features, v.FeatureNames, err = parseFeatures(p["imageFeatures"]); err != nil {
		return nil, err
	}
	if err := parseLayout(v, p); err != nil {
		return nil, err
	}
	if m := p["mounter"]; m != "" && m != "rbd" && m != "krbd" && m != "rbd-nbd" && m != "rbd-fuse" && m != "fuse" {
		return nil, csierr.Param("mounter", "%q is not krbd, rbd-nbd or rbd-fuse", m)
	}
	return v, nil
}

// snapshotPrefix returns the snapshotNamePrefix parameter or its default.
func snapshotPrefix(p map[string]string) (string, error) {
	return request.NamePrefix(p, "snapshotNamePrefix", request.DefaultSnapshotPrefix)
}
