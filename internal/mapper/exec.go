package mapper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// KeyFilePath is where a command finds the key that Command.Secret hands
// it: an in-memory file passed as descriptor 3, so the key is neither in
// the arguments, nor in the environment, nor on disk.
const KeyFilePath = "/proc/self/fd/3"

// DefaultCommandTimeout bounds a command that sets no timeout of its own.
const DefaultCommandTimeout = 2 * time.Minute

// Command is one program run.
type Command struct {
	Path string
	Args []string
	// Env is added to the plugin's environment, from which any CEPH_*
	// client settings have been removed.
	Env []string
	// Secret, when set, is given to the program in an in-memory file at
	// KeyFilePath and is scrubbed from its output.
	Secret  string
	Timeout time.Duration
}

func (c Command) String() string { return c.Path + " " + strings.Join(c.Args, " ") }

// Result is what a command printed.
type Result struct {
	Stdout, Stderr string
}

// Runner runs commands. Tests replace it to see exactly what would run.
type Runner interface {
	Run(ctx context.Context, c Command) (Result, error)
}

// ExecRunner runs commands as child processes.
type ExecRunner struct{}

// Run implements Runner. A failing command's error carries its exit status
// and stderr (with the secret removed); a command that outlives its timeout
// is killed and the error wraps context.DeadlineExceeded.
func (ExecRunner) Run(ctx context.Context, c Command) (Result, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultCommandTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Env = append(cleanEnv(os.Environ()), c.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Daemons (rbd-fuse, rbd-nbd) fork and keep running; do not wait for
	// them to close inherited pipes.
	cmd.WaitDelay = 2 * time.Second
	if c.Secret != "" {
		f, err := secretFile(c.Secret)
		if err != nil {
			return Result{}, err
		}
		defer f.Close()
		cmd.ExtraFiles = []*os.File{f}
	}
	abandoned, err := runBounded(ctx, cmd)
	if abandoned {
		// Its output may still be written to; do not read it.
		return Result{}, err
	}
	res := Result{Stdout: redact(stdout.String(), c.Secret), Stderr: redact(stderr.String(), c.Secret)}
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
		msg := strings.TrimSpace(res.Stderr)
		if msg == "" {
			msg = strings.TrimSpace(res.Stdout)
		}
		return res, fmt.Errorf("%s %s: %s: %s", c.Path, strings.Join(c.Args, " "), redact(err.Error(), c.Secret), lastLines(msg, 5))
	}
	return res, nil
}

// runBounded runs cmd and returns at the latest shortly after ctx ends,
// even when the killed process cannot exit (stuck in the kernel on a dead
// device); it is then left to finish in the background.
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

// secretFile returns an in-memory file holding secret, positioned at 0.
func secretFile(secret string) (*os.File, error) {
	fd, err := unix.MemfdCreate("cephcsi-key", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("creating an in-memory key file: %w", err)
	}
	f := os.NewFile(uintptr(fd), "cephcsi-key")
	if _, err := f.WriteString(secret + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing the in-memory key file: %w", err)
	}
	// Nobody may change it once written.
	_, _ = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL)
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

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

// redact removes secret from s.
func redact(s, secret string) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, secret, "<redacted>")
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
