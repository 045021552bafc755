package csierr

import (
	"context"
	"fmt"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cephErr mimics go-ceph's error types, which carry a negative errno.
type cephErr int

func (e cephErr) Error() string  { return fmt.Sprintf("ceph error %d", int(e)) }
func (e cephErr) ErrorCode() int { return int(e) }

func TestCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("image x: %w", ErrNotFound), codes.NotFound},
		{fmt.Errorf("open: %w", cephErr(-int(syscall.ENOENT))), codes.NotFound},
		{fmt.Errorf("create: %w", cephErr(-int(syscall.EEXIST))), codes.AlreadyExists},
		{fmt.Errorf("rm: %w", cephErr(-int(syscall.EBUSY))), codes.FailedPrecondition},
		{fmt.Errorf("rm: %w", cephErr(-int(syscall.ETIMEDOUT))), codes.DeadlineExceeded},
		{fmt.Errorf("w: %w", cephErr(-int(syscall.EDQUOT))), codes.ResourceExhausted},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{fmt.Errorf("clone: %w", ErrInProgress), codes.Aborted},
		{fmt.Errorf("size: %w", ErrOutOfRange), codes.OutOfRange},
		{fmt.Errorf("mystery"), codes.Internal},
	} {
		if got := Code(tc.err); got != tc.want {
			t.Errorf("Code(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestStatusKeepsExistingStatus(t *testing.T) {
	in := status.Error(codes.Aborted, "busy")
	if out := Status(in); status.Code(out) != codes.Aborted {
		t.Fatalf("Status rewrote %v to %v", in, out)
	}
	if Status(nil) != nil {
		t.Fatal("Status(nil) != nil")
	}
	if !IsNotFound(fmt.Errorf("x: %w", cephErr(-2))) {
		t.Fatal("IsNotFound missed ENOENT")
	}
}
