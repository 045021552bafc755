// Package memtrim gives the C heap's free memory back to the system once
// the process has gone quiet. librados and librbd allocate through glibc's
// malloc, whose per-thread arenas keep what a burst of concurrent calls
// freed: without a trim the RBD controller stayed about 24 MiB above its
// idle size after 5,000 create/delete cycles, for as long as it ran.
package memtrim

/*
#include <malloc.h>
*/
import "C"

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// Quiet is how long no call may have been in flight before the trim: long
// enough that a burst of calls does not trim between two of its calls,
// short enough that a controller between bursts sits at its idle size.
const Quiet = time.Second

// Idle calls trim once no call has been in flight for quiet.
type Idle struct {
	quiet time.Duration
	trim  func()

	mu       sync.Mutex
	inFlight int
	timer    *time.Timer
}

// NewIdle returns an Idle that calls trim; New's is malloc_trim.
func NewIdle(quiet time.Duration, trim func()) *Idle {
	return &Idle{quiet: quiet, trim: trim}
}

// mallocTrim returns the free memory of every malloc arena to the system
// (glibc's malloc_trim(0) releases whole free pages inside the heaps too,
// not only at their tops).
func mallocTrim() { C.malloc_trim(0) }

// process is the one Idle of the process: malloc's arenas are shared by
// every server in it.
var process = NewIdle(Quiet, mallocTrim)

// Interceptor counts the process's calls in flight for the trim.
func Interceptor() grpc.UnaryServerInterceptor { return process.Interceptor() }

// Interceptor counts calls in flight; the handler's run is the call.
func (i *Idle) Interceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		i.begin()
		defer i.end()
		return next(ctx, req)
	}
}

func (i *Idle) begin() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.inFlight++
	if i.timer != nil {
		i.timer.Stop()
	}
}

func (i *Idle) end() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.inFlight--
	if i.inFlight > 0 {
		return
	}
	if i.timer == nil {
		i.timer = time.AfterFunc(i.quiet, i.fire)
		return
	}
	i.timer.Reset(i.quiet)
}

// fire trims unless a call began after the timer went off.
func (i *Idle) fire() {
	i.mu.Lock()
	quiet := i.inFlight == 0
	i.mu.Unlock()
	if quiet {
		i.trim()
	}
}
