package rbdfuse

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// Why a helper could not start, as its starter learns it.
var (
	// ErrNotFound: the pool, the namespace or the image does not exist.
	ErrNotFound = errors.New("pool, namespace or image not found")
	// ErrPermission: the cluster refused the user (bad key, or caps that
	// do not allow the pool or image).
	ErrPermission = errors.New("permission denied")
	// ErrTimedOut: the cluster did not answer in time.
	ErrTimedOut = errors.New("timed out")
)

// The first word of a failure report names its class.
const (
	classNotFound   = "not-found"
	classPermission = "permission-denied"
	classTimedOut   = "timed-out"
	classBadOption  = "bad-option"
	classFailed     = "failed"
)

// failureReport is the line a helper writes instead of keyexec.Ready.
func failureReport(err error) string {
	class := classFailed
	switch {
	case errors.Is(err, ErrBadOption):
		class = classBadOption
	case errors.Is(err, ErrNotFound), csierr.IsErrno(err, syscall.ENOENT):
		class = classNotFound
	case errors.Is(err, ErrPermission), csierr.IsErrno(err, syscall.EACCES), csierr.IsErrno(err, syscall.EPERM):
		class = classPermission
	case errors.Is(err, ErrTimedOut), csierr.IsErrno(err, syscall.ETIMEDOUT):
		class = classTimedOut
	}
	return class + ": " + strings.ReplaceAll(err.Error(), "\n", " ")
}

// FailureFromReport turns a helper's failure report back into an error
// wrapping ErrNotFound, ErrPermission, ErrTimedOut or ErrBadOption as the
// helper classed it. An empty report is a helper that died without a word.
func FailureFromReport(report string) error {
	if report == "" {
		return errors.New("the helper exited without reporting")
	}
	class, msg, _ := strings.Cut(report, ": ")
	var sentinel error
	switch class {
	case classNotFound:
		sentinel = ErrNotFound
	case classPermission:
		sentinel = ErrPermission
	case classTimedOut:
		sentinel = ErrTimedOut
	case classBadOption:
		sentinel = ErrBadOption
	case classFailed:
		return errors.New(msg)
	default:
		return errors.New(report)
	}
	return fmt.Errorf("%s (%w)", msg, sentinel)
}
