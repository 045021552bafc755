package nodeutil

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// ProbeTimeout bounds one look at a volume path. A dead FUSE daemon answers
// ENOTCONN at once, but a kernel client cut off from its cluster can block
// stat or statfs for minutes, and a stats or health call must not hang
// with it.
const ProbeTimeout = 10 * time.Second

// Probe is what one look at a volume path found.
type Probe struct {
	Info    os.FileInfo
	Mounted bool
	// Size is a block device's size.
	Size int64
	// Statfs is the filesystem's figures; nil for a device.
	Statfs *unix.Statfs_t
	// Err says why the path did not answer; it wraps os.ErrNotExist for a
	// missing path.
	Err error
}

// errNoAnswer marks a look that ran out of time.
var errNoAnswer = errors.New("did not answer")

// probes holds the paths being looked at: a caller finding a look still
// blocked is told so instead of leaving another goroutine stuck in the
// kernel.
var probes = struct {
	sync.Mutex
	running map[string]time.Time
}{running: map[string]time.Time{}}

// ProbePath looks at path (stat, mount point, statfs) within timeout.
func (p *Publisher) ProbePath(path string, timeout time.Duration) Probe {
	probes.Lock()
	if since, ok := probes.running[path]; ok {
		probes.Unlock()
		return Probe{Err: fmt.Errorf("%s %w: an earlier look has not returned since %s", path, errNoAnswer, since.UTC().Format(time.RFC3339))}
	}
	probes.running[path] = time.Now()
	probes.Unlock()

	done := make(chan Probe, 1)
	go func() {
		defer func() {
			probes.Lock()
			delete(probes.running, path)
			probes.Unlock()
		}()
		done <- p.look(path)
	}()
	select {
	case pr := <-done:
		return pr
	case <-time.After(timeout):
		return Probe{Err: fmt.Errorf("%s %w within %s", path, errNoAnswer, timeout)}
	}
}

func (p *Publisher) look(path string) Probe {
	fi, err := os.Stat(path)
	if err != nil {
		return Probe{Err: err}
	}
	pr := Probe{Info: fi}
	if fi.Mode()&os.ModeDevice != 0 {
		pr.Size, pr.Err = readableDevice(path)
		return pr
	}
	if pr.Mounted, err = p.IsMountPoint(path); err != nil {
		pr.Err = err
		return pr
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		pr.Err = fmt.Errorf("statfs %s: %w", path, err)
		return pr
	}
	pr.Statfs = &st
	return pr
}

// Stats answers NodeGetVolumeStats for either driver: the request's fields
// checked, then VolumeStats of a bounded look at volume_path.
func (p *Publisher) Stats(req *csi.NodeGetVolumeStatsRequest, fsUsage func(path string, st *unix.Statfs_t) []*csi.VolumeUsage) (*csi.NodeGetVolumeStatsResponse, error) {
	path := req.GetVolumePath()
	if err := VolumeAndPaths(req.GetVolumeId()); err != nil {
		return nil, err
	}
	if err := VolumePath(path); err != nil {
		return nil, err
	}
	return VolumeStats(p.ProbePath(path, ProbeTimeout), path, fsUsage)
}

// VolumeStats answers NodeGetVolumeStats from a look at path: NotFound when
// nothing is mounted there, the device's size for a block volume, the
// filesystem's figures through fsUsage otherwise.
func VolumeStats(pr Probe, path string, fsUsage func(path string, st *unix.Statfs_t) []*csi.VolumeUsage) (*csi.NodeGetVolumeStatsResponse, error) {
	switch {
	case errors.Is(pr.Err, os.ErrNotExist):
		return nil, csierr.Errorf(csierr.ErrNotFound, "volume_path %s does not exist", path)
	case pr.Err != nil:
		return nil, fmt.Errorf("volume_path %s: %w", path, pr.Err)
	case pr.Statfs == nil:
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: pr.Size}}}, nil
	case !pr.Mounted:
		return nil, csierr.Errorf(csierr.ErrNotFound, "volume_path %s is not a mounted volume", path)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: fsUsage(path, pr.Statfs)}, nil
}

// readableDevice returns the size of the block device at path after reading
// its first 4 KiB past the page cache: a mapping whose daemon died or whose
// cluster is unreachable fails or blocks here, where a cached read would
// not notice. Size 0 is what a disconnected nbd device reports.
func readableDevice(path string) (int64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening %s: %w", path, err)
	}
	defer func() { _ = unix.Close(fd) }() // read-only
	size, err := unix.IoctlGetInt(fd, unix.BLKGETSIZE64)
	if err != nil {
		return 0, fmt.Errorf("size of %s: BLKGETSIZE64: %w", path, err)
	}
	if size == 0 {
		return 0, fmt.Errorf("device %s reports size 0: its mapping is gone", path)
	}
	// O_DIRECT wants an aligned buffer; an anonymous mapping is page-aligned.
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return 0, err
	}
	defer func() { _ = unix.Munmap(buf) }()
	if _, err := unix.Pread(fd, buf[:min(len(buf), size)], 0); err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return int64(size), nil
}

// StatfsUsage is the bytes and inodes of a filesystem; path is unused (it
// has the shape Stats wants).
func StatfsUsage(_ string, st *unix.Statfs_t) []*csi.VolumeUsage {
	bs := st.Bsize
	return []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs,
			Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree),
			Used: int64(st.Files - st.Ffree)},
	}
}

// Staged is what the node recorded of a staged volume, for a health look.
type Staged struct {
	StagingPath string
	Targets     []string
	// Block: the staging path holds no mount, the targets are devices.
	Block bool
	// Devices are the volume's mapped devices.
	Devices []string
}

// HealthPaths is what NodeGetVolumeHealth looks at.
type HealthPaths struct {
	// Mounts must each be a mounted filesystem that answers.
	Mounts []string
	// Devices must each be a block device that reports a size and reads.
	Devices []string
}

// CheckHealth validates a NodeGetVolumeHealth request and picks what to
// look at: the volume as load says the node staged it, with the staging
// and publish paths the request names in place of the recorded ones. A
// volume the node has no record of (load returns nil) is NotFound.
func CheckHealth(req *csi.NodeGetVolumeHealthRequest, load func() (*Staged, error)) (*HealthPaths, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Field("volume_id", "is required")
	}
	staging, publish := req.GetStagingTargetPath(), req.GetVolumePublishPath()
	for _, f := range [][2]string{{"staging_target_path", staging}, {"volume_publish_path", publish}} {
		if f[1] != "" {
			if err := Path(f[0], f[1]); err != nil {
				return nil, err
			}
		}
	}
	st, err := load()
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, csierr.Errorf(csierr.ErrNotFound, "volume %s is not staged on this node", req.GetVolumeId())
	}
	if staging == "" {
		staging = st.StagingPath
	}
	targets := st.Targets
	if publish != "" {
		targets = []string{publish}
	}
	hp := &HealthPaths{Devices: st.Devices}
	if st.Block {
		hp.Devices = append(slices.Clone(hp.Devices), targets...)
	} else {
		hp.Mounts = append([]string{staging}, targets...)
	}
	return hp, nil
}

// VolumeHealth answers NodeGetVolumeHealth for either driver: CheckHealth
// of the request against the node's record (load), then Health.
func (p *Publisher) VolumeHealth(req *csi.NodeGetVolumeHealthRequest, load func() (*Staged, error)) (*csi.NodeGetVolumeHealthResponse, error) {
	hp, err := CheckHealth(req, load)
	if err != nil {
		return nil, err
	}
	return p.Health(req.GetVolumeId(), hp), nil
}

// Health looks at each path of hp and reports the volume inaccessible from
// this node, with every reason found, when a path is missing, not mounted,
// not answering or a device that cannot be read.
func (p *Publisher) Health(volumeID string, hp *HealthPaths) *csi.NodeGetVolumeHealthResponse {
	var reason string
	var problems []string
	report := func(r, msg string) {
		if reason == "" {
			reason = r
		}
		problems = append(problems, msg)
	}
	look := func(path string, device bool) {
		pr := p.ProbePath(path, ProbeTimeout)
		switch {
		case errors.Is(pr.Err, os.ErrNotExist):
			report("PathMissing", path+" is missing")
		case errors.Is(pr.Err, errNoAnswer):
			report("NotResponding", pr.Err.Error())
		case pr.Err != nil:
			report("IOError", pr.Err.Error())
		case device && pr.Statfs != nil:
			report("NotADevice", path+" is not a block device")
		case !device && (pr.Statfs == nil || !pr.Mounted):
			report("NotMounted", path+" is not mounted")
		}
	}
	for _, m := range hp.Mounts {
		look(m, false)
	}
	for _, d := range hp.Devices {
		look(d, true)
	}
	health := &csi.VolumeHealth{VolumeId: volumeID}
	if len(problems) > 0 {
		health.HealthStatuses = []*csi.VolumeHealth_VolumeHealthEntry{{Status: csi.VolumeHealthErrorType_INACCESSIBLE,
			Reason: reason, Message: strings.Join(problems, "; ")}}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: health}
}
