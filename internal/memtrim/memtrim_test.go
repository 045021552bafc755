package memtrim

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
)

func TestTrimsOnlyOnceQuiet(t *testing.T) {
	var trims atomic.Int32
	idle := NewIdle(20*time.Millisecond, func() { trims.Add(1) })
	call := idle.Interceptor()
	release := make(chan struct{})
	running := make(chan struct{})
	slow := func(context.Context, any) (any, error) {
		close(running)
		<-release
		return nil, nil
	}
	quick := func(context.Context, any) (any, error) { return nil, nil }
	go func() { _, _ = call(context.Background(), nil, &grpc.UnaryServerInfo{}, slow) }()
	<-running
	// Quick calls end while the slow one is still in flight: no trim.
	for range 5 {
		if _, err := call(context.Background(), nil, &grpc.UnaryServerInfo{}, quick); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := trims.Load(); n != 0 {
		t.Fatalf("%d trims while a call was in flight", n)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for trims.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := trims.Load(); n != 1 {
		t.Fatalf("%d trims after the last call ended, want 1", n)
	}
	// Quiet stays quiet: one trim per idle period, not one per tick.
	time.Sleep(100 * time.Millisecond)
	if n := trims.Load(); n != 1 {
		t.Errorf("%d trims over one idle period, want 1", n)
	}
}
