// Package nodeutil holds the node-side steps RBD and CephFS share: publishing
// a staged volume with a bind mount, unpublishing it, volume statistics, and
// the small state files that let a restarted plugin find what it staged.
package nodeutil

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/service"
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
		return fmt.Errorf("creating target %s: %w", target, err)
	}
	return p.bind(source, target, readOnly, flags)
}

// BindFile bind-mounts the block device source onto the file target (created
// when missing): raw block volumes are published as the device itself.
func (p *Publisher) BindFile(source, target string, readOnly bool) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(target), err)
	}
	f, err := os.OpenFile(target, os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("creating target file %s: %w", target, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("creating target file %s: %w", target, err)
	}
	return p.bind(source, target, readOnly, nil)
}

func (p *Publisher) bind(source, target string, readOnly bool, flags []string) error {
	mounted, err := p.IsMountPoint(target)
	if err != nil {
		return fmt.Errorf("checking %s: %w", target, err)
	}
	if mounted {
		return nil
	}
	opts := append([]string{"bind"}, flags...)
	if readOnly {
		opts = append(opts, "ro")
	}
	if err := p.Mounter.Mount(source, target, "", opts); err != nil {
		return fmt.Errorf("bind-mounting %s on %s: %w", source, target, err)
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
			return csierr.Errorf(csierr.ErrPrecondition,
				"volume %s has access mode SINGLE_NODE_SINGLE_WRITER and is already published at %s", volumeID, other)
		}
	}
	return nil
}

// Unpublish unmounts target (every mount stacked there) and, when ours says
// the driver created it, removes the empty directory or the device file
// left behind. A path the driver did not create is never removed, mounted
// or not; a target that is already gone is fine.
func (p *Publisher) Unpublish(target string, ours bool) error {
	for i := 0; ; i++ {
		mounted, err := p.IsMountPoint(target)
		if err != nil && !mount.IsCorruptedMnt(err) {
			return fmt.Errorf("checking %s: %w", target, err)
		}
		if !mounted && err == nil {
			break
		}
		if i == 4 {
			return fmt.Errorf("%s is still mounted after 4 unmounts", target)
		}
		if err := p.Mounter.Unmount(target); err != nil {
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
	if !ours {
		return nil
	}
	// os.Remove takes an empty directory or a file, never a tree.
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		return fmt.Errorf("removing %s: %w", target, err)
	}
	return nil
}

// Owns reports whether rec records target as one of its publish targets:
// the driver created it.
func (p *Published) Owns(target string) bool { return slices.Contains(p.Targets, target) }

// BlockSize returns the size of the block device at path.
func BlockSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }() // opened read-only for the ioctl
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

// Save records v for volumeID, durably: the file and the directory entry
// are synced before Save returns, so a node that loses power right after a
// stage still knows what it mapped.
func (s StateStore) Save(volumeID string, v any) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := s.path(volumeID) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, s.path(volumeID)); err != nil {
		return err
	}
	return syncDir(s.Dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		_ = d.Close()
		return err
	}
	return d.Close()
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
		return fmt.Errorf("recording target %s of %s: %w", target, volumeID, err)
	}
	return nil
}

// ForgetTarget loads the record of volumeID into rec and drops target from
// it; a volume without a record (or without that target) is left alone.
func (s StateStore) ForgetTarget(volumeID string, rec publishedRecord, target string) error {
	ok, err := s.Load(volumeID, rec)
	if err != nil {
		return fmt.Errorf("reading node state of %s: %w", volumeID, err)
	}
	p := rec.published()
	i := slices.Index(p.Targets, target)
	if !ok || i < 0 {
		return nil
	}
	p.Targets = slices.Delete(p.Targets, i, i+1)
	if err := s.Save(volumeID, rec); err != nil {
		return fmt.Errorf("forgetting target %s of %s: %w", target, volumeID, err)
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
	if err != nil {
		return err
	}
	return syncDir(s.Dir)
}

// Path checks a path field of a node request: given, absolute and clean
// (a trailing slash aside), so that nothing lands under the plugin's
// working directory or outside the directory the CO meant.
func Path(field, p string) error {
	if p == "" {
		return csierr.Field(field, "is required")
	}
	if !filepath.IsAbs(p) {
		return csierr.Field(field, "%q is not an absolute path", p)
	}
	if strings.ContainsAny(p, "\x00\n") {
		return csierr.Field(field, "%q holds a control character", p)
	}
	if c := filepath.Clean(p); c != p && c+"/" != p {
		return csierr.Field(field, "%q is not a clean path (%q)", p, c)
	}
	return nil
}

// VolumePath checks the volume_path of NodeGetVolumeStats and
// NodeExpandVolume: required and clean, as Path; but a relative path names
// no published volume, which the spec calls NotFound (csi-sanity's "volume
// does not exist on the specified path" sends one).
func VolumePath(p string) error {
	if p != "" && !filepath.IsAbs(p) {
		return csierr.Errorf(csierr.ErrNotFound, "volume_path %q is not an absolute path: no volume is published there", p)
	}
	return Path("volume_path", p)
}

// Paths checks several path fields; each pair is a field name and its value.
func Paths(fields ...[2]string) error {
	for _, f := range fields {
		if err := Path(f[0], f[1]); err != nil {
			return err
		}
	}
	return nil
}

// VolumeAndPaths checks the fields every node call starts with: the
// volume ID is given and each named path field is a usable path.
func VolumeAndPaths(volumeID string, paths ...[2]string) error {
	if volumeID == "" {
		return csierr.Field("volume_id", "is required")
	}
	return Paths(paths...)
}

// TargetApart refuses a publish target that is the staging path itself or
// lies inside it.
func TargetApart(target, staging string) error {
	t, s := filepath.Clean(target), filepath.Clean(staging)
	if t == s || strings.HasPrefix(t, s+"/") {
		return csierr.Field("target_path", "%q is the staging path or inside it", target)
	}
	return nil
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

// Info answers NodeGetInfo for both drivers: the node ID and, with
// --domainlabels, the node's topology segments.
func Info(ctx context.Context, d *service.Deps) (*csi.NodeGetInfoResponse, error) {
	seg, err := d.NodeTopology(ctx)
	if err != nil {
		return nil, err
	}
	// Always a topology, empty without --domainlabels: a plugin whose
	// controller advertises accessibility constraints answers one (the
	// kubelet then records no keys).
	return &csi.NodeGetInfoResponse{NodeId: d.Options.NodeID, AccessibleTopology: &csi.Topology{Segments: seg}}, nil
}
