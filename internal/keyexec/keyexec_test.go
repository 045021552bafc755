package keyexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testKey is shaped like a cephx key but is none; it is assembled at run
// time so that no key-shaped literal sits in the repository.
var testKey = "AQBp" + "bWFnaW5lZCBrZXkgZm9yIHRlc3RzIG9ubHk="

// helperEnv makes the test binary act as a started helper (see TestMain).
const helperEnv = "KEYEXEC_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(fakeHelper(mode))
	}
	os.Exit(m.Run())
}

// fakeHelper behaves like a helper started by Start, in one of several ways.
func fakeHelper(mode string) int {
	report := os.NewFile(ReportFD, "report")
	switch mode {
	case "serve":
		// Read the key, close its descriptor, report, serve until killed.
		key := os.NewFile(3, "key")
		data, err := io.ReadAll(key)
		_ = key.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "reading the key:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "got a key of %d bytes; CEPH_CONF=%q\n", len(bytes.TrimSpace(data)), os.Getenv("CEPH_CONF"))
		_, _ = io.WriteString(report, Ready)
		_ = report.Close()
		time.Sleep(time.Hour) // until killed
	case "fail":
		_, _ = io.WriteString(report, "not-found: no image "+os.Getenv("KEYEXEC_TEST_ECHO"))
		return 3
	case "die":
		return 2
	case "hang":
		time.Sleep(time.Hour) // until killed
	case "report-and-hang":
		_, _ = io.WriteString(report, "failed: cannot")
		_ = report.Close()
		time.Sleep(time.Hour) // until killed
	}
	return 9
}

func helperCommand(mode string) Command {
	return Command{Path: os.Args[0], Env: []string{helperEnv + "=" + mode}, Key: testKey, Timeout: 20 * time.Second}
}

// gone waits until pid has exited and been reaped (no zombie left).
func gone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); errors.Is(err, os.ErrNotExist) {
			return
		}
	}
	t.Errorf("process %d is still there (or a zombie)", pid)
}

func TestRunPassesKeyInMemoryAndRedacts(t *testing.T) {
	t.Setenv("CEPH_CONF", "/etc/inherited.conf")
	c := Command{Path: "sh", Args: []string{"-c", `printf 'key=%s env=%s conf=%s\n' "$(cat ` + KeyFilePath + `)" "$MY_VAR" "$CEPH_CONF"; readlink ` + KeyFilePath +
		`; if printf x >>` + KeyFilePath + ` 2>&1; then echo changed; else echo sealed; fi`},
		Env: []string{"MY_VAR=x"}, Key: testKey}
	res, err := Exec{}.Run(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	// The program read the key from fd 3 (scrubbed from what we see), got
	// our variable, lost the inherited CEPH_CONF, fd 3 is a memfd, and it
	// could not change the key.
	if !strings.HasPrefix(res.Stdout, "key=<redacted> env=x conf=\n") {
		t.Errorf("stdout = %q", res.Stdout)
	}
	if !strings.Contains(res.Stdout, "memfd:cephcsi-key") || !strings.HasSuffix(res.Stdout, "sealed\n") {
		t.Errorf("fd 3 is not a sealed in-memory file: %q", res.Stdout)
	}
	for _, a := range append(c.Args, c.Env...) {
		if strings.Contains(a, testKey) {
			t.Errorf("the key is in the arguments or environment: %q", a)
		}
	}

	// A failing command's error carries stderr without the key.
	_, err = Exec{}.Run(context.Background(), Command{Path: "sh", Args: []string{"-c", `echo "bad key $(cat ` + KeyFilePath + `)" >&2; exit 3`}, Key: testKey})
	if err == nil || strings.Contains(err.Error(), testKey) || !strings.Contains(err.Error(), "bad key <redacted>") {
		t.Errorf("error = %v", err)
	}

	// A hanging command is killed at its timeout.
	start := time.Now()
	_, err = Exec{}.Run(context.Background(), Command{Path: "sleep", Args: []string{"30"}, Timeout: 200 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("timeout: %v after %s", err, time.Since(start))
	}
}

// TestRunEmptiesTheKeyFileADaemonKeeps: a program that leaves a daemon
// behind with descriptor 3 open (as ceph-fuse does). With
// EmptyKeyOnReturn the daemon's descriptor reads nothing once Run returns;
// without, it still yields the key.
func TestRunEmptiesTheKeyFileADaemonKeeps(t *testing.T) {
	for _, empty := range []bool{true, false} {
		res, err := Exec{}.Run(context.Background(), Command{Path: "sh",
			Args: []string{"-c", `sleep 30 >&- 2>&- & echo $!`}, Key: testKey, EmptyKeyOnReturn: empty})
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
		if err != nil {
			t.Fatalf("daemon pid %q: %v", res.Stdout, err)
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fd/3", pid))
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if err != nil {
			t.Fatalf("reading the daemon's fd 3: %v", err)
		}
		if holds := bytes.Contains(data, []byte(testKey)); holds == empty {
			t.Errorf("EmptyKeyOnReturn=%v: the daemon's fd 3 holds the key: %v (%d bytes)", empty, holds, len(data))
		}
	}
}

// TestStartedHelperOutlivesStartWithoutTheKey starts the test binary as a
// helper: it gets the key on fd 3, reports ready, and once it has closed
// fd 3 none of its descriptors, arguments or environment yields the key.
func TestStartedHelperOutlivesStartWithoutTheKey(t *testing.T) {
	t.Setenv("CEPH_CONF", "/etc/inherited.conf")
	logPath := filepath.Join(t.TempDir(), "helper.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFile(logf)
	c := helperCommand("serve")
	c.Log = logf
	ctx, cancel := context.WithCancel(context.Background())
	pid, err := Exec{}.Start(ctx, c)
	cancel() // the helper must outlive the context that started it
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer gone(t, pid)
	defer func() { _ = syscall.Kill(pid, syscall.SIGKILL) }()
	time.Sleep(100 * time.Millisecond)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the helper did not outlive Start's context: %v", err)
	}
	// A session of its own: the plugin's process group signals miss it.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	if fields[3] != strconv.Itoa(pid) {
		t.Errorf("session of the helper = %s, want its own (%d)", fields[3], pid)
	}
	if log, _ := os.ReadFile(logPath); !strings.Contains(string(log), `got a key of 40 bytes; CEPH_CONF=""`) {
		t.Errorf("helper log = %q", log)
	}
	assertNoKeyInProcess(t, pid, testKey)
}

// assertNoKeyInProcess reads what root could read of pid: every open
// descriptor that can be reopened and read, its arguments and environment.
func assertNoKeyInProcess(t *testing.T, pid int, key string) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d", pid)
	for _, f := range []string{"cmdline", "environ"} {
		if data, err := os.ReadFile(filepath.Join(dir, f)); err != nil || bytes.Contains(data, []byte(key)) {
			t.Errorf("%s/%s: holds the key or unreadable (%v)", dir, f, err)
		}
	}
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		p := filepath.Join(dir, "fd", fd.Name())
		target, _ := os.Readlink(p)
		if strings.Contains(target, "cephcsi-key") {
			t.Errorf("%s is still the key file (%s)", p, target)
		}
		// Pipes and sockets would block or lose data: read files only.
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, []byte(key)) {
			t.Errorf("%s (%s) yields the key", p, target)
		}
	}
}

func TestStartFailures(t *testing.T) {
	// A helper that says why it cannot serve, and exits.
	c := helperCommand("fail")
	c.Env = append(c.Env, "KEYEXEC_TEST_ECHO="+testKey)
	_, err := Exec{}.Start(context.Background(), c)
	var se *StartError
	if !errors.As(err, &se) || !strings.HasPrefix(se.Report, "not-found: no image ") || se.Exit == nil {
		t.Fatalf("failing helper: %#v", err)
	}
	if strings.Contains(se.Report, testKey) || !strings.Contains(se.Report, "<redacted>") {
		t.Errorf("the report is not scrubbed of the key: %q", se.Report)
	}
	// One that dies without a word.
	_, err = Exec{}.Start(context.Background(), helperCommand("die"))
	if !errors.As(err, &se) || se.Report != "" || !strings.Contains(se.Exit.Error(), "exit status 2") {
		t.Errorf("dying helper: %v", err)
	}
	// One that never reports, and one that reports a failure but does not
	// exit: both are killed at the timeout.
	for _, mode := range []string{"hang", "report-and-hang"} {
		c := helperCommand(mode)
		c.Timeout = 300 * time.Millisecond
		start := time.Now()
		_, err = Exec{}.Start(context.Background(), c)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Errorf("%s: %v after %s", mode, err, time.Since(start))
		}
		if pids := helpersRunning(mode); len(pids) > 0 {
			t.Errorf("%s: helper left running: pids %v", mode, pids)
		}
	}
	// A program that cannot be started.
	if _, err := (Exec{}).Start(context.Background(), Command{Path: "/nonexistent/helper"}); err == nil {
		t.Error("starting a missing program succeeded")
	}
}

// helpersRunning lists the fake helpers of mode still running.
func helpersRunning(mode string) []string {
	var pids []string
	envs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, e := range envs {
		data, err := os.ReadFile(e)
		if err == nil && bytes.Contains(data, []byte("\x00"+helperEnv+"="+mode+"\x00")) {
			pids = append(pids, filepath.Base(filepath.Dir(e)))
		}
	}
	return pids
}

func TestCleanEnvAndRedact(t *testing.T) {
	env := cleanEnv([]string{"PATH=/bin", "CEPH_ARGS=--id=x", "CEPH_CONF=/c", "CEPH_KEYRING=/k", "CEPH_OTHER=y"})
	if strings.Join(env, " ") != "PATH=/bin CEPH_OTHER=y" {
		t.Errorf("cleanEnv = %q", env)
	}
	if got := Redact("a "+testKey+" b", testKey); got != "a <redacted> b" {
		t.Errorf("Redact = %q", got)
	}
	if got := Redact("unchanged", ""); got != "unchanged" {
		t.Errorf("Redact without a key = %q", got)
	}
	if got := LastLines("1\n2\n3\n4", 2); got != "3 | 4" {
		t.Errorf("LastLines = %q", got)
	}
}

// Daemons start through helper-exec in the helper cgroup; other commands,
// and daemons without a helper cgroup, run as they are.
func TestArgvHelperCgroup(t *testing.T) {
	daemon := Command{Path: "ceph-fuse", Args: []string{"/mnt", "-o", "x"}, Daemon: true}
	path, args := Exec{HelperCgroup: "/cephcsi-helpers"}.argv(daemon)
	if want := []string{"helper-exec", "/cephcsi-helpers", "--", "ceph-fuse", "/mnt", "-o", "x"}; path != "/proc/self/exe" || !slices.Equal(args, want) {
		t.Errorf("daemon: %s %v, want /proc/self/exe %v", path, args, want)
	}
	for _, e := range []struct {
		ex Exec
		c  Command
	}{{Exec{}, daemon}, {Exec{HelperCgroup: "/cephcsi-helpers"}, Command{Path: "losetup", Args: []string{"-d", "/dev/loop0"}}}} {
		if path, args := e.ex.argv(e.c); path != e.c.Path || !slices.Equal(args, e.c.Args) {
			t.Errorf("%+v %v: %s %v, want it unchanged", e.ex, e.c, path, args)
		}
	}
	if _, err := NewExec("not/absolute"); err == nil {
		t.Error("NewExec accepted a relative cgroup")
	}
}
