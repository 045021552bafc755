//go:build faults

package faulttest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// provisionerTimeout is the deadline Rook's CSI sidecars give every call
// (CSI_GRPC_TIMEOUT_SECONDS, 150 s).
const provisionerTimeout = 150 * time.Second

// flowCall is one CSI call of a flow, timed.
type flowCall struct {
	what string
	took time.Duration
	err  error
}

// flows runs create, stage, unstage, snapshot, delete snapshot and delete
// of a fresh volume, each call once with the provisioner's deadline, and
// returns the calls.
func flows(v *vols) []flowCall {
	var calls []flowCall
	call := func(what string, f func(ctx context.Context) error) bool {
		err, took := timed(provisionerTimeout, f)
		calls = append(calls, flowCall{what, took, err})
		return err == nil
	}
	name := newName("flow")
	var vol *csi.Volume
	if !call("CreateVolume", func(ctx context.Context) error {
		resp, err := v.p.Controller.CreateVolume(ctx, v.createReq(name, 16*mib, nil))
		if err == nil {
			vol = resp.GetVolume()
			v.track(&v.volumes, vol.GetVolumeId())
		}
		return err
	}) {
		return calls
	}
	staging := filepath.Join(v.plugins, "flow-"+name)
	staged := call("NodeStageVolume", func(ctx context.Context) error {
		v.staged = append(v.staged, [2]string{vol.GetVolumeId(), staging})
		_, err := v.p.Node.NodeStageVolume(ctx, v.stageReq(vol, staging))
		return err
	})
	if staged && call("NodeUnstageVolume", func(ctx context.Context) error {
		_, err := v.p.Node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging})
		return err
	}) {
		v.staged = v.staged[:len(v.staged)-1]
	}
	var snapID string
	if call("CreateSnapshot", func(ctx context.Context) error {
		resp, err := v.p.Controller.CreateSnapshot(ctx, v.snapReq(name+"-snap", vol.GetVolumeId()))
		if err == nil {
			snapID = resp.GetSnapshot().GetSnapshotId()
			v.track(&v.snaps, snapID)
		}
		return err
	}) {
		if call("DeleteSnapshot", func(ctx context.Context) error {
			_, err := v.p.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapID, Secrets: v.secrets()})
			return err
		}) {
			v.snaps = v.snaps[:len(v.snaps)-1]
		}
	}
	if !staged {
		return calls
	}
	if call("DeleteVolume", func(ctx context.Context) error {
		_, err := v.p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: v.secrets()})
		return err
	}) {
		v.volumes = v.volumes[:len(v.volumes)-1]
	}
	return calls
}

// TestMonitorLost: the monitor that holds the driver's session is killed
// (SIGKILL), then, in a second round, stopped (SIGSTOP), while volumes are
// created, staged, snapshotted and deleted in a loop. Every call succeeds
// within the provisioner's timeout: the clients fail over to the other
// monitors.
func TestMonitorLost(t *testing.T) {
	b := theBed
	t.Cleanup(func() { b.heal(t) })
	p, plugins := b.driver(t, "rbd")
	v := b.newVols(t, p, "rbd", plugins)
	flows(v) // a cached connection, and a session on some monitor
	for _, round := range []struct {
		sig    syscall.Signal
		window time.Duration // how long the loop runs after the fault
	}{{syscall.SIGKILL, 20 * time.Second}, {syscall.SIGSTOP, 50 * time.Second}} {
		victim := b.sessionMon(t, "client.csi-rbd-provisioner")
		pid := b.pid(t, victim)
		start := time.Now()
		faultAt := start.Add(2 * time.Second)
		time.AfterFunc(time.Until(faultAt), func() { _ = syscall.Kill(pid, round.sig) })
		var all []flowCall
		var worst flowCall
		failed := 0
		for time.Since(faultAt) < round.window {
			for _, c := range flows(v) {
				all = append(all, c)
				if c.err != nil {
					failed++
					t.Errorf("%s of %s: %s failed after %s: %v", sigName(round.sig), victim, c.what, c.took.Round(time.Millisecond), c.err)
				}
				if c.took > worst.took {
					worst = c
				}
			}
		}
		record(t, "%s of %s (its session's monitor): %d calls in %.0f s, %d failed; slowest %s %.1f s",
			sigName(round.sig), victim, len(all), time.Since(start).Seconds(), failed, worst.what, worst.took.Seconds())
		if round.sig == syscall.SIGSTOP {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		} else {
			b.must(t, "start", victim)
		}
		took := b.waitFor(t, 2*time.Minute, "three monitors in quorum", func(s clusterState) bool { return len(s.Quorum) == 3 })
		record(t, "%s back in the quorum %.1f s after it was restarted", victim, took.Seconds())
	}
}

func sigName(s syscall.Signal) string {
	if s == syscall.SIGKILL {
		return "SIGKILL"
	}
	return "SIGSTOP"
}

// TestOneOSDDown: with one OSD of three killed, the cluster is degraded but
// writable: every flow works, a write through a staged volume goes on, and
// what it wrote reads back.
func TestOneOSDDown(t *testing.T) {
	b := theBed
	t.Cleanup(func() { b.heal(t) })
	p, plugins := b.driver(t, "rbd")
	v := b.newVols(t, p, "rbd", plugins)
	vol := v.create(newName("io"), 256*mib, nil)
	staging := v.stage(vol)
	file := filepath.Join(staging, "data")
	const n = 64
	w := startWriter(file, "one-osd", n, 20*time.Millisecond)
	time.Sleep(time.Second)

	b.signal(t, "osd.1", syscall.SIGKILL)
	took := b.waitFor(t, time.Minute, "osd.1 marked down", func(s clusterState) bool { return s.OSDMap.Up == 2 })
	record(t, "osd.1 killed; marked down after %.1f s", took.Seconds())
	took = b.waitFor(t, time.Minute, "every PG active", func(s clusterState) bool {
		return s.PGMap.NumPGs > 0 && s.active() == s.PGMap.NumPGs && s.pgs("active+clean") < s.PGMap.NumPGs
	})
	record(t, "every PG active and degraded %.1f s later", took.Seconds())

	var slowest flowCall
	for _, c := range flows(v) {
		if c.err != nil {
			t.Errorf("degraded: %s failed after %s: %v", c.what, c.took, c.err)
		}
		if c.took > slowest.took {
			slowest = c
		}
	}
	// The copies: a restore of a snapshot of the volume being written, a
	// clone of it, and an expansion of the clone.
	snap := v.snapshot(newName("snap"), vol.GetVolumeId())
	err, restoreTook := timed(provisionerTimeout, func(ctx context.Context) error {
		resp, err := p.Controller.CreateVolume(ctx, v.createReq(newName("restore"), 256*mib, snapshotSource(snap.GetSnapshotId())))
		if err == nil {
			v.track(&v.volumes, resp.GetVolume().GetVolumeId())
		}
		return err
	})
	if err != nil {
		t.Errorf("degraded: restoring a snapshot: %v", err)
	}
	var clone *csi.Volume
	err, cloneTook := timed(provisionerTimeout, func(ctx context.Context) error {
		resp, err := p.Controller.CreateVolume(ctx, v.createReq(newName("clone"), 256*mib, volumeSource(vol.GetVolumeId())))
		if err == nil {
			clone = resp.GetVolume()
			v.track(&v.volumes, clone.GetVolumeId())
		}
		return err
	})
	if err != nil {
		t.Errorf("degraded: cloning: %v", err)
	} else if err, _ := timed(provisionerTimeout, func(ctx context.Context) error {
		_, err := p.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: clone.GetVolumeId(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 512 * mib}, Secrets: v.secrets()})
		return err
	}); err != nil {
		t.Errorf("degraded: expanding: %v", err)
	}
	w.wait(t, 3*time.Minute)
	syncs := w.syncs()
	record(t, "degraded: flows slowest %s %.1f s, restore %.1f s, clone %.1f s; writer %d MiB in %.1f s, longest wait for a sync %.1f s",
		slowest.what, slowest.took.Seconds(), restoreTook.Seconds(), cloneTook.Seconds(), n, syncs[len(syncs)-1].Sub(syncs[0]).Seconds(), longestGap(syncs).Seconds())

	// Read back from the cluster, not from the node's cache: unstage, stage
	// again, compare.
	if err := v.unstage(vol.GetVolumeId(), staging); err != nil {
		t.Fatalf("unstaging: %v", err)
	}
	v.staged = v.staged[:0]
	staging = v.stage(vol)
	verify(t, filepath.Join(staging, "data"), "one-osd", n)

	start := time.Now()
	b.must(t, "start", "osd.1")
	took = b.waitFor(t, 3*time.Minute, "a healthy cluster", healthy)
	record(t, "osd.1 restarted: active+clean again after %.1f s (%s)", took.Seconds(), time.Since(start).Round(time.Millisecond))
}

func longestGap(ts []time.Time) time.Duration {
	var worst time.Duration
	for i := 1; i < len(ts); i++ {
		if d := ts[i].Sub(ts[i-1]); d > worst {
			worst = d
		}
	}
	return worst
}

// boundedCall is a call made during a fault: it must answer, with a code a
// sidecar retries, by its deadline.
type boundedCall struct {
	what     string
	method   string // for the driver's log
	deadline time.Duration
	call     func(ctx context.Context) error
}

// faultCalls makes each call once and checks the answer on both sides: the
// client's (code and time) and the driver's log (the driver itself
// answered by the deadline instead of leaving the call running).
func faultCalls(t *testing.T, logOf func() string, calls []boundedCall, codesOK ...codes.Code) {
	t.Helper()
	before := len(answers(logOf()))
	var lines []string
	for _, c := range calls {
		err, took := timed(c.deadline, c.call)
		code := status.Code(err)
		ok := false
		for _, want := range codesOK {
			ok = ok || code == want
		}
		if !ok {
			t.Errorf("%s during the fault: %v after %s, want one of %v", c.what, err, took, codesOK)
		}
		if took > c.deadline+time.Second {
			t.Errorf("%s answered after %s, past its deadline of %s", c.what, took, c.deadline)
		}
		lines = append(lines, fmt.Sprintf("%s %s in %.1f s", c.what, code, took.Seconds()))
	}
	// The driver's own answers: every failed call is logged as it returns.
	deadline := time.Now().Add(3 * time.Second)
	var got []answer
	for time.Now().Before(deadline) {
		got = answers(logOf())[before:]
		if len(got) >= len(calls) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range calls {
		found := false
		for _, a := range got {
			if a.method == c.method && a.took <= c.deadline+2*time.Second {
				found = true
			}
		}
		if !found {
			t.Errorf("the driver did not answer %s within its deadline of %s (its answers: %+v)", c.what, c.deadline, got)
		}
	}
	record(t, "during the fault: %s", strings.Join(lines, ", "))
}

// TestTwoOSDsDown: with two OSDs of three killed, PGs fall below min_size
// and I/O blocks. Controller calls answer DeadlineExceeded or Unavailable by
// their deadline, the driver itself answers by then, and once the OSDs are
// back the same calls, retried, succeed and leave whole objects behind.
func TestTwoOSDsDown(t *testing.T) {
	b := theBed
	t.Cleanup(func() { b.heal(t) })
	p, plugins := b.driver(t, "rbd")
	v := b.newVols(t, p, "rbd", plugins)
	fp, fplugins := b.driver(t, "cephfs")
	fv := b.newVols(t, fp, "cephfs", fplugins)
	// One volume per call: a call still running on a volume in the
	// background keeps that volume's lock (see TestTwoOSDsDown's retry).
	base := v.create(newName("base"), 16*mib, nil)
	grow := v.create(newName("grow"), 16*mib, nil)
	victim := v.create(newName("victim"), 16*mib, nil)
	fv.create(newName("fsbase"), 16*mib, nil)

	b.signal(t, "osd.1", syscall.SIGKILL)
	b.signal(t, "osd.2", syscall.SIGKILL)
	took := b.waitFor(t, time.Minute, "osd.1 and osd.2 marked down, PGs inactive", func(s clusterState) bool {
		return s.OSDMap.Up == 1 && s.active() < s.PGMap.NumPGs
	})
	record(t, "osd.1 and osd.2 killed; marked down, PGs inactive after %.1f s", took.Seconds())

	newVol, newSnap, fsVol := newName("new"), newName("snap"), newName("fsnew")
	const d = 10 * time.Second
	calls := []boundedCall{
		{"CreateVolume", "CreateVolume", d, func(ctx context.Context) error {
			_, err := p.Controller.CreateVolume(ctx, v.createReq(newVol, 16*mib, nil))
			return err
		}},
		{"CreateSnapshot", "CreateSnapshot", d, func(ctx context.Context) error {
			_, err := p.Controller.CreateSnapshot(ctx, v.snapReq(newSnap, base.GetVolumeId()))
			return err
		}},
		{"ControllerExpandVolume", "ControllerExpandVolume", d, func(ctx context.Context) error {
			_, err := p.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: grow.GetVolumeId(),
				CapacityRange: &csi.CapacityRange{RequiredBytes: 32 * mib}, Secrets: v.secrets()})
			return err
		}},
		{"DeleteVolume", "DeleteVolume", d, func(ctx context.Context) error {
			_, err := p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: victim.GetVolumeId(), Secrets: v.secrets()})
			return err
		}},
	}
	fsCalls := []boundedCall{{"CephFS CreateVolume", "CreateVolume", d, func(ctx context.Context) error {
		_, err := fp.Controller.CreateVolume(ctx, fv.createReq(fsVol, 16*mib, nil))
		return err
	}}}
	faultCalls(t, p.Log, calls, codes.DeadlineExceeded, codes.Unavailable)
	faultCalls(t, fp.Log, fsCalls, codes.DeadlineExceeded, codes.Unavailable)
	// Retried while the cluster is still down: answered in bounded time,
	// Aborted while the earlier try's Ceph calls still run.
	faultCalls(t, p.Log, calls[:1], codes.DeadlineExceeded, codes.Unavailable, codes.Aborted)

	restarted := time.Now()
	b.must(t, "start", "osd.1", "osd.2")
	took = b.waitFor(t, 2*time.Minute, "every PG active", func(s clusterState) bool {
		return s.OSDMap.Up == 3 && s.PGMap.NumPGs > 0 && s.active() == s.PGMap.NumPGs
	})
	record(t, "OSDs restarted: every PG active after %.1f s", took.Seconds())
	active := time.Now()

	// The retries, as the sidecars make them: same names and IDs.
	var lines []string
	retried := func(what string, f func(ctx context.Context) error) {
		_, err := retry(2*time.Minute, func(ctx context.Context) (struct{}, error) { return struct{}{}, f(ctx) })
		if err != nil {
			t.Errorf("%s retried after the recovery: %v", what, err)
			return
		}
		lines = append(lines, fmt.Sprintf("%s %.1f s", what, time.Since(active).Seconds()))
	}
	var made *csi.Volume
	retried("CreateVolume", func(ctx context.Context) error {
		resp, err := p.Controller.CreateVolume(ctx, v.createReq(newVol, 16*mib, nil))
		if err == nil {
			made = resp.GetVolume()
			v.track(&v.volumes, made.GetVolumeId())
		}
		return err
	})
	var snap *csi.Snapshot
	retried("CreateSnapshot", func(ctx context.Context) error {
		resp, err := p.Controller.CreateSnapshot(ctx, v.snapReq(newSnap, base.GetVolumeId()))
		if err == nil {
			snap = resp.GetSnapshot()
			v.track(&v.snaps, snap.GetSnapshotId())
		}
		return err
	})
	retried("ControllerExpandVolume", func(ctx context.Context) error {
		_, err := p.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: grow.GetVolumeId(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 32 * mib}, Secrets: v.secrets()})
		return err
	})
	retried("DeleteVolume", func(ctx context.Context) error {
		_, err := p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: victim.GetVolumeId(), Secrets: v.secrets()})
		return err
	})
	retried("CephFS CreateVolume", func(ctx context.Context) error {
		resp, err := fp.Controller.CreateVolume(ctx, fv.createReq(fsVol, 16*mib, nil))
		if err == nil {
			fv.track(&fv.volumes, resp.GetVolume().GetVolumeId())
		}
		return err
	})
	record(t, "retried after the recovery, succeeded at: %s (since every PG was active; OSDs restarted %.1f s before)",
		strings.Join(lines, ", "), active.Sub(restarted).Seconds())

	// What the retries made is whole: the new image has its size, the
	// expanded one its new size, and the snapshot restores.
	if made != nil {
		checkImage(t, b, made.GetVolumeContext()["imageName"], 16*mib)
	}
	checkImage(t, b, grow.GetVolumeContext()["imageName"], 32*mib)
	if snap != nil {
		v.create(newName("restore"), 16*mib, snapshotSource(snap.GetSnapshotId()))
	}
	record(t, "calls answered at their deadline ended in the background: %s", strings.Join(lateEnds(p.Log()), ", "))
	if left := b.c.Leftovers(t, victim.GetVolumeId()[len(victim.GetVolumeId())-36:]); len(left) > 0 {
		t.Errorf("the deleted volume left %v", left)
	}
}

// lateEnds lists, from the driver's log, how long after its answer each
// call answered at its deadline went on in the background.
func lateEnds(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if m := lateLine.FindStringSubmatch(l); m != nil {
			out = append(out, m[1][strings.LastIndex(m[1], "/")+1:]+" +"+m[2])
		}
	}
	return out
}

var lateLine = regexp.MustCompile(`"call ended after its answer".* method="([^"]+)" after="([^"]+)"`)

// checkImage opens an image as admin and checks its size.
func checkImage(t *testing.T, b *bed, name string, size uint64) {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(b.c.IOContext(t, "rbd"), name, rbd.NoSnapshot)
	if err != nil {
		t.Errorf("opening %s: %v", name, err)
		return
	}
	defer img.Close()
	if have, err := img.GetSize(); err != nil || have != size {
		t.Errorf("image %s is %d bytes (%v), want %d", name, have, err, size)
	}
}

// TestNodeLinkCut: the node's link to the cluster is cut for 60 s while a
// write through a staged volume runs. Calls during the cut answer by their
// deadline; the write resumes once the link is back, and the data reads
// back intact.
func TestNodeLinkCut(t *testing.T) {
	b := theBed
	t.Cleanup(func() { b.heal(t) })
	p, plugins := b.driver(t, "rbd")
	v := b.newVols(t, p, "rbd", plugins)
	vol := v.create(newName("io"), 256*mib, nil)
	other := v.create(newName("other"), 16*mib, nil)
	staging := v.stage(vol)
	const n = 96
	w := startWriter(filepath.Join(staging, "data"), "link-cut", n, 30*time.Millisecond)
	for len(w.syncs()) < 2 {
		time.Sleep(50 * time.Millisecond)
	}

	b.must(t, "link", "node", "down")
	cut := time.Now()
	otherStaging := filepath.Join(plugins, "other")
	faultCalls(t, p.Log, []boundedCall{
		{"CreateVolume", "CreateVolume", 10 * time.Second, func(ctx context.Context) error {
			_, err := p.Controller.CreateVolume(ctx, v.createReq(newName("cut"), 16*mib, nil))
			return err
		}},
		{"NodeStageVolume", "NodeStageVolume", 15 * time.Second, func(ctx context.Context) error {
			v.staged = append(v.staged, [2]string{other.GetVolumeId(), otherStaging})
			_, err := p.Node.NodeStageVolume(ctx, v.stageReq(other, otherStaging))
			return err
		}},
	}, codes.DeadlineExceeded, codes.Unavailable)
	err, took := timed(5*time.Second, func(ctx context.Context) error {
		_, err := p.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: staging})
		return err
	})
	if err != nil || took > 6*time.Second {
		t.Errorf("NodeGetVolumeStats of the staged volume during the cut: %v after %s", err, took)
	}
	syncsBefore := len(w.syncs())
	time.Sleep(time.Until(cut.Add(60 * time.Second)))
	stalled := len(w.syncs()) == syncsBefore
	b.must(t, "link", "node", "up")
	back := time.Now()

	w.wait(t, 3*time.Minute)
	var resumed time.Duration
	for _, s := range w.syncs() {
		if s.After(back) {
			resumed = s.Sub(back)
			break
		}
	}
	record(t, "link cut 60 s: writer stalled during the cut: %v (%d of %d MiB synced before), first sync %.1f s after the link returned, done %.1f s after",
		stalled, syncsBefore*4, n, resumed.Seconds(), w.syncs()[len(w.syncs())-1].Sub(back).Seconds())

	_, err = retry(2*time.Minute, func(ctx context.Context) (*csi.NodeStageVolumeResponse, error) {
		return p.Node.NodeStageVolume(ctx, v.stageReq(other, otherStaging))
	})
	if err != nil {
		t.Errorf("staging after the link returned: %v", err)
	}
	record(t, "NodeStageVolume retried after the link returned succeeded %.1f s after it", time.Since(back).Seconds())
	if helpers := countHelpers(plugins); helpers != 2 {
		t.Errorf("%d FUSE helpers run for 2 staged volumes", helpers)
	}

	if err := v.unstage(vol.GetVolumeId(), staging); err != nil {
		t.Fatalf("unstaging: %v", err)
	}
	v.staged = v.staged[1:]
	staging = v.stage(vol)
	verify(t, filepath.Join(staging, "data"), "link-cut", n)
}

// countHelpers counts the FUSE helper processes serving below dir.
func countHelpers(dir string) int {
	n := 0
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, pc := range procs {
		if b, _ := os.ReadFile(pc); strings.Contains(string(b), dir) && strings.Contains(string(b), "rbd-fuse-helper") {
			n++
		}
	}
	return n
}

// TestClusterRestart: every daemon is stopped and started again, as an
// upgrade does it, under a driver that is never restarted. Calls during the
// outage answer by their deadline; once the monitors have a quorum the
// driver serves again within seconds, and no connection or call in flight
// leaks.
func TestClusterRestart(t *testing.T) {
	b := theBed
	t.Cleanup(func() { b.heal(t) })
	p, plugins := b.driver(t, "rbd")
	v := b.newVols(t, p, "rbd", plugins)
	flows(v)
	before := threads(p.PID())

	// Calls in flight as the cluster goes down.
	inFlight := []string{newName("inflight"), newName("inflight")}
	errs := make(chan error, len(inFlight))
	for _, name := range inFlight {
		name := name
		req := v.createReq(name, 16*mib, nil)
		go func() {
			err, _ := timed(20*time.Second, func(ctx context.Context) error {
				_, err := p.Controller.CreateVolume(ctx, req)
				return err
			})
			errs <- err
		}()
	}
	stopping := time.Now()
	b.must(t, "stop")
	record(t, "cluster stopped in %.1f s", time.Since(stopping).Seconds())
	downName := newName("down")
	faultCalls(t, p.Log, []boundedCall{{"CreateVolume", "CreateVolume", 10 * time.Second, func(ctx context.Context) error {
		_, err := p.Controller.CreateVolume(ctx, v.createReq(downName, 16*mib, nil))
		return err
	}}}, codes.DeadlineExceeded, codes.Unavailable)
	// The sidecar retries every request answered DeadlineExceeded until it
	// gets a final answer: so does the test, below.
	inFlight = append(inFlight, downName)
	for range inFlight[:2] {
		if err := <-errs; err != nil && !transient(err) {
			t.Errorf("a call in flight as the cluster stopped: %v", err)
		}
	}

	starting := time.Now()
	started := make(chan error, 1)
	go func() {
		out, err := b.run("start")
		if err != nil {
			err = fmt.Errorf("%w: %s", err, out)
		}
		started <- err
	}()
	b.waitFor(t, 2*time.Minute, "a quorum", func(s clusterState) bool { return len(s.Quorum) >= 2 })
	quorum := time.Now()
	record(t, "cluster started: quorum %.1f s after the start", quorum.Sub(starting).Seconds())
	// One request, repeated as the sidecar repeats it until it succeeds.
	served := false
	name := newName("back")
	for time.Since(quorum) < 2*time.Minute {
		err, _ := timed(5*time.Second, func(ctx context.Context) error {
			resp, err := p.Controller.CreateVolume(ctx, v.createReq(name, 16*mib, nil))
			if err == nil {
				v.track(&v.volumes, resp.GetVolume().GetVolumeId())
			}
			return err
		})
		if err == nil {
			served = true
			break
		}
		if !transient(err) {
			t.Errorf("CreateVolume after the restart: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !served {
		t.Fatalf("the driver did not serve again within 2 minutes of the quorum")
	}
	if err := <-started; err != nil {
		t.Fatalf("starting the cluster: %v", err)
	}
	record(t, "the driver served a CreateVolume %.1f s after the quorum (%.1f s after the start)",
		time.Since(quorum).Seconds(), time.Since(starting).Seconds())
	b.waitFor(t, 3*time.Minute, "a healthy cluster", healthy)
	for _, c := range flows(v) {
		if c.err != nil {
			t.Errorf("after the restart: %s: %v", c.what, c.err)
		}
	}
	for _, name := range inFlight {
		v.create(name, 16*mib, nil)
	}
	after := threads(p.PID())
	record(t, "driver threads: %d before the stop, %d after the restart; calls answered at their deadline ended in the background: %s",
		before, after, strings.Join(lateEnds(p.Log()), ", "))
	// librados runs a few dozen threads per connection: one more would
	// be a leak.
	if after > before+15 {
		t.Errorf("the driver runs %d threads after the restart, %d before: a connection leaked", after, before)
	}
}

// TestMonitorsMove: every monitor is replaced, one at a time, by a new one
// at a new address, and config.json follows. The driver, never restarted,
// serves throughout, and connects anew through the new addresses (a
// connection it never had, and the FUSE helper of a new stage).
func TestMonitorsMove(t *testing.T) {
	b := theBed
	t.Cleanup(func() { b.heal(t) })
	p, plugins := b.driver(t, "rbd", "--connidletimeout=20s")
	v := b.newVols(t, p, "rbd", plugins)
	flows(v)
	for _, step := range [][2]string{{"d", "a"}, {"e", "b"}, {"f", "c"}} {
		start := time.Now()
		b.must(t, "add-mon", step[0])
		b.must(t, "rm-mon", step[1])
		moved := time.Since(start)
		err, took := timed(provisionerTimeout, func(ctx context.Context) error {
			resp, err := p.Controller.CreateVolume(ctx, v.createReq(newName("moved"), 16*mib, nil))
			if err == nil {
				v.track(&v.volumes, resp.GetVolume().GetVolumeId())
			}
			return err
		})
		if err != nil {
			t.Errorf("CreateVolume after mon.%s replaced mon.%s: %v", step[0], step[1], err)
		}
		record(t, "mon.%s replaced mon.%s in %.1f s; then CreateVolume took %.2f s", step[0], step[1], moved.Seconds(), took.Seconds())
	}
	cfg, err := os.ReadFile(b.c.ConfigJSON)
	if err != nil {
		t.Fatal(err)
	}
	for _, old := range []string{"10.98.0.11", "10.98.0.12", "10.98.0.13"} {
		if strings.Contains(string(cfg), old) {
			t.Fatalf("config.json still lists %s: %s", old, cfg)
		}
	}
	// None of the first monitors is left: a connection made now can only
	// come from the new config.json.
	var lines []string
	for _, c := range flows(v) {
		if c.err != nil {
			t.Errorf("with every monitor moved: %s: %v", c.what, c.err)
		}
		lines = append(lines, fmt.Sprintf("%s %.2f s", c.what, c.took.Seconds()))
	}
	record(t, "with every monitor moved: %s", strings.Join(lines, ", "))
}
