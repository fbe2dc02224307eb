package gate

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// The file nonce store's log is an 8-byte magic header followed by records:
//
//	uint8 n (1..255) | nonce (n bytes) | int64 big-endian expires_at (Unix seconds) |
//	uint32 big-endian CRC-32C of the preceding n+9 bytes
//
// Records are small and self-delimiting, so replaying a million of them is
// one read of the file and one pass over it. Each Use writes one record with
// one pwrite(2) and fdatasync(2)s it before returning, so an accepted nonce
// survives a crash or power loss.
//
// On open, a damaged tail — an append cut short by a crash, leaving a short
// record, a record whose checksum fails, or zero bytes — is truncated: it was
// never acknowledged. Damage followed by any intact record is not a torn
// append; the store then refuses to open (ErrNonceLogCorrupt) rather than
// forget nonces it had accepted.
const (
	nonceMagic        = "FLHMNCE1"
	nonceRecordFixed  = 1 + 8 + 4
	maxNonceRecordLen = nonceRecordFixed + MaxNonceLen
)

var (
	// ErrNonceLogLocked: another process has the nonce log open.
	ErrNonceLogLocked = errors.New("nonce log is in use by another process")
	// ErrNonceLogCorrupt: the nonce log is damaged before its tail.
	ErrNonceLogCorrupt = errors.New("nonce log is corrupt")
	// ErrNonceLogClosed: the store was closed, or failed and must be reopened.
	ErrNonceLogClosed = errors.New("nonce log is closed")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// FileNonceStore is the durable, crash-safe NonceStore of an agent. It is
// safe for concurrent use; one process at a time may have a log open.
type FileNonceStore struct {
	path string

	mu     sync.Mutex
	f      *os.File
	lock   *os.File
	size   int64            // end of the last intact record
	used   map[string]int64 // nonce → expires_at, Unix seconds
	failed error            // set when a write's outcome is unknown
}

// OpenFileNonceStore opens (creating if needed) the nonce log at path,
// replays it and locks it until Close. A second open of the same path, from
// this or another process, fails with ErrNonceLogLocked.
func OpenFileNonceStore(path string) (*FileNonceStore, error) {
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("nonce log: %w", err)
	}
	// The lock lives on a sibling file so compaction's rename cannot drop it.
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrNonceLogLocked, path)
		}
		return nil, fmt.Errorf("nonce log: lock %s: %w", path, err)
	}
	s := &FileNonceStore{path: path, lock: lock}
	if err := s.load(); err != nil {
		if s.f != nil {
			s.f.Close()
		}
		lock.Close()
		return nil, err
	}
	return s, nil
}

func (s *FileNonceStore) load() error {
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("nonce log: %w", err)
	}
	s.f = f
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("nonce log: %w", err)
	}
	data := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return fmt.Errorf("nonce log: read %s: %w", s.path, err)
	}
	if len(data) < len(nonceMagic) {
		// Empty, or a header cut short while the file was being created.
		if err := s.rewriteHeader(); err != nil {
			return err
		}
		s.used = map[string]int64{}
		return nil
	}
	if string(data[:len(nonceMagic)]) != nonceMagic {
		return fmt.Errorf("%w: %s is not a nonce log", ErrNonceLogCorrupt, s.path)
	}
	good, used, err := replayNonces(data)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNonceLogCorrupt, s.path, err)
	}
	if good < int64(len(data)) {
		if err := f.Truncate(good); err != nil {
			return fmt.Errorf("nonce log: truncate torn tail: %w", err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("nonce log: sync: %w", err)
		}
	}
	s.size, s.used = good, used
	return nil
}

func (s *FileNonceStore) rewriteHeader() error {
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("nonce log: %w", err)
	}
	if _, err := s.f.WriteAt([]byte(nonceMagic), 0); err != nil {
		return fmt.Errorf("nonce log: write header: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("nonce log: sync: %w", err)
	}
	s.size = int64(len(nonceMagic))
	return syncDir(filepath.Dir(s.path))
}

// replayNonces parses the records after the header and returns the offset
// just past the last intact record. Keys are substrings of one copy of the
// file, so replay allocates per record only in the map.
func replayNonces(data []byte) (int64, map[string]int64, error) {
	text := string(data)
	used := make(map[string]int64, len(data)/32)
	off := len(nonceMagic)
	for off < len(data) {
		n, ok := parseNonceRecord(data[off:])
		if !ok {
			if intactRecordAfter(data[off:]) {
				return 0, nil, fmt.Errorf("damaged record at offset %d is followed by intact records", off)
			}
			return int64(off), used, nil
		}
		l := int(data[off])
		used[text[off+1:off+1+l]] = int64(binary.BigEndian.Uint64(data[off+1+l:]))
		off += n
	}
	return int64(off), used, nil
}

// parseNonceRecord returns the length of the intact record at the start of
// b, or false.
func parseNonceRecord(b []byte) (int, bool) {
	if len(b) < 1 || b[0] == 0 {
		return 0, false
	}
	n := nonceRecordFixed + int(b[0])
	if len(b) < n {
		return 0, false
	}
	if crc32.Checksum(b[:n-4], castagnoli) != binary.BigEndian.Uint32(b[n-4:n]) {
		return 0, false
	}
	return n, true
}

// intactRecordAfter reports whether damage at the start of b is followed by
// an intact record, which a single torn append cannot produce.
func intactRecordAfter(b []byte) bool {
	if len(b) > 2*maxNonceRecordLen {
		for _, c := range b {
			if c != 0 {
				return true
			}
		}
		return false
	}
	for i := 1; i < len(b); i++ {
		if _, ok := parseNonceRecord(b[i:]); ok {
			return true
		}
	}
	return false
}

func appendNonceRecord(b []byte, nonce string, expires int64) []byte {
	start := len(b)
	b = append(b, byte(len(nonce)))
	b = append(b, nonce...)
	b = binary.BigEndian.AppendUint64(b, uint64(expires))
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
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
	if s.failed != nil {
		return s.failed
	}
	if _, ok := s.used[nonce]; ok {
		return fmt.Errorf("%w: nonce %q", ErrReplay, nonce)
	}
	rec := appendNonceRecord(make([]byte, 0, nonceRecordFixed+len(nonce)), nonce, expiresAt.Unix())
	if _, err := s.f.WriteAt(rec, s.size); err != nil {
		// Nothing was acknowledged; cut whatever reached the file.
		if terr := s.f.Truncate(s.size); terr != nil {
			s.failed = fmt.Errorf("%w: append failed and could not be undone: %v", ErrNonceLogClosed, terr)
		}
		return fmt.Errorf("nonce log: append: %w", err)
	}
	if err := syscall.Fdatasync(int(s.f.Fd())); err != nil {
		// After a failed fsync the kernel may have dropped the dirty pages;
		// what is on disk is unknown, so refuse everything until reopened.
		s.failed = fmt.Errorf("%w: fsync failed: %v", ErrNonceLogClosed, err)
		return fmt.Errorf("nonce log: fsync: %w", err)
	}
	s.used[nonce] = expiresAt.Unix()
	s.size += int64(len(rec))
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
// revive an op. The new log is fsync'd and renamed over the old one, so a
// crash leaves either the old log or the new one.
func (s *FileNonceStore) Compact(cutoff time.Time) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return 0, s.failed
	}
	if s.f == nil {
		return 0, ErrNonceLogClosed
	}
	keep := make(map[string]int64, len(s.used))
	buf := []byte(nonceMagic)
	for nonce, exp := range s.used {
		if exp >= cutoff.Unix() {
			keep[nonce] = exp
			buf = appendNonceRecord(buf, nonce, exp)
		}
	}
	dropped := len(s.used) - len(keep)
	tmp := s.path + ".compact"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("nonce log: compact: %w", err)
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		os.Remove(tmp)
		return 0, fmt.Errorf("nonce log: compact: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return 0, fmt.Errorf("nonce log: compact: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		f.Close()
		os.Remove(tmp)
		return 0, fmt.Errorf("nonce log: compact: %w", err)
	}
	s.f.Close()
	s.f, s.size, s.used = f, int64(len(buf)), keep
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		// Until the rename is durable, a crash could bring the old file back
		// without the records appended from now on.
		s.failed = fmt.Errorf("%w: %v", ErrNonceLogClosed, err)
		return dropped, err
	}
	return dropped, nil
}

// Close releases the log and its lock.
func (s *FileNonceStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	s.failed = ErrNonceLogClosed
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("nonce log: open dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("nonce log: sync dir: %w", err)
	}
	return nil
}
