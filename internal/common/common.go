// Package common holds what the RBD and CephFS services share: their
// dependencies, request validation, size rounding and operation locks.
package common

import (
	"context"
	"fmt"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/volid"
)

// Deps are the long-lived pieces every service uses.
type Deps struct {
	Options  *config.Options
	Clusters *config.Clusters
	Conns    *cephconn.Pool
	// Locks serialises work on one request name or volume ID.
	Locks *locks.Set
}

// Lock takes the operation locks for keys, or returns Aborted when another
// call holds one of them (the sidecars retry).
func (d *Deps) Lock(keys ...string) (release func(), err error) {
	release, ok := d.Locks.TryAcquireAll(keys...)
	if !ok {
		return nil, status.Errorf(codes.Aborted, "an operation on %s is already in progress", strings.Join(keys, ", "))
	}
	return release, nil
}

// Connect returns the cluster entry for clusterID and a connection to it.
func (d *Deps) Connect(clusterID string, creds cephconn.Credentials) (*config.Cluster, *cephconn.Conn, error) {
	cl, err := d.Clusters.Get(clusterID)
	if err != nil {
		return nil, nil, status.Errorf(codes.InvalidArgument, "clusterID %q: %v", clusterID, err)
	}
	conn, err := d.Conns.Get(cl.Monitors, creds)
	if err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	return cl, conn, nil
}

// Credentials extracts credentials from secrets; missing ones are
// InvalidArgument naming the expected keys.
func Credentials(secrets map[string]string, pairs ...[2]string) (cephconn.Credentials, error) {
	c, err := cephconn.FromSecrets(secrets, pairs...)
	if err != nil {
		return c, status.Error(codes.InvalidArgument, err.Error())
	}
	return c, nil
}

// Secret key pairs of the contract.
var (
	UserSecret  = [2]string{"userID", "userKey"}
	AdminSecret = [2]string{"adminID", "adminKey"}
)

const (
	// MiB is the allocation unit for volume sizes.
	MiB = int64(1) << 20
	// DefaultVolumeSize applies when a request carries no capacity range.
	DefaultVolumeSize = int64(1) << 30
)

// RoundedSize returns the size to allocate for a capacity range: the
// required bytes (or the limit, or 1 GiB when both are absent) rounded up to
// whole MiB, which must not exceed the limit.
func RoundedSize(r *csi.CapacityRange) (int64, error) {
	req, limit := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || limit < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity_range: bytes must not be negative")
	}
	if limit > 0 && req > limit {
		return 0, status.Errorf(codes.InvalidArgument, "capacity_range: required_bytes %d exceeds limit_bytes %d", req, limit)
	}
	size := req
	if size == 0 {
		size = DefaultVolumeSize
		if limit > 0 && limit < size {
			size = limit
		}
	}
	rounded := (size + MiB - 1) / MiB * MiB
	if limit > 0 && rounded > limit {
		// Rounding up would overshoot the limit: take the largest whole MiB
		// inside it, if that still satisfies the requirement.
		rounded = limit / MiB * MiB
		if rounded < req || rounded == 0 {
			return 0, status.Errorf(codes.OutOfRange, "capacity_range: no whole MiB size between %d and %d bytes", req, limit)
		}
	}
	return rounded, nil
}

// ValidateCapabilities checks volume capabilities. Multi-node writers are
// allowed only for block volumes unless sharedFS (CephFS) is set.
func ValidateCapabilities(caps []*csi.VolumeCapability, sharedFS bool) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume_capabilities: at least one is required")
	}
	for i, c := range caps {
		if err := validateCapability(c, sharedFS); err != nil {
			return status.Errorf(codes.InvalidArgument, "volume_capabilities[%d]: %v", i, err)
		}
	}
	return nil
}

func validateCapability(c *csi.VolumeCapability, sharedFS bool) error {
	if c == nil {
		return fmt.Errorf("empty capability")
	}
	block := c.GetBlock() != nil
	if !block && c.GetMount() == nil {
		return fmt.Errorf("access_type must be block or mount")
	}
	if sharedFS && block {
		return fmt.Errorf("block access is not supported by this driver")
	}
	switch mode := c.GetAccessMode().GetMode(); mode {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
	case csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER:
		if !block && !sharedFS {
			return fmt.Errorf("access mode %s needs a block volume", mode)
		}
	default:
		return fmt.Errorf("access mode %s is not supported", mode)
	}
	return nil
}

// IsBlock reports whether any capability asks for raw block access.
func IsBlock(caps []*csi.VolumeCapability) bool {
	for _, c := range caps {
		if c.GetBlock() != nil {
			return true
		}
	}
	return false
}

// ParseID decodes a volume or snapshot ID; field names the request field for
// the error message.
func ParseID(field, id string) (volid.ID, error) {
	if id == "" {
		return volid.ID{}, status.Errorf(codes.InvalidArgument, "%s is required", field)
	}
	return volid.Decode(id)
}

// PassThrough copies StorageClass parameters into a volume context, leaving
// out the sidecars' own csi.storage.k8s.io/ keys except the fstype.
func PassThrough(params map[string]string) map[string]string {
	out := make(map[string]string, len(params)+8)
	for k, v := range params {
		if strings.HasPrefix(k, "csi.storage.k8s.io/") && k != "csi.storage.k8s.io/fstype" {
			continue
		}
		out[k] = v
	}
	return out
}

// CheckContext returns the context's error as a status, for long loops.
func CheckContext(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return nil
}
