//go:build integration

package rbd

import (
	"time"

	"github.com/leanceph/cephcsi/internal/cephconn"
)

// HeaderProbe gives the integration tests (package rbd_test, which cannot
// be imported here) the header reads of a live pool.
type HeaderProbe struct {
	c *radosCluster
	p *radosPool
}

// NewHeaderProbe opens pool through conn.
func NewHeaderProbe(conn *cephconn.Conn, pool string) (*HeaderProbe, error) {
	c := &radosCluster{conn: conn}
	p, err := c.OpenPool(pool, 0)
	if err != nil {
		return nil, err
	}
	return &HeaderProbe{c: c, p: p.(*radosPool)}, nil
}

// Close closes the pool (the connection stays the caller's).
func (h *HeaderProbe) Close() { h.p.Close() }

// Header is radosPool.Header: the parent's pool ID, namespace and image ID
// ("" without a parent) and the snapshot count.
func (h *HeaderProbe) Header(imageID string) (poolID int64, namespace, parentID string, snapshots int, err error) {
	hd, err := h.p.Header(imageID)
	if err != nil {
		return 0, "", "", 0, err
	}
	if hd.Parent != nil {
		poolID, namespace, parentID = hd.Parent.PoolID, hd.Parent.Namespace, hd.Parent.ImageID
	}
	return poolID, namespace, parentID, len(hd.SnapIDs), nil
}

// DescribedSnapshot is one snapshot as radosPool.Describe read it.
type DescribedSnapshot struct {
	ID      uint64
	Name    string
	Size    uint64
	Trash   bool
	Created time.Time
}

// Describe is radosPool.Describe: the parent's image ID ("" without one),
// the snapshots and the metadata values of keys.
func (h *HeaderProbe) Describe(imageID string, keys []string) (parentID string, snaps []DescribedSnapshot, meta map[string]string, err error) {
	f, err := h.p.Describe(imageID, keys)
	if err != nil {
		return "", nil, nil, err
	}
	if f.Parent != nil {
		parentID = f.Parent.ImageID
	}
	for _, s := range f.Snapshots {
		snaps = append(snaps, DescribedSnapshot(s))
	}
	return parentID, snaps, f.Metadata, nil
}

// TrashMarked is radosPool.TrashMarked.
func (h *HeaderProbe) TrashMarked(imageID string) (bool, error) { return h.p.TrashMarked(imageID) }

// Depth is cloneDepth of the named image.
func (h *HeaderProbe) Depth(name string) (int, error) {
	img, err := h.p.OpenImage(name, true)
	if err != nil {
		return 0, err
	}
	defer img.Close()
	return cloneDepth(h.c, img)
}
