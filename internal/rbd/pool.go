package rbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/common"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
)

// poolConn is an open pool (in the cluster's RADOS namespace) for one request.
type poolConn struct {
	cluster *config.Cluster
	conn    *cephconn.Conn
	io      *rados.IOContext
	name    string
	id      int64
}

func (p *poolConn) close() {
	p.io.Destroy()
	p.conn.Release()
}

func (p *poolConn) store() journal.Store { return journal.RadosStore{IO: p.io} }

// errPoolNotFound marks a pool that does not exist.
var errPoolNotFound = errors.New("pool not found")

// openPool opens pool by name, or by ID when name is empty.
func openPool(d *common.Deps, clusterID, name string, id int64, creds cephconn.Credentials) (*poolConn, error) {
	cl, conn, err := d.Connect(clusterID, creds)
	if err != nil {
		return nil, err
	}
	if name == "" {
		if name, err = conn.GetPoolByID(id); err != nil {
			conn.Release()
			if csierr.IsNotFound(err) {
				return nil, fmt.Errorf("%w: pool ID %d", errPoolNotFound, id)
			}
			return nil, fmt.Errorf("looking up pool ID %d: %w", id, err)
		}
	}
	io, err := conn.OpenIOContext(name)
	if err != nil {
		conn.Release()
		if csierr.IsNotFound(err) {
			return nil, status.Errorf(codes.NotFound, "pool %q does not exist in cluster %q", name, clusterID)
		}
		return nil, fmt.Errorf("opening pool %q: %w", name, err)
	}
	io.SetNamespace(cl.RBD.RadosNamespace)
	return &poolConn{cluster: cl, conn: conn, io: io, name: name, id: io.GetPoolID()}, nil
}

// readImageID reads an image's ID from its rbd_id object: one RADOS read,
// instead of opening the image.
func readImageID(io *rados.IOContext, image string) (string, error) {
	buf := make([]byte, 128)
	n, err := io.Read("rbd_id."+image, buf, 0)
	if err != nil {
		return "", fmt.Errorf("reading the ID of image %s: %w", image, err)
	}
	// A Ceph-encoded string: 32-bit little-endian length, then the bytes.
	if n < 4 {
		return "", fmt.Errorf("image %s: short rbd_id object", image)
	}
	l := int(binary.LittleEndian.Uint32(buf[:4]))
	if 4+l > n {
		return "", fmt.Errorf("image %s: malformed rbd_id object", image)
	}
	return string(buf[4 : 4+l]), nil
}

// imageSize returns an image's size without taking a watch on it.
func imageSize(io *rados.IOContext, name string) (uint64, error) {
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		return 0, err
	}
	defer img.Close()
	return img.GetSize()
}

// ourImageName matches the names this driver gives images: a prefix, a
// UUID and optionally "-temp". Only such images are purged from the trash.
var ourImageName = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(-temp)?$`)

// purgeTrash removes those of our images in the trash that no clone depends
// on any more. Removing a trashed clone can free its trashed parent, so it
// repeats while a pass makes progress. Images with children stay until a
// later call.
func purgeTrash(io *rados.IOContext) {
	for pass := 0; pass < maxChainWalk; pass++ {
		entries, err := rbd.GetTrashList(io)
		if err != nil {
			return
		}
		removed := 0
		for _, e := range entries {
			if ourImageName.MatchString(e.Name) && rbd.TrashRemove(io, e.Id, false) == nil {
				removed++
			}
		}
		if removed == 0 || removed == len(entries) {
			return
		}
	}
}
