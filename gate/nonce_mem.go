package gate

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// MemoryNonceStore is a NonceStore that forgets everything when the process
// exits. It is for tests and tools; an agent uses FileNonceStore.
type MemoryNonceStore struct {
	mu   sync.Mutex
	used map[string]time.Time
}

// NewMemoryNonceStore returns an empty store.
func NewMemoryNonceStore() *MemoryNonceStore {
	return &MemoryNonceStore{used: map[string]time.Time{}}
}

// Use implements NonceStore.
func (s *MemoryNonceStore) Use(ctx context.Context, nonce string, expiresAt time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used == nil {
		s.used = map[string]time.Time{}
	}
	if _, ok := s.used[nonce]; ok {
		return fmt.Errorf("%w: nonce %q", ErrReplay, nonce)
	}
	s.used[nonce] = expiresAt
	return nil
}

// Prune forgets nonces whose op expired before now; they can no longer pass
// the time window.
func (s *MemoryNonceStore) Prune(now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, exp := range s.used {
		if exp.Before(now) {
			delete(s.used, k)
			n++
		}
	}
	return n
}

// Len is the number of recorded nonces.
func (s *MemoryNonceStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.used)
}

// Spent reports whether nonce is recorded as used (see Gate.NonceSpent).
func (s *MemoryNonceStore) Spent(nonce string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.used[nonce]
	return ok
}
