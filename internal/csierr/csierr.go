// Package csierr turns errors into gRPC statuses. Code that understands an
// error returns a status itself; everything else passes through Status,
// which maps the sentinel errors of this project and Ceph's errno values.
package csierr

import (
	"context"
	"errors"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinels shared by the drivers.
var (
	ErrNotFound      = errors.New("not found")
	ErrExists        = errors.New("already exists")
	ErrBusy          = errors.New("in use")
	ErrInvalid       = errors.New("invalid argument")
	ErrInProgress    = errors.New("operation in progress")
	ErrExhausted     = errors.New("resources exhausted")
	ErrOutOfRange    = errors.New("out of range")
	ErrPrecondition  = errors.New("failed precondition")
	ErrUnimplemented = errors.New("not supported")
)

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

// Status converts err to a gRPC status error; an error that already is one is
// returned unchanged.
func Status(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}

// Code picks the gRPC code for err.
func Code(err error) codes.Code {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, ErrNotFound):
		return codes.NotFound
	case errors.Is(err, ErrExists):
		return codes.AlreadyExists
	case errors.Is(err, ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, ErrInProgress):
		return codes.Aborted
	case errors.Is(err, ErrExhausted):
		return codes.ResourceExhausted
	case errors.Is(err, ErrOutOfRange):
		return codes.OutOfRange
	case errors.Is(err, ErrBusy), errors.Is(err, ErrPrecondition):
		return codes.FailedPrecondition
	case errors.Is(err, ErrUnimplemented):
		return codes.Unimplemented
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
