package mapper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/keyexec"
	"github.com/leanceph/cephcsi/internal/rbdfuse"
)

// fakeHelpers stands in for keyexec.Exec.Start and the helpers it starts:
// a started helper "mounts" (fake mounter), shows the image file and
// appears in the fake /proc; unmounting ends it.
type fakeHelpers struct {
	t       *testing.T
	mounter *mount.FakeMounter
	proc    string
	calls   []keyexec.Command
	// report, when set, is what every helper reports instead of Ready
	// (after logging "panic: boom").
	report  string
	nextPID int
}

func (h *fakeHelpers) Start(_ context.Context, c keyexec.Command) (int, error) {
	h.calls = append(h.calls, c)
	if c.Log == nil {
		h.t.Fatal("the helper has no log")
	}
	if c.Args[0] != rbdfuse.HelperCommand {
		h.t.Fatalf("the helper's first argument is %q", c.Args[0])
	}
	cfg, err := rbdfuse.ParseArgs(c.Args[1:])
	if err != nil {
		h.t.Fatalf("the helper could not parse its arguments: %v", err)
	}
	if h.report != "" {
		_, _ = fmt.Fprintln(c.Log, "panic: boom")
		report := h.report
		if report == "\x00died" {
			report = ""
		}
		return 0, &keyexec.StartError{Path: c.Path, Report: report, Exit: errors.New("exit status 1")}
	}
	mustWrite(h.t, filepath.Join(cfg.MountPoint, cfg.Image), "")
	if err := h.mounter.Mount(cfg.Spec(), cfg.MountPoint, rbdfuse.FsType, nil); err != nil {
		return 0, err
	}
	h.nextPID++
	pid := 4000 + h.nextPID
	argv := append([]string{c.Path}, c.Args...)
	mustWrite(h.t, filepath.Join(h.proc, strconv.Itoa(pid), "cmdline"), strings.Join(argv, "\x00")+"\x00")
	mustWrite(h.t, filepath.Join(h.proc, strconv.Itoa(pid), "stat"), strconv.Itoa(pid)+" (cephcsi) S 1 1 1")
	return pid, nil
}

// unmount ends the helper of target, leaving a zombie until it is reaped
// (the zombie counts as exited).
func (h *fakeHelpers) unmount(target string, _ int) error {
	entries, _ := os.ReadDir(target)
	for _, e := range entries {
		_ = os.Remove(filepath.Join(target, e.Name()))
	}
	procs, _ := filepath.Glob(filepath.Join(h.proc, "*", "cmdline"))
	for _, p := range procs {
		data, _ := os.ReadFile(p)
		if strings.HasSuffix(string(data), "\x00"+target+"\x00") {
			pid := filepath.Base(filepath.Dir(p))
			mustWrite(h.t, filepath.Join(filepath.Dir(p), "stat"), pid+" (cephcsi) Z 1 1 1")
		}
	}
	return h.mounter.Unmount(target)
}

// newTestFuse returns the mapper with fake helpers, a fake loop driver
// (losetup through the runner, backing files in a fake /sys) and no busy
// devices.
func newTestFuse(t *testing.T) (*Fuse, *fakeHelpers, *fakeRunner) {
	dir, sysfs := t.TempDir(), t.TempDir()
	mustWrite(t, filepath.Join(sysfs, "block", "loop0", "loop", "backing_file"), "/elsewhere/file\n")
	fm := mount.NewFakeMounter(nil)
	h := &fakeHelpers{t: t, mounter: fm, proc: t.TempDir()}
	r := &fakeRunner{}
	r.answer = func(c keyexec.Command) (keyexec.Result, error) {
		if c.Path != "losetup" {
			return keyexec.Result{}, fmt.Errorf("unexpected command %s", c)
		}
		switch c.Args[0] {
		case "--find":
			mustWrite(t, filepath.Join(sysfs, "block", "loop7", "loop", "backing_file"), c.Args[len(c.Args)-1]+"\n")
			return keyexec.Result{Stdout: "/dev/loop7\n"}, nil
		case "--detach":
			return keyexec.Result{}, os.Remove(filepath.Join(sysfs, "block", "loop7", "loop", "backing_file"))
		}
		return keyexec.Result{}, nil
	}
	f := &Fuse{Dir: dir, Sysfs: sysfs, Dev: "/dev", Proc: h.proc, Conf: "/dev/null", Helper: "/usr/local/bin/cephcsi",
		Runner: r, Starter: h, Mounter: fm, Busy: func(string) (bool, error) { return false, nil }, Timeout: 2 * time.Second,
		unmount: h.unmount}
	return f, h, r
}

func TestFuseMapStartsTheHelperAndUnmapStopsIt(t *testing.T) {
	f, h, r := newTestFuse(t)
	s := testSpec()
	s.Monitors = []string{"10.0.0.1:6789", "10.0.0.2:6789"}
	dev, err := f.Map(context.Background(), s)
	if err != nil || dev != "/dev/loop7" {
		t.Fatalf("Map = %s, %v", dev, err)
	}
	mnt, file, logFile := f.paths(s)
	if filepath.Dir(mnt) != f.Dir || file != filepath.Join(mnt, "csi-vol-1") || logFile != mnt+".log" {
		t.Errorf("paths = %s, %s, %s", mnt, file, logFile)
	}
	if len(h.calls) != 1 {
		t.Fatalf("helpers started: %d, want 1", len(h.calls))
	}
	c := h.calls[0]
	wantArgs := []string{"rbd-fuse-helper", "--mon-host=10.0.0.1:6789,10.0.0.2:6789", "--id=csi-rbd-node", "--pool=rbd",
		"--namespace=ns1", "--image=csi-vol-1", "-o", "max_write=1048576,max_background=64", "--conf=/dev/null", mnt}
	if c.Path != "/usr/local/bin/cephcsi" || strings.Join(c.Args, " ") != strings.Join(wantArgs, " ") {
		t.Errorf("helper = %s %q\nwant /usr/local/bin/cephcsi %q", c.Path, c.Args, wantArgs)
	}
	if c.Key != testKey || c.Log.Name() != logFile || c.Timeout != f.Timeout {
		t.Errorf("helper: key handed over %v, log %s, timeout %s", c.Key == testKey, c.Log.Name(), c.Timeout)
	}
	for _, a := range append(c.Args, c.Env...) {
		if strings.Contains(a, testKey) {
			t.Errorf("the key is in the helper's arguments or environment: %q", a)
		}
	}
	if got := r.commands(); len(got) != 1 || got[0] != "losetup --find --show --direct-io=on "+file {
		t.Errorf("commands = %q", got)
	}
	// Mapped already: found, nothing started or attached twice.
	if again, err := f.Map(context.Background(), s); err != nil || again != dev || len(h.calls) != 1 || len(r.calls) != 1 {
		t.Errorf("second Map = %s, %v (%d helpers, %d commands)", again, err, len(h.calls), len(r.calls))
	}
	// A new mapper (a restarted plugin) finds the device and the helper.
	f2, _, _ := newTestFuse(t)
	f2.Dir, f2.Sysfs, f2.Proc = f.Dir, f.Sysfs, f.Proc
	if found, err := f2.Find(context.Background(), Spec{Pool: "rbd", Namespace: "ns1", Image: "csi-vol-1"}); err != nil || found != dev {
		t.Errorf("Find after restart = %s, %v", found, err)
	}
	if pid := f2.helperPID(mnt); pid != 4001 {
		t.Errorf("helperPID = %d, want 4001", pid)
	}

	if err := f.Unmap(context.Background(), s, ""); err != nil {
		t.Fatal(err)
	}
	if got := r.commands(); got[len(got)-1] != "losetup --detach /dev/loop7" {
		t.Errorf("last command = %q", got[len(got)-1])
	}
	for _, p := range []string{mnt, logFile} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", p, err)
		}
	}
	if f.alive(4001) {
		t.Error("the helper is alive after Unmap")
	}
	if err := f.Unmap(context.Background(), s, ""); err != nil {
		t.Errorf("second Unmap = %v", err)
	}
	if err := f.Unmap(context.Background(), s, "lazy"); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("unmap option = %v", err)
	}
}

// TestFuseUnmapDetachesTheLoopOfADeadHelper: once the helper has died and
// the kernel dropped the file's dentry, the loop device names its backing
// file with " (deleted)"; it is still found, reported stale and detached.
func TestFuseUnmapDetachesTheLoopOfADeadHelper(t *testing.T) {
	f, _, r := newTestFuse(t)
	s := testSpec()
	dev, err := f.Map(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	_, file, _ := f.paths(s)
	mustWrite(t, filepath.Join(f.Sysfs, "block", "loop7", "loop", "backing_file"), file+" (deleted)\n")
	if found, err := f.Find(context.Background(), s); err != nil || found != dev {
		t.Errorf("Find with a deleted backing file = %q, %v; want %s", found, err, dev)
	}
	if err := f.Unmap(context.Background(), s, ""); err != nil {
		t.Fatal(err)
	}
	if got := r.commands(); got[len(got)-1] != "losetup --detach "+dev {
		t.Errorf("last command = %q, want the loop device detached", got[len(got)-1])
	}
}

func TestFuseReadOnlyAndMapOptions(t *testing.T) {
	f, h, r := newTestFuse(t)
	s := testSpec()
	s.ReadOnly = true
	s.Options = "debug,max_write=131072"
	if _, err := f.Map(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	args := strings.Join(h.calls[0].Args, " ")
	if !strings.Contains(args, " -o max_write=131072,max_background=64,debug ") || !strings.Contains(args, " --read-only ") {
		t.Errorf("helper args = %s", args)
	}
	if got := r.commands(); !strings.HasPrefix(got[0], "losetup --find --show --direct-io=on --read-only ") {
		t.Errorf("losetup = %q", got[0])
	}
	if err := f.Unmap(context.Background(), s, ""); err != nil {
		t.Fatal(err)
	}

	s.Options = "allow_other"
	_, err := f.Map(context.Background(), s)
	if !errors.Is(err, ErrInvalidOption) || csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "allow_other") {
		t.Errorf("an unknown map option = %v", err)
	}
	if len(h.calls) != 1 {
		t.Error("a helper was started despite a bad map option")
	}
}

func TestFuseStartFailuresAreClassedAndLeaveNothing(t *testing.T) {
	for _, tc := range []struct {
		report string
		code   codes.Code
		is     error
		want   string
	}{
		{"not-found: opening image rbd/ns1/csi-vol-1: RBD image not found", codes.NotFound, ErrImageNotFound, "RBD image not found"},
		{"permission-denied: connecting to 127.0.0.1:6789 as client.csi-rbd-node: rados: ret=-13", codes.PermissionDenied, ErrPermission, "client.csi-rbd-node"},
		{"timed-out: connecting to 127.0.0.1:6789: ret=-110", codes.DeadlineExceeded, context.DeadlineExceeded, "ret=-110"},
		{"failed: mounting on /x: no FUSE", codes.Internal, nil, "panic: boom"},
		{"\x00died", codes.Internal, nil, "panic: boom"},
	} {
		f, h, r := newTestFuse(t)
		h.report = tc.report
		_, err := f.Map(context.Background(), testSpec())
		if err == nil || csierr.Code(err) != tc.code || (tc.is != nil && !errors.Is(err, tc.is)) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("report %q: %v (code %s), want %s mentioning %q", tc.report, err, csierr.Code(err), tc.code, tc.want)
		}
		if entries, _ := os.ReadDir(f.Dir); len(entries) != 0 {
			t.Errorf("report %q: left in the mapper dir: %v", tc.report, entries)
		}
		if len(r.calls) != 0 {
			t.Errorf("report %q: commands run: %q", tc.report, r.commands())
		}
	}
}
