package gate

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/felhom/felhom-agent/internal/appendlog"
)

// The file nonce store is an appendlog (see that package for durability,
// torn-tail recovery, locking and compaction) with the magic "FLHMNCE1" and
// the self-delimiting layout, one record per used nonce:
//
//	uint8 n (1..255) | nonce (n bytes) | int64 big-endian expires_at (Unix seconds)
//
// followed in the file by the log's uint32 big-endian CRC-32C of those n+9
// bytes. Each Use appends one record and returns only after it is synced,
// so an accepted nonce survives a crash or power loss.
const (
	nonceMagic       = "FLHMNCE1"
	nonceRecordFixed = 1 + 8
)

var (
	// ErrNonceLogLocked: another process has the nonce log open.
	ErrNonceLogLocked = errors.New("nonce log is in use by another process")
	// ErrNonceLogCorrupt: the nonce log is damaged before its tail.
	ErrNonceLogCorrupt = errors.New("nonce log is corrupt")
	// ErrNonceLogClosed: the store was closed, or failed and must be reopened.
	ErrNonceLogClosed = errors.New("nonce log is closed")
)

// FileNonceStore is the durable, crash-safe NonceStore of an agent. It is
// safe for concurrent use; one process at a time may have a log open.
type FileNonceStore struct {
	mu   sync.Mutex
	log  *appendlog.Log
	used map[string]int64 // nonce → expires_at, Unix seconds
	rec  []byte           // scratch for one record
}

// nonceRecordLen is the length of the record that starts with b.
func nonceRecordLen(b []byte) (int, bool) {
	if len(b) < 1 || b[0] == 0 {
		return 0, false
	}
	return nonceRecordFixed + int(b[0]), true
}

func appendNonceRecord(b []byte, nonce string, expires int64) []byte {
	b = append(b, byte(len(nonce)))
	b = append(b, nonce...)
	return binary.BigEndian.AppendUint64(b, uint64(expires))
}

// OpenFileNonceStore opens (creating if needed) the nonce log at path,
// replays it and locks it until Close. A second open of the same path, from
// this or another process, fails with ErrNonceLogLocked.
func OpenFileNonceStore(path string) (*FileNonceStore, error) {
	return openFileNonceStore(path, nil, nil)
}

// OpenFileNonceStoreObserved is OpenFileNonceStore telling onSync how long
// each record's fsync took.
func OpenFileNonceStoreObserved(path string, onSync func(time.Duration)) (*FileNonceStore, error) {
	return openFileNonceStore(path, nil, onSync)
}

// openFileNonceStore opens the store on fsys (the operating system if nil),
// so tests can make its file operations fail.
func openFileNonceStore(path string, fsys appendlog.FS, onSync func(time.Duration)) (*FileNonceStore, error) {
	// Sizing the map from the file spares a million-entry replay some
	// twenty rehashes; felhom-sign's nonces are 32 bytes.
	hint := 0
	if fi, err := os.Stat(path); err == nil {
		hint = int(fi.Size() / (nonceRecordFixed + 4 + 32))
	}
	s := &FileNonceStore{used: make(map[string]int64, hint)}
	log, err := appendlog.Open(path, nonceMagic, appendlog.Options{
		OnSync:    onSync,
		RecordLen: nonceRecordLen,
		MaxRecord: nonceRecordFixed + MaxNonceLen,
		FS:        fsys,
	}, func(rec []byte) error {
		n := int(rec[0])
		s.used[string(rec[1:1+n])] = int64(binary.BigEndian.Uint64(rec[1+n:]))
		return nil
	})
	if err != nil {
		return nil, nonceLogError(err)
	}
	s.log = log
	return s, nil
}

// nonceLogError adds the store's own sentinel to an appendlog error.
func nonceLogError(err error) error {
	for _, m := range []struct{ from, to error }{
		{appendlog.ErrLocked, ErrNonceLogLocked},
		{appendlog.ErrCorrupt, ErrNonceLogCorrupt},
		{appendlog.ErrPoisoned, ErrNonceLogClosed},
		{appendlog.ErrClosed, ErrNonceLogClosed},
	} {
		if errors.Is(err, m.from) {
			return fmt.Errorf("%w: %w", m.to, err)
		}
	}
	return fmt.Errorf("nonce log: %w", err)
}

// Use implements NonceStore. It returns after the record is on stable
// storage.
func (s *FileNonceStore) Use(ctx context.Context, nonce string, expiresAt time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if nonce == "" || len(nonce) > MaxNonceLen {
		return fmt.Errorf("nonce log: nonce must be 1..%d bytes", MaxNonceLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.log.Err(); err != nil {
		return nonceLogError(err)
	}
	if _, ok := s.used[nonce]; ok {
		return fmt.Errorf("%w: nonce %q", ErrReplay, nonce)
	}
	s.rec = appendNonceRecord(s.rec[:0], nonce, expiresAt.Unix())
	if err := s.log.Append(s.rec); err != nil {
		// Not acknowledged: the nonce stays unused here, and the log
		// refuses everything until reopened, so it cannot be used twice.
		return nonceLogError(err)
	}
	s.used[nonce] = expiresAt.Unix()
	return nil
}

// Len is the number of recorded nonces.
func (s *FileNonceStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.used)
}

// Compact rewrites the log without the nonces whose op expired before
// cutoff, and returns how many it dropped. Only expired entries are ever
// dropped; pass a cutoff somewhat before now so a clock stepped back cannot
// revive an op. A crash leaves either the old log or the new one; on error
// the store keeps every nonce.
func (s *FileNonceStore) Compact(cutoff time.Time) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.log.Err(); err != nil {
		return 0, nonceLogError(err)
	}
	keep := make(map[string]int64, len(s.used))
	for nonce, exp := range s.used {
		if exp >= cutoff.Unix() {
			keep[nonce] = exp
		}
	}
	err := s.log.Compact(func(yield func([]byte) bool) {
		for nonce, exp := range keep {
			s.rec = appendNonceRecord(s.rec[:0], nonce, exp)
			if !yield(s.rec) {
				return
			}
		}
	})
	if err != nil {
		return 0, nonceLogError(err)
	}
	dropped := len(s.used) - len(keep)
	s.used = keep
	return dropped, nil
}

// Close releases the log and its lock.
func (s *FileNonceStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.Close()
}

// Spent reports whether nonce is recorded as used (see Gate.NonceSpent).
func (s *FileNonceStore) Spent(nonce string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.used[nonce]
	return ok
}
