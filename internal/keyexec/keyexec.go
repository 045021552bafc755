// Package keyexec runs the helper programs that need a cephx key (rbd-nbd,
// ceph-fuse, mount.ceph, the driver's own FUSE image helper), one way for
// all of them:
//
//   - the key is handed over in a sealed in-memory file (memfd) on
//     descriptor 3, named KeyFilePath: it is never in the arguments, in the
//     environment or on disk;
//   - the program gets the plugin's environment without its CEPH_ARGS,
//     CEPH_CONF and CEPH_KEYRING, so that it reads only what we pass;
//   - every run is bounded in time, even when the killed program cannot
//     exit (stuck in the kernel on a dead device);
//   - the key is scrubbed from everything the program printed.
//
// Run is for programs that finish (or fork a daemon and then finish); Start
// is for a helper that keeps running after its starter returns.
package keyexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// KeyFD is the descriptor that holds the key of Command.Key, and
// KeyFilePath the name a program opens it by.
const (
	KeyFD       = 3
	KeyFilePath = "/proc/self/fd/3"
)

// ReportFD is the descriptor on which a started helper reports (see Start).
const ReportFD = 4

// Ready is the report of a helper that serves.
const Ready = "ready"

// DefaultTimeout bounds a command that sets no timeout of its own.
const DefaultTimeout = 2 * time.Minute

// Command is one program run.
type Command struct {
	Path string
	Args []string
	// Env is added to the plugin's environment, from which any CEPH_*
	// client settings have been removed.
	Env []string
	// Key, when set, is given to the program in an in-memory file at
	// KeyFilePath and is scrubbed from its output.
	Key string
	// Secret is a key kept in a byte slice (a LUKS passphrase the caller
	// clears after use): given and scrubbed like Key, which must then be
	// empty. Its bytes are never turned into a string here.
	Secret []byte
	// EmptyKeyOnReturn empties the key file once Run returns, for a
	// program that reads the key while starting and leaves a daemon behind
	// that keeps descriptor 3 open (ceph-fuse): the daemon's descriptor then
	// reads nothing.
	EmptyKeyOnReturn bool
	Timeout          time.Duration
	// Log, for Start only, receives the helper's standard error.
	Log *os.File
}

func (c Command) String() string { return c.Path + " " + strings.Join(c.Args, " ") }

func (c Command) timeout() time.Duration {
	if c.Timeout <= 0 {
		return DefaultTimeout
	}
	return c.Timeout
}

// Result is what a command printed, with the key scrubbed.
type Result struct {
	Stdout, Stderr string
}

// Runner runs commands. Tests replace it to see exactly what would run.
type Runner interface {
	Run(ctx context.Context, c Command) (Result, error)
}

// Starter starts long-lived helpers. Tests replace it.
type Starter interface {
	Start(ctx context.Context, c Command) (pid int, err error)
}

// Exec runs commands as child processes; it implements Runner and Starter.
type Exec struct{}

// Run implements Runner. A failing command's error is a *RunError (exit
// status and the end of its output, the key removed); a command that
// outlives its timeout is killed and the error wraps
// context.DeadlineExceeded.
func (Exec) Run(ctx context.Context, c Command) (Result, error) {
	timeout := c.timeout()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Env = append(cleanEnv(os.Environ()), c.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Daemons (rbd-nbd, ceph-fuse) fork and keep running; do not wait for
	// them to close inherited pipes.
	cmd.WaitDelay = 2 * time.Second
	if c.hasKey() {
		f, err := c.keyFile()
		if err != nil {
			return Result{}, err
		}
		defer closeFile(f)
		if c.EmptyKeyOnReturn {
			defer emptyKeyFile(f)
		}
		cmd.ExtraFiles = []*os.File{f}
	}
	abandoned, err := runBounded(ctx, cmd)
	if abandoned {
		// Its output may still be written to; do not read it.
		return Result{}, err
	}
	res := Result{Stdout: c.redact(stdout.Bytes()), Stderr: c.redact(stderr.Bytes())}
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil // exited successfully; a forked daemon still holds the pipes
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return res, fmt.Errorf("%s: killed after %s: %w", c.Path, timeout, context.DeadlineExceeded)
		}
		if ctx.Err() != nil {
			return res, fmt.Errorf("%s: %w", c.Path, ctx.Err())
		}
		return res, &RunError{Command: c, Err: err, Result: res}
	}
	return res, nil
}

// RunError is a command that ran and failed (exit status, signal). Its
// message carries the end of the command's stderr, or of its stdout when
// stderr is empty.
type RunError struct {
	Command Command
	Err     error
	Result  Result
}

func (e *RunError) Error() string {
	msg := strings.TrimSpace(e.Result.Stderr)
	if msg == "" {
		msg = strings.TrimSpace(e.Result.Stdout)
	}
	return fmt.Sprintf("%s %s: %s: %s", e.Command.Path, strings.Join(e.Command.Args, " "), e.Command.redact([]byte(e.Err.Error())), LastLines(msg, 5))
}

func (e *RunError) Unwrap() error { return e.Err }

// runBounded runs cmd and returns at the latest shortly after ctx ends,
// even when the killed process cannot exit; it is then left to finish in
// the background.
func runBounded(ctx context.Context, cmd *exec.Cmd) (abandoned bool, err error) {
	if err := cmd.Start(); err != nil {
		return false, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return false, err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		return false, err
	case <-time.After(cmd.WaitDelay + 5*time.Second):
		return true, fmt.Errorf("%s did not exit after being killed: %w", cmd.Path, ctx.Err())
	}
}

// StartError is a helper that did not report Ready. Report is what it
// wrote on ReportFD instead (empty when it died without a word).
type StartError struct {
	Path   string
	Report string
	// Exit is how the helper ended (nil when it was still running).
	Exit error
}

func (e *StartError) Error() string {
	msg := e.Path + " did not start"
	if e.Exit != nil {
		msg += " (" + e.Exit.Error() + ")"
	}
	if e.Report != "" {
		msg += ": " + e.Report
	}
	return msg
}

// Start starts c as a helper that keeps running after Start returns: in a
// session of its own (so that neither the plugin's death nor a signal to
// its process group reaches it), in /, with standard input and output on
// /dev/null, standard error on c.Log, the key on descriptor 3 and a pipe on
// descriptor ReportFD.
//
// The helper writes Ready to that pipe and closes it once it serves, or
// writes why it cannot and exits. Start returns its pid after Ready; after
// anything else, or when it dies first, a *StartError once it has exited.
// A helper that neither reports nor exits within c.Timeout is killed, and
// the error wraps context.DeadlineExceeded. The started helper is reaped
// when it exits.
func (Exec) Start(ctx context.Context, c Command) (int, error) {
	timeout := c.timeout()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Not exec.CommandContext: the helper must outlive ctx.
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append(cleanEnv(os.Environ()), c.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/" // holds no directory of the plugin's busy
	if c.Log != nil {
		cmd.Stderr = c.Log
	}
	var key *os.File
	if c.hasKey() {
		f, err := c.keyFile()
		if err != nil {
			return 0, err
		}
		defer closeFile(f)
		key = f
	}
	reportR, reportW, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("creating the report pipe: %w", err)
	}
	defer closeFile(reportR)
	// Without a key (nil) descriptor 3 stays closed in the helper.
	cmd.ExtraFiles = []*os.File{key, reportW}
	err = cmd.Start()
	closeFile(reportW) // the helper holds the only write end now
	if err != nil {
		return 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	reported := make(chan string, 1)
	go func() {
		// Bounded: the pipe reaches EOF when the helper closes it or dies,
		// and the deadline below closes our end otherwise.
		data, _ := io.ReadAll(io.LimitReader(reportR, 64<<10))
		reported <- strings.TrimSpace(c.redact(data))
	}()
	var report string
	select {
	case report = <-reported:
	case <-ctx.Done():
		return 0, killStarted(cmd, exited, fmt.Errorf("%s did not report within %s: %w", c.Path, timeout, ctx.Err()))
	}
	if report == Ready {
		return cmd.Process.Pid, nil
	}
	select {
	case exitErr := <-exited:
		return 0, &StartError{Path: c.Path, Report: report, Exit: exitErr}
	case <-ctx.Done():
		return 0, killStarted(cmd, exited, fmt.Errorf("%s reported %q but did not exit: %w", c.Path, report, ctx.Err()))
	}
}

// killStarted kills a helper that failed to start, with whatever it
// started in its session, and waits a little for it to go.
func killStarted(cmd *exec.Cmd, exited <-chan error, err error) error {
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case exit := <-exited:
		err = fmt.Errorf("%w (killed: %w)", err, exit)
	case <-time.After(5 * time.Second):
		err = fmt.Errorf("%w (and it did not exit after SIGKILL)", err)
	}
	return err
}

func (c Command) hasKey() bool { return c.Key != "" || len(c.Secret) > 0 }

// keyFile returns the in-memory file of the command's key.
func (c Command) keyFile() (*os.File, error) {
	if c.Key != "" && len(c.Secret) > 0 {
		return nil, errors.New("a command takes Key or Secret, not both")
	}
	if len(c.Secret) > 0 {
		return keyFile(c.Secret)
	}
	return keyFile([]byte(c.Key))
}

// redact is the program's output as a string, the key removed.
func (c Command) redact(out []byte) string {
	if len(c.Secret) > 0 {
		out = bytes.ReplaceAll(out, c.Secret, []byte("<redacted>"))
	}
	return Redact(string(out), c.Key)
}

// keyFile returns an in-memory file holding key, positioned at 0, sealed
// so that nobody can change it; it can only be emptied (emptyKeyFile).
func keyFile(key []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate("cephcsi-key", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("creating an in-memory key file: %w", err)
	}
	f := os.NewFile(uintptr(fd), "cephcsi-key")
	// The key alone, no newline: mount.ceph and Ceph's keyfile reading both
	// take it so.
	if _, err := f.Write(key); err != nil {
		closeFile(f)
		return nil, fmt.Errorf("writing the in-memory key file: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		closeFile(f)
		return nil, fmt.Errorf("sealing the in-memory key file: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		closeFile(f)
		return nil, err
	}
	return f, nil
}

// closeFile closes a descriptor whose close cannot fail in a way that
// matters (nothing was written through it that is not already done).
func closeFile(f *os.File) { _ = f.Close() }

// emptyKeyFile truncates the key file: every descriptor of it, in any
// process, then reads nothing, and its pages are freed.
func emptyKeyFile(f *os.File) { _ = f.Truncate(0) }

// cleanEnv drops Ceph client settings the plugin may have inherited, so a
// child reads only what we pass it.
func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if strings.HasPrefix(kv, "CEPH_ARGS=") || strings.HasPrefix(kv, "CEPH_CONF=") || strings.HasPrefix(kv, "CEPH_KEYRING=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Redact removes key from s.
func Redact(s, key string) string {
	if key == "" {
		return s
	}
	return strings.ReplaceAll(s, key, "<redacted>")
}

// LastLines joins the last n lines of s with " | ".
func LastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
