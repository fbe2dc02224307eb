package gate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/appendlog/appendlogtest"
)

func TestNonceStores(t *testing.T) {
	ctx := context.Background()
	stores := map[string]func(t *testing.T) NonceStore{
		"memory": func(t *testing.T) NonceStore { return NewMemoryNonceStore() },
		"file": func(t *testing.T) NonceStore {
			s, err := OpenFileNonceStore(filepath.Join(t.TempDir(), "nonces.log"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			if err := s.Use(ctx, "a", t1); err != nil {
				t.Fatalf("first use: %v", err)
			}
			if err := s.Use(ctx, "a", t1.Add(time.Hour)); !errors.Is(err, ErrReplay) {
				t.Fatalf("second use = %v, want ErrReplay", err)
			}
			if err := s.Use(ctx, "b", t1); err != nil {
				t.Fatalf("other nonce: %v", err)
			}
		})
	}
}

func TestFileNonceStoreSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "nonces.log")
	s, err := OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if err := s.Use(ctx, n, t1); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, n := range []string{"a", "b", "c"} {
		if err := s.Use(ctx, n, t1); !errors.Is(err, ErrReplay) {
			t.Fatalf("nonce %q after restart: %v, want ErrReplay", n, err)
		}
	}
	if err := s.Use(ctx, "d", t1); err != nil {
		t.Fatalf("fresh nonce after restart: %v", err)
	}
}

func TestFileNonceStoreLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nonces.log")
	s, err := OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFileNonceStore(path); !errors.Is(err, ErrNonceLogLocked) {
		t.Fatalf("second open = %v, want ErrNonceLogLocked", err)
	}
	s.Close()
	s2, err := OpenFileNonceStore(path)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s2.Close()
}

// testdata/nonces-v1.log was written by the store before it moved onto
// appendlog: "a", a 32-byte and a 255-byte nonce, "expired" compacted away,
// then "after-compact". Logs on hosts keep opening.
func TestFileNonceStoreOpensExistingLog(t *testing.T) {
	ctx := context.Background()
	golden, err := os.ReadFile("testdata/nonces-v1.log")
	if err != nil {
		t.Fatal(err)
	}
	used := []string{"a", "0123456789abcdef0123456789abcdef", strings.Repeat("n", MaxNonceLen), "after-compact"}
	tests := []struct {
		name    string
		file    []byte
		wantErr error
		used    []string
	}{
		{"as written", golden, nil, used},
		{"with a torn append", append(slices.Clone(golden), 5, 'x', 'y'), nil, used},
		{"damaged before its tail", flipByte(golden, len(nonceMagic)+1), ErrNonceLogCorrupt, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "nonces.log")
			if err := os.WriteFile(path, tt.file, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := OpenFileNonceStore(path)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("open = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.Len() != len(tt.used) {
				t.Fatalf("replayed %d nonces, want %d", s.Len(), len(tt.used))
			}
			for _, n := range tt.used {
				if err := s.Use(ctx, n, t1); !errors.Is(err, ErrReplay) {
					t.Fatalf("nonce %.40q: %v, want ErrReplay", n, err)
				}
			}
			if err := s.Use(ctx, "expired", t1); err != nil {
				t.Fatalf("the compacted-away nonce: %v", err)
			}
		})
	}
}

func flipByte(b []byte, i int) []byte {
	b = slices.Clone(b)
	b[i] ^= 0x10
	return b
}

// A Use whose record may not be on disk is refused, and so is every later
// Use, replayed or fresh, until the store is reopened; after reopening, the
// refused nonce may count as used (its record reached the page cache) but
// an accepted one always does.
func TestFileNonceStoreRefusesAfterFailedSync(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "nonces.log")
	var armed atomic.Bool
	s, err := openFileNonceStore(path, appendlogtest.FailingSync{Armed: &armed}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Use(ctx, "accepted", t1); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	if err := s.Use(ctx, "unsynced", t1); !errors.Is(err, ErrNonceLogClosed) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Use with a failing sync = %v, want ErrNonceLogClosed wrapping EIO", err)
	}
	armed.Store(false)
	for _, n := range []string{"unsynced", "fresh", "accepted"} {
		if err := s.Use(ctx, n, t1); !errors.Is(err, ErrNonceLogClosed) {
			t.Fatalf("Use(%q) after a failed sync = %v, want ErrNonceLogClosed", n, err)
		}
	}
	if _, err := s.Compact(t0); !errors.Is(err, ErrNonceLogClosed) {
		t.Fatalf("Compact after a failed sync = %v, want ErrNonceLogClosed", err)
	}
	s.Close()
	s, err = OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Use(ctx, "accepted", t1); !errors.Is(err, ErrReplay) {
		t.Fatalf("accepted nonce after reopen: %v, want ErrReplay", err)
	}
	if err := s.Use(ctx, "fresh", t1); err != nil {
		t.Fatalf("fresh nonce after reopen: %v", err)
	}
}

func TestFileNonceStoreCompactDropsOnlyExpired(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "nonces.log")
	s, err := OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Use(ctx, "old", t0)
	s.Use(ctx, "edge", t1)
	s.Use(ctx, "live", t1.Add(time.Hour))
	dropped, err := s.Compact(t1)
	if err != nil {
		t.Fatal(err)
	}
	if dropped != 1 {
		t.Fatalf("dropped %d, want 1", dropped)
	}
	if err := s.Use(ctx, "after", t1.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, n := range []string{"edge", "live", "after"} {
		if err := s.Use(ctx, n, t1); !errors.Is(err, ErrReplay) {
			t.Fatalf("nonce %q after compaction and reopen: %v, want ErrReplay", n, err)
		}
	}
	if err := s.Use(ctx, "old", t1); err != nil {
		t.Fatalf("expired nonce should have been pruned: %v", err)
	}
}
