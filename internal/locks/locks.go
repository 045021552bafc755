// Package locks keeps one operation at a time per volume name or ID.
//
// The CSI sidecars retry every call, so a second request for a key that is
// already busy is refused at once (the caller turns that into Aborted)
// instead of queueing behind the first.
package locks

import "sync"

// Set is a set of held keys. The zero value is ready to use.
type Set struct {
	mu   sync.Mutex
	held map[string]struct{}
}

// TryAcquire takes key and reports whether it was free.
func (s *Set) TryAcquire(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = make(map[string]struct{})
	}
	if _, busy := s.held[key]; busy {
		return false
	}
	s.held[key] = struct{}{}
	return true
}

// Release frees key.
func (s *Set) Release(key string) {
	s.mu.Lock()
	delete(s.held, key)
	s.mu.Unlock()
}

// TryAcquireAll takes every key or none of them; on success it returns the
// function that releases them all.
func (s *Set) TryAcquireAll(keys ...string) (release func(), ok bool) {
	for i, k := range keys {
		if !s.TryAcquire(k) {
			for _, taken := range keys[:i] {
				s.Release(taken)
			}
			return nil, false
		}
	}
	return func() {
		for _, k := range keys {
			s.Release(k)
		}
	}, true
}
