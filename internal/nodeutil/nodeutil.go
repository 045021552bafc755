// Package nodeutil holds the node-side steps RBD and CephFS share: publishing
// a staged volume with a bind mount, unpublishing it, volume statistics, and
// the small state files that let a restarted plugin find what it staged.
package nodeutil

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// Publisher bind-mounts staged volumes into pods' target paths.
type Publisher struct {
	Mounter mount.Interface
}

// IsMountPoint reports whether path is a mount point; a missing path is not.
func (p *Publisher) IsMountPoint(path string) (bool, error) {
	notMnt, err := p.Mounter.IsLikelyNotMountPoint(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return !notMnt, nil
}

// BindDir bind-mounts the directory source onto target (created when
// missing), read-only when asked. An existing mount at target is kept.
func (p *Publisher) BindDir(source, target string, readOnly bool, flags []string) error {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("creating target %s: %v", target, err)
	}
	return p.bind(source, target, readOnly, flags)
}

// BindFile bind-mounts the block device source onto the file target (created
// when missing): raw block volumes are published as the device itself.
func (p *Publisher) BindFile(source, target string, readOnly bool) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return fmt.Errorf("creating %s: %v", filepath.Dir(target), err)
	}
	f, err := os.OpenFile(target, os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("creating target file %s: %v", target, err)
	}
	f.Close()
	return p.bind(source, target, readOnly, nil)
}

func (p *Publisher) bind(source, target string, readOnly bool, flags []string) error {
	mounted, err := p.IsMountPoint(target)
	if err != nil {
		return fmt.Errorf("checking %s: %v", target, err)
	}
	if mounted {
		return nil
	}
	opts := append([]string{"bind"}, flags...)
	if readOnly {
		opts = append(opts, "ro")
	}
	if err := p.Mounter.Mount(source, target, "", opts); err != nil {
		return fmt.Errorf("bind-mounting %s on %s: %v", source, target, err)
	}
	return nil
}

// Published is embedded in a staged volume's node record: the paths the
// volume is published at.
type Published struct {
	Targets []string `json:"targets,omitempty"`
}

func (p *Published) published() *Published { return p }

// publishedRecord is a node record that embeds Published.
type publishedRecord interface{ published() *Published }

// CheckSingleWriter refuses to publish a SINGLE_NODE_SINGLE_WRITER volume at
// target while one of the other recorded targets is still mounted: the mode
// promises one writer, and kubelet relies on the plugin to keep it.
func (p *Publisher) CheckSingleWriter(volumeID string, vcap *csi.VolumeCapability, rec *Published, target string) error {
	if vcap.GetAccessMode().GetMode() != csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		return nil
	}
	for _, other := range rec.Targets {
		if other == target {
			continue
		}
		if mounted, _ := p.IsMountPoint(other); mounted {
			return status.Errorf(codes.FailedPrecondition,
				"volume %s has access mode SINGLE_NODE_SINGLE_WRITER and is already published at %s", volumeID, other)
		}
	}
	return nil
}

// Unpublish unmounts target and removes it; a target that is already gone
// is fine.
func (p *Publisher) Unpublish(target string) error {
	if err := mount.CleanupMountPoint(target, p.Mounter, true); err != nil {
		return fmt.Errorf("unmounting %s: %v", target, err)
	}
	return nil
}

// FilesystemStats reports bytes and inodes of the filesystem at path.
func FilesystemStats(path string) (*csi.NodeGetVolumeStatsResponse, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, csierr.Errorf(csierr.ErrNotFound, "volume path %s does not exist", path)
		}
		return nil, fmt.Errorf("statfs %s: %v", path, err)
	}
	bs := int64(st.Bsize)
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs,
			Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree),
			Used: int64(st.Files - st.Ffree)},
	}}, nil
}

// BlockSize returns the size of the block device at path.
func BlockSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	size, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return 0, fmt.Errorf("BLKGETSIZE64 on %s: %w", path, err)
	}
	return int64(size), nil
}

// StateStore keeps one small JSON file per staged volume, so that a plugin
// restarted between stage and unstage still knows what to undo. The files
// never hold secrets.
type StateStore struct {
	Dir string
}

func (s StateStore) path(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(s.Dir, hex.EncodeToString(sum[:12])+".json")
}

// Save records v for volumeID.
func (s StateStore) Save(volumeID string, v any) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := s.path(volumeID) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path(volumeID))
}

// AddTarget adds target to rec, the record of volumeID already loaded, and
// saves it unless it holds target already.
func (s StateStore) AddTarget(volumeID string, rec publishedRecord, target string) error {
	p := rec.published()
	if slices.Contains(p.Targets, target) {
		return nil
	}
	p.Targets = append(p.Targets, target)
	if err := s.Save(volumeID, rec); err != nil {
		return fmt.Errorf("recording target %s of %s: %v", target, volumeID, err)
	}
	return nil
}

// ForgetTarget loads the record of volumeID into rec and drops target from
// it; a volume without a record (or without that target) is left alone.
func (s StateStore) ForgetTarget(volumeID string, rec publishedRecord, target string) error {
	ok, err := s.Load(volumeID, rec)
	if err != nil {
		return fmt.Errorf("reading node state of %s: %v", volumeID, err)
	}
	p := rec.published()
	i := slices.Index(p.Targets, target)
	if !ok || i < 0 {
		return nil
	}
	p.Targets = slices.Delete(p.Targets, i, i+1)
	if err := s.Save(volumeID, rec); err != nil {
		return fmt.Errorf("forgetting target %s of %s: %v", target, volumeID, err)
	}
	return nil
}

// Load reads the record of volumeID into v; ok is false when there is none.
func (s StateStore) Load(volumeID string, v any) (ok bool, err error) {
	data, err := os.ReadFile(s.path(volumeID))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, json.Unmarshal(data, v)
}

// Remove forgets volumeID.
func (s StateStore) Remove(volumeID string) error {
	err := os.Remove(s.path(volumeID))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Require returns InvalidArgument naming the first empty field.
func Require(fields ...[2]string) error {
	for _, f := range fields {
		if f[1] == "" {
			return csierr.Field(f[0], "is required")
		}
	}
	return nil
}
