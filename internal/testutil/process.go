package testutil

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

var (
	buildMu  sync.Mutex
	binaries = map[string]string{}
)

// BuildBinary builds cmd/cephcsi with the given build tags, once per test
// process and tag set, and returns its path. Every test process of a
// checkout builds into the same directory under the temporary directory (to
// a file of its own, renamed into place: a process still running the old
// binary keeps it), so repeated runs do not pile up binaries.
func BuildBinary(t testing.TB, tags ...string) string {
	t.Helper()
	key := strings.Join(tags, ",")
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := binaries[key]; ok {
		return bin
	}
	sum := sha256.Sum256([]byte(RepoRoot()))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("cephcsi-bin-%x", sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := "cephcsi"
	if key != "" {
		name += "-" + strings.ReplaceAll(key, ",", "-")
	}
	bin := filepath.Join(dir, name)
	tmp, err := os.CreateTemp(dir, name+".build*")
	if err != nil {
		t.Fatal(err)
	}
	_ = tmp.Close()
	defer func() { _ = os.Remove(tmp.Name()) }() // gone once renamed; left only by a failed build
	args := []string{"build", "-o", tmp.Name()}
	if key != "" {
		args = append(args, "-tags", key)
	}
	cmd := exec.Command("go", append(args, "./cmd/cephcsi")...)
	cmd.Dir = RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building cephcsi (tags %q): %v\n%s", key, err, out)
	}
	if err := os.Rename(tmp.Name(), bin); err != nil {
		t.Fatal(err)
	}
	binaries[key] = bin
	return bin
}

// Process is the real cephcsi binary serving CSI on a unix socket.
type Process struct {
	Controller csi.ControllerClient
	Node       csi.NodeClient
	Identity   csi.IdentityClient
	Socket     string

	t    testing.TB
	cmd  *exec.Cmd
	conn *grpc.ClientConn
	log  string
	done chan struct{}
	err  error
}

// StartProcess runs bin with args (and env added to the test's) serving on
// a socket of its own, waits until it answers, and stops it when the test
// ends. Its log is kept in a file of the test (Log).
func StartProcess(t testing.TB, bin string, env []string, args ...string) *Process {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "csi.sock")
	return StartArgv(t, ArgvProcess{Bin: bin, Env: env, Dir: ".",
		Args: append([]string{"--endpoint=unix://" + sock, "--v=4"}, args...)})
}

// Log returns what the process printed so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// Exited waits up to timeout for the process to end on its own and
// returns its exit code; ok is false when it is still running.
func (p *Process) Exited(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return 0, false
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), true
	}
	return 0, true
}

// Kill ends the process at once (SIGKILL) and closes the client.
func (p *Process) Kill() {
	if p.conn != nil {
		p.conn.Close()
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// PID is the process ID of the running binary.
func (p *Process) PID() int { return p.cmd.Process.Pid }
