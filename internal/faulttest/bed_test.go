//go:build faults

// Package faulttest breaks a Ceph cluster under the real cephcsi binary and
// checks that the driver keeps its word: calls answer in bounded time, flows
// that the cluster can serve succeed, I/O through a staged volume resumes
// with its data intact, and the driver recovers by itself, never restarted.
//
// The test bed is scripts/ceph-faults.sh: three monitors, three OSDs (pools
// of size 3, min_size 2), a manager and an MDS, each in a network namespace
// of its own on a bridge; the driver and the test run on the node's side of
// that bridge. Faults are SIGKILL, SIGSTOP and links taken down, undone the
// same way. Every test prints its timings; TestMain prints them all at the
// end and checks that nothing of the bed is left on the machine.
package faulttest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// bed is the cluster of scripts/ceph-faults.sh.
type bed struct {
	dir    string
	script string
	c      *testutil.Cluster
}

var (
	theBed *bed
	// timings collects each test's measurements for the closing table.
	timingsMu sync.Mutex
	timings   []string
)

// record logs a measurement and keeps it for the table TestMain prints.
func record(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	timingsMu.Lock()
	timings = append(timings, fmt.Sprintf("%-34s %s", t.Name(), line))
	timingsMu.Unlock()
}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if _, err := exec.LookPath("ceph-mon"); err != nil {
		fmt.Fprintln(os.Stderr, "faulttest: no ceph-mon here; run through scripts/in-root (make test-faults)")
		return 1
	}
	script := filepath.Join(testutil.RepoRoot(), "scripts", "ceph-faults.sh")
	// The bed's directory holds its keys: private, and removed at the end.
	dir, err := os.MkdirTemp("", "cfault-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	b := &bed{dir: dir, script: script}
	// A run killed before its cleanup may have left a bed behind.
	if out, err := b.run("down"); err != nil {
		fmt.Fprintf(os.Stderr, "faulttest: clearing an earlier bed: %v\n%s", err, out)
		return 1
	}
	t0 := time.Now()
	up := exec.Command(script, "up", dir)
	up.Stdout, up.Stderr = os.Stderr, os.Stderr
	code := 1
	if err := up.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "faulttest: starting the bed: %v\n", err)
	} else if b.c, err = testutil.LoadCluster(script, dir); err != nil {
		fmt.Fprintf(os.Stderr, "faulttest: %v\n", err)
	} else {
		upTook := time.Since(t0)
		mem := b.memory()
		theBed = b
		code = m.Run()
		b.c.Close()
		timings = append([]string{fmt.Sprintf("%-34s up in %.0f s, daemons %s", "bed", upTook.Seconds(), mem)}, timings...)
	}
	if out, err := b.run("down"); err != nil {
		fmt.Fprintf(os.Stderr, "faulttest: taking the bed down: %v\n%s", err, out)
		code = 1
	}
	if out, _ := exec.Command(script, "residue").CombinedOutput(); len(bytes.TrimSpace(out)) > 0 {
		fmt.Fprintf(os.Stderr, "faulttest: left on the machine after the bed went down:\n%s", out)
		code = 1
	}
	fmt.Printf("\nfault timings:\n%s\n", strings.Join(timings, "\n"))
	return code
}

func (b *bed) run(args ...string) ([]byte, error) {
	cmd := exec.Command(b.script, append([]string{args[0], b.dir}, args[1:]...)...)
	return cmd.CombinedOutput()
}

func (b *bed) must(t *testing.T, args ...string) {
	t.Helper()
	if out, err := b.run(args...); err != nil {
		t.Fatalf("ceph-faults.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// memory sums the resident memory of the bed's daemons.
func (b *bed) memory() string {
	var total int64
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, pc := range procs {
		cl, _ := os.ReadFile(pc)
		if !bytes.Contains(cl, []byte(b.dir+"/ceph.conf")) {
			continue
		}
		st, _ := os.ReadFile(filepath.Join(filepath.Dir(pc), "status"))
		for _, l := range strings.Split(string(st), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				total += kb
			}
		}
	}
	return fmt.Sprintf("%d MiB RSS", total/1024)
}

func (b *bed) pid(t *testing.T, d string) int {
	t.Helper()
	out, err := b.run("pid", d)
	if err != nil {
		t.Fatalf("%s: %v %s", d, err, out)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("pid of %s: %q", d, out)
	}
	return pid
}

func (b *bed) signal(t *testing.T, d string, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(b.pid(t, d), sig); err != nil {
		t.Fatalf("%v to %s: %v", sig, d, err)
	}
	if sig == syscall.SIGKILL {
		// The daemon is gone; the next start must not find its PID alive.
		time.Sleep(100 * time.Millisecond)
	}
}

// ceph runs the ceph CLI as admin and decodes its JSON answer into v.
func (b *bed) ceph(v any, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ceph", append([]string{"--conf", b.c.Conf, "--name", "client.admin",
		"--connect-timeout", "15", "--format", "json"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("ceph %s: %w", strings.Join(args, " "), err)
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(out, v)
}

// clusterState is the part of `ceph status` the tests wait on.
type clusterState struct {
	Health struct {
		Status string `json:"status"`
	} `json:"health"`
	Quorum []string `json:"quorum_names"`
	OSDMap struct {
		Up int `json:"num_up_osds"`
		In int `json:"num_in_osds"`
	} `json:"osdmap"`
	PGMap struct {
		NumPGs int `json:"num_pgs"`
		States []struct {
			Name  string `json:"state_name"`
			Count int    `json:"count"`
		} `json:"pgs_by_state"`
	} `json:"pgmap"`
}

func (s clusterState) pgs(state string) int {
	n := 0
	for _, st := range s.PGMap.States {
		if st.Name == state {
			n += st.Count
		}
	}
	return n
}

// active counts the PGs that serve I/O.
func (s clusterState) active() int {
	n := 0
	for _, st := range s.PGMap.States {
		if strings.Contains(st.Name, "active") && !strings.Contains(st.Name, "peering") {
			n += st.Count
		}
	}
	return n
}

func (b *bed) state() (clusterState, error) {
	var s clusterState
	return s, b.ceph(&s, "status")
}

// waitFor polls cond on the cluster's state until it holds and returns how
// long that took.
func (b *bed) waitFor(t *testing.T, limit time.Duration, what string, cond func(clusterState) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var last clusterState
	var lastErr error
	for time.Since(start) < limit {
		s, err := b.state()
		if err == nil && cond(s) {
			return time.Since(start)
		}
		last, lastErr = s, err
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("waited %s for %s; last state %+v (%v)", limit, what, last, lastErr)
	return 0
}

func healthy(s clusterState) bool {
	return s.OSDMap.Up == 3 && len(s.Quorum) >= 3 && s.PGMap.NumPGs > 0 && s.pgs("active+clean") == s.PGMap.NumPGs
}

// heal undoes every fault (links up, stopped daemons continued, dead ones
// started) and waits until the cluster is healthy again.
func (b *bed) heal(t *testing.T) {
	t.Helper()
	out, _ := b.run("daemons")
	for _, d := range strings.Fields(string(out)) {
		_, _ = b.run("link", d, "up")
		if o, err := b.run("pid", d); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(o))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
		}
	}
	_, _ = b.run("link", "node", "up")
	b.must(t, "start")
	b.waitFor(t, 3*time.Minute, "a healthy cluster", healthy)
}

// driver runs the real binary for kind with the controller and node
// services on a plugin path of its own, and checks when the test ends that
// the node holds nothing of it any more.
func (b *bed) driver(t *testing.T, kind string, extra ...string) (*testutil.Process, string) {
	t.Helper()
	plugins, err := os.MkdirTemp("", "cfault-plugins-")
	if err != nil {
		t.Fatal(err)
	}
	// The plugin path is a shared mount, as the kubelet's is: a daemon
	// (re)started while a volume is staged gets a copy of the node's mounts
	// (ip netns exec makes it a mount namespace of its own, a slave of
	// ours), and the node's unmounts must reach that copy, or the copy keeps
	// the staged filesystem and its loop device busy.
	if err := syscall.Mount(plugins, plugins, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("", plugins, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		left := testutil.NodeLeftovers(plugins)
		if len(left) > 0 {
			t.Errorf("left on the node: %s", strings.Join(left, "; "))
		}
		if err := syscall.Unmount(plugins, 0); err != nil {
			t.Errorf("unmounting %s: %v", plugins, err)
			return
		}
		if len(left) == 0 {
			os.RemoveAll(plugins)
		}
	})
	args := append([]string{"--type=" + kind, "--controllerserver", "--nodeserver", "--nodeid=fault-node",
		"--configpath=" + b.c.ConfigJSON, "--pluginpath=" + plugins, "--logslowopinterval=5s"}, extra...)
	p := testutil.StartProcess(t, testutil.BuildBinary(t), nil, args...)
	return p, plugins
}

// vols tracks what a test made, deletes it at the end and checks that the
// cluster keeps nothing of it.
type vols struct {
	t       *testing.T
	b       *bed
	p       *testutil.Process
	kind    string
	plugins string
	marks   []string
	volumes []string
	snaps   []string
	staged  [][2]string
}

func (b *bed) newVols(t *testing.T, p *testutil.Process, kind, plugins string) *vols {
	v := &vols{t: t, b: b, p: p, kind: kind, plugins: plugins}
	t.Cleanup(v.cleanup)
	return v
}

func (v *vols) secrets() map[string]string {
	if v.kind == "cephfs" {
		return v.b.c.CephFSSecrets()
	}
	return v.b.c.RBDSecrets()
}

func (v *vols) createReq(name string, size int64, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	params := map[string]string{"clusterID": v.b.c.ClusterID, "pool": "rbd", "mounter": "rbd-fuse"}
	if v.kind == "cephfs" {
		params = map[string]string{"clusterID": v.b.c.ClusterID, "fsName": testutil.FSName}
	}
	v.marks = append(v.marks, name)
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{testutil.FSCap("ext4")}, Parameters: params,
		Secrets: v.secrets(), VolumeContentSource: src}
}

func (v *vols) snapReq(name, source string) *csi.CreateSnapshotRequest {
	v.marks = append(v.marks, name)
	return &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: source, Secrets: v.secrets(),
		Parameters: map[string]string{"clusterID": v.b.c.ClusterID}}
}

func (v *vols) stageReq(vol *csi.Volume, staging string) *csi.NodeStageVolumeRequest {
	secrets := v.b.c.RBDNodeSecrets()
	if v.kind == "cephfs" {
		secrets = v.b.c.CephFSNodeSecrets()
	}
	return &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: testutil.FSCap("ext4"), VolumeContext: vol.GetVolumeContext(), Secrets: secrets}
}

// track remembers a volume or snapshot ID (and its UUID) once.
func (v *vols) track(list *[]string, id string) {
	for _, have := range *list {
		if have == id {
			return
		}
	}
	*list = append(*list, id)
	if len(id) >= 36 {
		v.marks = append(v.marks, id[len(id)-36:])
	}
}

// create makes a volume, retrying what the sidecars retry, and fails the
// test when it cannot.
func (v *vols) create(name string, size int64, src *csi.VolumeContentSource) *csi.Volume {
	v.t.Helper()
	resp, err := retry(2*time.Minute, func(ctx context.Context) (*csi.CreateVolumeResponse, error) {
		return v.p.Controller.CreateVolume(ctx, v.createReq(name, size, src))
	})
	if err != nil {
		v.t.Fatalf("creating %s: %v", name, err)
	}
	v.track(&v.volumes, resp.GetVolume().GetVolumeId())
	return resp.GetVolume()
}

func (v *vols) snapshot(name, source string) *csi.Snapshot {
	v.t.Helper()
	resp, err := retry(2*time.Minute, func(ctx context.Context) (*csi.CreateSnapshotResponse, error) {
		return v.p.Controller.CreateSnapshot(ctx, v.snapReq(name, source))
	})
	if err != nil {
		v.t.Fatalf("snapshotting %s: %v", source, err)
	}
	v.track(&v.snaps, resp.GetSnapshot().GetSnapshotId())
	return resp.GetSnapshot()
}

// stage stages vol below the plugin path and returns the staging path.
func (v *vols) stage(vol *csi.Volume) string {
	v.t.Helper()
	staging := filepath.Join(v.plugins, "staging-"+uuid.NewString()[:8])
	v.staged = append(v.staged, [2]string{vol.GetVolumeId(), staging})
	if _, err := retry(2*time.Minute, func(ctx context.Context) (*csi.NodeStageVolumeResponse, error) {
		return v.p.Node.NodeStageVolume(ctx, v.stageReq(vol, staging))
	}); err != nil {
		v.t.Fatalf("staging %s: %v", vol.GetVolumeId(), err)
	}
	return staging
}

func (v *vols) unstage(volID, staging string) error {
	_, err := retry(2*time.Minute, func(ctx context.Context) (*csi.NodeUnstageVolumeResponse, error) {
		return v.p.Node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging})
	})
	return err
}

// cleanup unstages and deletes everything of the test and checks that the
// cluster and the node keep nothing of it.
func (v *vols) cleanup() {
	t := v.t
	for _, st := range v.staged {
		if err := v.unstage(st[0], st[1]); err != nil {
			t.Errorf("unstaging %s: %v", st[0], err)
		}
	}
	for i := len(v.snaps) - 1; i >= 0; i-- {
		if _, err := retry(2*time.Minute, func(ctx context.Context) (*csi.DeleteSnapshotResponse, error) {
			return v.p.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: v.snaps[i], Secrets: v.secrets()})
		}); err != nil {
			t.Errorf("deleting snapshot %s: %v", v.snaps[i], err)
		}
	}
	for i := len(v.volumes) - 1; i >= 0; i-- {
		// A helper that lost its session leaves a watch the OSDs drop only
		// after osd_client_watch_timeout (10 s here): until then the image
		// counts as in use (FailedPrecondition), and the provisioner
		// would retry.
		deadline := time.Now().Add(90 * time.Second)
		for {
			_, err := retry(2*time.Minute, func(ctx context.Context) (*csi.DeleteVolumeResponse, error) {
				return v.p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.volumes[i], Secrets: v.secrets()})
			})
			if err == nil {
				break
			}
			if status.Code(err) != codes.FailedPrecondition || time.Now().After(deadline) {
				t.Errorf("deleting volume %s: %v", v.volumes[i], err)
				break
			}
			time.Sleep(time.Second)
		}
	}
	if left := testutil.NodeLeftovers(v.plugins); len(left) > 0 {
		t.Errorf("left on the node: %s", strings.Join(left, "; "))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := v.b.c.Leftovers(t, v.marks...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			sort.Strings(left)
			t.Errorf("left on the cluster: %s", strings.Join(left, "; "))
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// transient are the codes a sidecar retries without giving up on the
// request: the call did not finish, or could not start, and may be repeated.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Aborted, codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// retry repeats call, each with 30 s to answer, while it fails with a
// transient code, for at most limit.
func retry[T any](limit time.Duration, call func(ctx context.Context) (T, error)) (T, error) {
	end := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		v, err := call(ctx)
		cancel()
		if err == nil || !transient(err) || time.Now().After(end) {
			return v, err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// timed runs call with a deadline of d and returns its error and how long
// the answer took.
func timed(d time.Duration, call func(ctx context.Context) error) (error, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	err := call(ctx)
	return err, time.Since(start)
}

// answers are the driver's own log lines of failed calls: method, code and
// how long the driver took to answer.
type answer struct {
	method, code string
	took         time.Duration
}

var failedLine = regexp.MustCompile(`"failed".* method="([^"]+)" code="([^"]+)".* took="([^"]+)"`)

func answers(log string) []answer {
	var out []answer
	for _, l := range strings.Split(log, "\n") {
		m := failedLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		d, err := time.ParseDuration(m[3])
		if err != nil {
			continue
		}
		out = append(out, answer{method: m[1][strings.LastIndex(m[1], "/")+1:], code: m[2], took: d})
	}
	return out
}

// block is the i-th MiB a writer writes: bytes that say where they belong.
func block(seed string, i int) []byte {
	b := make([]byte, 1<<20)
	var ctr [8]byte
	for off := 0; off < len(b); off += sha256.Size {
		binary.LittleEndian.PutUint64(ctr[:], uint64(i)<<32|uint64(off))
		sum := sha256.Sum256(append([]byte(seed), ctr[:]...))
		copy(b[off:], sum[:])
	}
	return b
}

// writer writes n MiB into a file, syncing every 4 MiB, and notes when
// each sync returned.
type writer struct {
	path, seed string
	n          int
	mu         sync.Mutex
	synced     []time.Time // one per completed sync
	err        error
	done       chan struct{}
}

func startWriter(path, seed string, n int, pause time.Duration) *writer {
	w := &writer{path: path, seed: seed, n: n, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			w.err = err
			return
		}
		defer f.Close()
		for i := 0; i < n; i++ {
			if _, err := f.Write(block(seed, i)); err != nil {
				w.err = fmt.Errorf("writing MiB %d: %w", i, err)
				return
			}
			if i%4 == 3 || i == n-1 {
				if err := f.Sync(); err != nil {
					w.err = fmt.Errorf("syncing after MiB %d: %w", i, err)
					return
				}
				w.mu.Lock()
				w.synced = append(w.synced, time.Now())
				w.mu.Unlock()
			}
			time.Sleep(pause)
		}
		w.err = f.Close()
	}()
	return w
}

func (w *writer) syncs() []time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Time(nil), w.synced...)
}

// wait waits for the writer to finish and fails the test on a write error.
func (w *writer) wait(t *testing.T, limit time.Duration) {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(limit):
		t.Fatalf("the writer of %s did not finish in %s (%d syncs)", w.path, limit, len(w.syncs()))
	}
	if w.err != nil {
		t.Fatalf("the writer of %s: %v", w.path, w.err)
	}
}

// verify reads the file back and compares every MiB.
func verify(t *testing.T, path, seed string, n int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading back %s: %v", path, err)
	}
	if len(data) != n<<20 {
		t.Fatalf("%s holds %d bytes, want %d", path, len(data), n<<20)
	}
	for i := 0; i < n; i++ {
		if !bytes.Equal(data[i<<20:(i+1)<<20], block(seed, i)) {
			t.Fatalf("%s: MiB %d differs from what was written", path, i)
		}
	}
}

// sessionMon finds the monitor holding the session of a cephx entity.
func (b *bed) sessionMon(t *testing.T, entity string) string {
	t.Helper()
	for _, d := range b.mons(t) {
		out, err := exec.Command("ceph", "--admin-daemon", filepath.Join(b.dir, "run", d+".asok"), "sessions").Output()
		if err != nil {
			continue
		}
		var sessions []struct {
			Entity string `json:"entity_name"`
		}
		if json.Unmarshal(out, &sessions) != nil {
			continue
		}
		for _, s := range sessions {
			if s.Entity == entity {
				return d
			}
		}
	}
	t.Fatalf("no monitor has a session of %s", entity)
	return ""
}

func (b *bed) mons(t *testing.T) []string {
	out, err := b.run("daemons")
	if err != nil {
		t.Fatalf("daemons: %v", err)
	}
	var mons []string
	for _, d := range strings.Fields(string(out)) {
		if strings.HasPrefix(d, "mon.") {
			mons = append(mons, d)
		}
	}
	return mons
}

// threads counts the threads of a process (librados runs a few dozen per
// connection: a leaked connection shows).
func threads(pid int) int {
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(st), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Threads:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}

func newName(what string) string { return "fault-" + what + "-" + uuid.NewString()[:8] }

func snapshotSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func volumeSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

const mib = 1 << 20
