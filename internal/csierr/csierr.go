// Package csierr names the kinds of failure the services report and turns
// an error into its gRPC status at the RPC edge (the server's middleware).
//
// Code below the edge returns plain errors: a sentinel kind wrapped with %w
// (or made with Errorf), or a Ceph error carrying an errno. Nothing but the
// edge builds a gRPC status.
package csierr

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Kinds of failure, one gRPC code each.
var (
	ErrNotFound      = errors.New("not found")             // NotFound
	ErrExists        = errors.New("already exists")        // AlreadyExists
	ErrInvalid       = errors.New("invalid argument")      // InvalidArgument
	ErrInProgress    = errors.New("operation in progress") // Aborted: retry later
	ErrExhausted     = errors.New("resources exhausted")   // ResourceExhausted
	ErrOutOfRange    = errors.New("out of range")          // OutOfRange
	ErrPrecondition  = errors.New("failed precondition")   // FailedPrecondition
	ErrBusy          = fmt.Errorf("in use: %w", ErrPrecondition)
	ErrPermission    = errors.New("permission denied") // PermissionDenied
	ErrUnavailable   = errors.New("unavailable")       // Unavailable
	ErrUnimplemented = errors.New("not supported")     // Unimplemented
)

// kindError is an error of a kind whose message is only its own text.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// Errorf returns an error of kind (one of the Err* sentinels) with the
// formatted message; %w in format wraps a cause as fmt.Errorf does. The
// kind decides the gRPC code even when the cause carries another.
func Errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, err: fmt.Errorf(format, args...)}
}

// Param is InvalidArgument naming a StorageClass or VolumeSnapshotClass
// parameter.
func Param(name, format string, args ...any) error {
	return Errorf(ErrInvalid, "parameter %q: %s", name, fmt.Sprintf(format, args...))
}

// Field is InvalidArgument naming a request field, e.g.
// Field("volume_id", "is required").
func Field(field, format string, args ...any) error {
	return Errorf(ErrInvalid, "%s %s", field, fmt.Sprintf(format, args...))
}

// ErrorCoder is implemented by go-ceph's errors; the value is a negative errno.
type ErrorCoder interface{ ErrorCode() int }

// Errno extracts the errno of a Ceph error anywhere in err's chain.
func Errno(err error) (syscall.Errno, bool) {
	var ec ErrorCoder
	if errors.As(err, &ec) {
		code := ec.ErrorCode()
		if code < 0 {
			code = -code
		}
		return syscall.Errno(code), true
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno, true
	}
	return 0, false
}

// IsErrno reports whether err carries Ceph errno e.
func IsErrno(err error, e syscall.Errno) bool {
	got, ok := Errno(err)
	return ok && got == e
}

// IsNotFound reports ENOENT from Ceph or ErrNotFound.
func IsNotFound(err error) bool {
	return errors.Is(err, ErrNotFound) || IsErrno(err, syscall.ENOENT)
}

// Status converts err to a gRPC status error; an error that already is one
// is returned unchanged.
func Status(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}

var kindCodes = []struct {
	kind error
	code codes.Code
}{
	{ErrNotFound, codes.NotFound},
	{ErrExists, codes.AlreadyExists},
	{ErrInvalid, codes.InvalidArgument},
	{ErrInProgress, codes.Aborted},
	{ErrExhausted, codes.ResourceExhausted},
	{ErrOutOfRange, codes.OutOfRange},
	{ErrPrecondition, codes.FailedPrecondition},
	{ErrPermission, codes.PermissionDenied},
	{ErrUnavailable, codes.Unavailable},
	{ErrUnimplemented, codes.Unimplemented},
}

func codeOfKind(err error) (codes.Code, bool) {
	for _, kc := range kindCodes {
		if errors.Is(err, kc.kind) {
			return kc.code, true
		}
	}
	return 0, false
}

// Code picks the gRPC code for err: a status's own code, the kind given by
// Errorf, then a wrapped context error, sentinel or Ceph errno.
func Code(err error) codes.Code {
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	var ke *kindError
	if errors.As(err, &ke) {
		if c, ok := codeOfKind(ke.kind); ok {
			return c
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	if c, ok := codeOfKind(err); ok {
		return c
	}
	if e, ok := Errno(err); ok {
		switch e {
		case syscall.ENOENT:
			return codes.NotFound
		case syscall.EEXIST:
			return codes.AlreadyExists
		case syscall.EBUSY, syscall.ENOTEMPTY:
			return codes.FailedPrecondition
		case syscall.ETIMEDOUT:
			return codes.DeadlineExceeded
		case syscall.ENOSPC, syscall.EDQUOT:
			return codes.ResourceExhausted
		case syscall.EINVAL, syscall.ERANGE:
			return codes.InvalidArgument
		case syscall.EPERM, syscall.EACCES:
			return codes.PermissionDenied
		case syscall.EAGAIN:
			return codes.Unavailable
		}
	}
	return codes.Internal
}
