package locks

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestSecondAcquireFailsUntilRelease(t *testing.T) {
	var s Set
	if !s.TryAcquire("a") {
		t.Fatal("first acquire failed")
	}
	if s.TryAcquire("a") {
		t.Fatal("second acquire of a held key succeeded")
	}
	if !s.TryAcquire("b") {
		t.Fatal("an unrelated key is blocked")
	}
	s.Release("a")
	if !s.TryAcquire("a") {
		t.Fatal("acquire after release failed")
	}
}

func TestAcquireAllIsAllOrNothing(t *testing.T) {
	var s Set
	s.TryAcquire("b")
	if _, ok := s.TryAcquireAll("a", "b", "c"); ok {
		t.Fatal("acquired a set that contains a held key")
	}
	if !s.TryAcquire("a") || !s.TryAcquire("c") {
		t.Fatal("a failed TryAcquireAll left keys held")
	}
	s.Release("a")
	s.Release("b")
	s.Release("c")
	release, ok := s.TryAcquireAll("a", "b")
	if !ok {
		t.Fatal("TryAcquireAll of free keys failed")
	}
	release()
	if !s.TryAcquire("a") || !s.TryAcquire("b") {
		t.Fatal("release did not free the keys")
	}
}

func TestConcurrentAcquireHasOneWinner(t *testing.T) {
	var s Set
	var winners atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if s.TryAcquire("same") {
				winners.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := winners.Load(); n != 1 {
		t.Fatalf("%d goroutines acquired the same key", n)
	}
}
