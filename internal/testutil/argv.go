package testutil

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ArgvProcess says how StartArgv runs the binary. Unlike StartProcess, the
// argument vector is used as given: a container's args, with only the
// paths a pod would mount replaced.
type ArgvProcess struct {
	Bin  string
	Args []string
	Env  []string
	// Dir is the working directory (where a relative --log_file lands);
	// default a temporary directory of the test.
	Dir string
	// Ready, when set, says the process is up, for processes that serve no
	// CSI socket (--type=controller, --type=liveness). Otherwise StartArgv
	// waits for the unix socket of --endpoint and connects to it.
	Ready func(p *Process) error
}

// SocketOf returns the socket path of a --endpoint=unix://... in args.
func SocketOf(args []string) string {
	for _, a := range args {
		if s, ok := strings.CutPrefix(a, "--endpoint=unix://"); ok {
			return s
		}
	}
	return ""
}

// StartArgv runs spec and waits until it is up; the process is killed when
// the test ends. Its stdout and stderr are kept in a file (Log).
func StartArgv(t testing.TB, spec ArgvProcess) *Process {
	t.Helper()
	sock := SocketOf(spec.Args)
	if sock == "" && spec.Ready == nil {
		t.Fatal("StartArgv: no --endpoint=unix:// in the arguments and no Ready check")
	}
	logf, err := os.CreateTemp(t.TempDir(), "cephcsi-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(spec.Bin, spec.Args...)
	cmd.Dir = spec.Dir
	if cmd.Dir == "" {
		cmd.Dir = t.TempDir()
	}
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{Socket: sock, t: t, cmd: cmd, log: logf.Name(), done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Kill)

	ready := spec.Ready
	if ready == nil {
		ready = func(*Process) error {
			c, err := net.Dial("unix", sock)
			if err != nil {
				return err
			}
			return c.Close()
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := ready(p)
		if err == nil {
			break
		}
		select {
		case <-p.done:
			t.Fatalf("cephcsi %s exited at start (%v); log:\n%s", strings.Join(spec.Args, " "), p.err, p.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cephcsi %s not up (%v); log:\n%s", strings.Join(spec.Args, " "), err, p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if sock != "" {
		p.conn, err = grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		p.Controller, p.Node, p.Identity = csi.NewControllerClient(p.conn), csi.NewNodeClient(p.conn), csi.NewIdentityClient(p.conn)
	}
	return p
}

// Running reports whether the process has not exited.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// errNotYet is what a Ready check returns while it waits.
var errNotYet = errors.New("not yet")

// LogContains is a Ready check: the process has logged s.
func LogContains(s string) func(*Process) error {
	return func(p *Process) error {
		if strings.Contains(p.Log(), s) {
			return nil
		}
		return errNotYet
	}
}
