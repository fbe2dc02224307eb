package gate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
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

func TestFileNonceStoreTail(t *testing.T) {
	ctx := context.Background()
	rec := func(n string) []byte { return appendNonceRecord(nil, n, t1.Unix()) }
	full := append([]byte(nonceMagic), rec("aa")...)
	full = append(full, rec("bb")...)
	last := rec("cc")
	tests := []struct {
		name     string
		tail     []byte
		wantErr  error
		replayed []string
	}{
		{"clean", last, nil, []string{"aa", "bb", "cc"}},
		{"short record", last[:len(last)-3], nil, []string{"aa", "bb"}},
		{"length byte only", last[:1], nil, []string{"aa", "bb"}},
		{"bad checksum", append(append([]byte{}, last[:len(last)-1]...), last[len(last)-1]^1), nil, []string{"aa", "bb"}},
		{"zero filled", make([]byte, 4096), nil, []string{"aa", "bb"}},
		{"damage before an intact record", append([]byte{9, 9, 9}, last...), ErrNonceLogCorrupt, nil},
		{"garbage", []byte("garbage that is much longer than any record could be......" + string(make([]byte, 600)) + "x"), ErrNonceLogCorrupt, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "nonces.log")
			if err := os.WriteFile(path, append(append([]byte{}, full...), tt.tail...), 0o600); err != nil {
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
			if s.Len() != len(tt.replayed) {
				t.Fatalf("replayed %d nonces, want %d", s.Len(), len(tt.replayed))
			}
			for _, n := range tt.replayed {
				if err := s.Use(ctx, n, t1); !errors.Is(err, ErrReplay) {
					t.Fatalf("nonce %q: %v, want ErrReplay", n, err)
				}
			}
			// The torn tail is gone: a new append lands where it was and
			// survives another reopen.
			if err := s.Use(ctx, "dd", t1); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s, err = OpenFileNonceStore(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Use(ctx, "dd", t1); !errors.Is(err, ErrReplay) {
				t.Fatalf("append after truncation lost: %v", err)
			}
		})
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

// An append cut short at any byte leaves the earlier nonces used, the cut
// one unused (it was never acknowledged), and the log appendable.
func TestFileNonceStoreTornAtEveryByte(t *testing.T) {
	ctx := context.Background()
	log := append([]byte(nonceMagic), appendNonceRecord(nil, "first", t1.Unix())...)
	last := appendNonceRecord(nil, "0123456789abcdef0123456789abcdef", t1.Unix())
	for cut := 0; cut < len(last); cut++ {
		path := filepath.Join(t.TempDir(), "nonces.log")
		if err := os.WriteFile(path, append(append([]byte{}, log...), last[:cut]...), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenFileNonceStore(path)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if err := s.Use(ctx, "first", t1); !errors.Is(err, ErrReplay) {
			t.Fatalf("cut at %d: earlier nonce: %v", cut, err)
		}
		if err := s.Use(ctx, "0123456789abcdef0123456789abcdef", t1); err != nil {
			t.Fatalf("cut at %d: unacknowledged nonce should be unused: %v", cut, err)
		}
		s.Close()
		if fi, _ := os.Stat(path); fi.Size() != int64(len(log)+len(last)) {
			t.Fatalf("cut at %d: log is %d bytes after re-append, want %d", cut, fi.Size(), len(log)+len(last))
		}
	}
}
