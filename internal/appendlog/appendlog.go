// Package appendlog is the agent's durable append-only record log: a file of
// checksummed frames, each written with one write and synced before Append
// returns, replayed on open, locked against a second process and compacted
// by rewriting it through a synced temporary file. The log knows nothing of
// what a record means: its owners (the gate's nonce store and the provenance
// ledger) encode records and decide which are live.
//
// # File format
//
// A log is the owner's magic header (a fixed byte string, e.g. "FLHMNCE1")
// followed by frames. A record is an opaque, non-empty byte string of at
// most Options.MaxRecord bytes. Two frame layouts exist; the owner picks one
// when it opens the log, and a file is only ever read with the layout it was
// written with:
//
//	length-prefixed (Options.RecordLen nil):
//	    uint32 big-endian len(record) | uint32 big-endian CRC-32C(record) | record
//	self-delimiting (Options.RecordLen set):
//	    record | uint32 big-endian CRC-32C(record)
//
// In the self-delimiting layout the record itself says how long it is:
// RecordLen, given the first bytes of a record, returns its full length.
// Both layouts are the ones the nonce store (self-delimiting: a length byte,
// the nonce, an expiry) and the provenance ledger (length-prefixed JSON)
// wrote before this package existed, so existing files on hosts open
// unchanged and need no migration.
//
// # Append
//
// Append writes the record's frame with one positioned write at the end of
// the last intact frame and then syncs the file (fdatasync(2) on Linux,
// which also makes the new file size durable). Open has synced the log's
// directory, so the file's name is durable too. When Append returns nil the
// record survives a crash or power loss. When it returns any other error
// than ErrRecord (which writes nothing), the record may or may not be in the
// file: it was never acknowledged, and an owner must treat it as neither
// done nor undone (a nonce store, say, must not assume the nonce unused).
//
// A failed write or sync poisons the log: every later Append and Compact
// fails with ErrPoisoned until the log is closed and opened again. After a
// failed fsync the kernel may have dropped or kept the dirty pages, so what
// is on disk is unknown; reopening replays what is actually there.
//
// # Open: torn tail and corruption
//
// Open replays every intact frame, in order, through the owner's callback.
// What follows the last intact frame is either a torn tail or corruption.
// Appends are serialised and each is synced before the next starts, so a
// crash can damage at most the last frame: a torn tail is at most one
// frame's worth of bytes (an incomplete frame, or a complete final frame
// whose checksum fails), optionally followed by zero bytes (space the file
// system allocated but never wrote). Open truncates a torn tail, syncs, and
// appends after it; the torn record was never acknowledged.
//
// Anything else, namely an intact frame after damage, or non-zero bytes
// farther than one frame past the last intact frame, or a wrong magic, is
// not something a crash produces. Open then refuses with ErrCorrupt, leaving
// the file as it is, instead of dropping records the owner had
// acknowledged. A file no longer than the magic that is empty, a prefix of
// the magic or zero bytes is a log whose creation was cut short (the header
// is synced before any record is appended); Open rewrites its header.
//
// # Locking
//
// Open takes an exclusive flock(2) on the sibling file path+".lock" and
// holds it until Close; a second Open of the same path, from this or another
// process, fails with ErrLocked. The lock lives on a separate file so that
// compaction's rename cannot drop it.
//
// # Compaction
//
// Compact replaces the log with one holding only the records the owner
// passes: it writes them to path+".compact", syncs that file, renames it
// over the log and syncs the directory. A crash at any point leaves either
// the old log or the new one. If writing, syncing or renaming the temporary
// file fails, the old log is untouched and stays in use. If only the final
// directory sync fails, the rename has happened but is not known to be
// durable, and a crash could bring the old file back without the records
// appended after it; the log is then poisoned, like after a failed append
// sync. Either file holds every live record, so reopening is always safe.
//
// # File operations
//
// Every file operation goes through the FS interface (Options.FS, the
// operating system by default), so tests can fail any write, sync, rename
// or directory sync and can simulate a crash that keeps only what was
// synced.
package appendlog

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"sync"
	"time"
)

var (
	// ErrLocked: another Open of the same path (this process or another)
	// holds the log.
	ErrLocked = errors.New("appendlog: in use by another process")
	// ErrCorrupt: the file is damaged in a way a crash cannot produce.
	ErrCorrupt = errors.New("appendlog: corrupt")
	// ErrPoisoned: an earlier write or sync failed, so what is on disk is
	// unknown; the log refuses appends and compaction until reopened.
	ErrPoisoned = errors.New("appendlog: an earlier write failed; reopen the log")
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("appendlog: closed")
	// ErrRecord: the record cannot be framed (empty, longer than MaxRecord,
	// or, in the self-delimiting layout, not the length RecordLen reads
	// from it). Nothing was written; the log stays usable.
	ErrRecord = errors.New("appendlog: invalid record")
)

// DefaultMaxRecord is the largest record when Options.MaxRecord is 0.
const DefaultMaxRecord = 64 << 10

// maxMaxRecord bounds Options.MaxRecord: Open scans a damaged tail of up to
// one frame at every offset, and the tail rule relies on no run of up to
// this many zero bytes having a zero CRC-32C.
const maxMaxRecord = 1 << 20

// Options configure a log. The zero value is the length-prefixed layout on
// the operating system's file system.
type Options struct {
	// RecordLen selects the self-delimiting layout. Given the first bytes of
	// a record, it returns the record's full length, or false if those
	// bytes cannot start a record or are too few to tell. It reads file
	// content, so it must accept any bytes without panicking; it must not
	// retain its argument.
	RecordLen func(prefix []byte) (int, bool)
	// MaxRecord is the largest record in bytes (DefaultMaxRecord if 0, at
	// most 1 MiB). It bounds how much damage Open treats as a torn tail, so
	// keep it close to the owner's real maximum.
	MaxRecord int
	// FS performs the file operations; nil means the operating system.
	FS FS
	// OnSync, when set, is told how long each append's fsync took (also a
	// failed one): the latency every durable record waits for.
	OnSync func(time.Duration)
}

// Log is an open append-only log. It is safe for concurrent use.
type Log struct {
	path  string
	magic string
	fsys  FS
	fr    framing

	mu      sync.Mutex
	f       File
	lock    io.Closer
	size    int64 // end of the last intact frame: where the next append goes
	records int   // frames in the file
	err     error // ErrPoisoned or ErrClosed once set
	scratch []byte
	onSync  func(time.Duration)
}

// Open opens the log at path, creating it if needed, checks its magic,
// passes every intact record to replay (in file order; rec is valid only
// during the call), truncates a torn tail and locks the log until Close. An
// error from replay aborts Open and is returned wrapped. magic must be
// non-empty and not all zero bytes.
func Open(path, magic string, opts Options, replay func(rec []byte) error) (*Log, error) {
	if !validMagic(magic) {
		return nil, fmt.Errorf("appendlog: magic %q must be non-empty and not all zero bytes", magic)
	}
	if opts.MaxRecord < 0 || opts.MaxRecord > maxMaxRecord {
		return nil, fmt.Errorf("appendlog: MaxRecord %d is outside 0..%d", opts.MaxRecord, maxMaxRecord)
	}
	l := &Log{path: path, magic: magic, fsys: opts.FS, fr: newFraming(opts), onSync: opts.OnSync}
	if l.fsys == nil {
		l.fsys = OS{}
	}
	lock, err := l.fsys.Lock(path + ".lock")
	if err != nil {
		return nil, err
	}
	l.lock = lock
	if err := l.load(replay); err != nil {
		if l.f != nil {
			l.f.Close()
		}
		lock.Close()
		return nil, err
	}
	return l, nil
}

func validMagic(magic string) bool {
	for i := 0; i < len(magic); i++ {
		if magic[i] != 0 {
			return true
		}
	}
	return false
}

func (l *Log) load(replay func([]byte) error) error {
	f, err := l.fsys.OpenFile(l.path, os.O_RDWR|os.O_CREATE)
	if err != nil {
		return fmt.Errorf("appendlog: open: %w", err)
	}
	l.f = f
	size, err := f.Size()
	if err != nil {
		return fmt.Errorf("appendlog: %s: %w", l.path, err)
	}
	data := make([]byte, size)
	if n, err := f.ReadAt(data, 0); n != len(data) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("appendlog: read %s: %w", l.path, err)
	}
	if unwrittenHeader(data, l.magic) {
		if err := l.writeHeader(); err != nil {
			return err
		}
	} else if err := l.replay(data, replay); err != nil {
		return err
	}
	// The file may be new, or created by a process that died before it
	// synced the directory: its name must be durable before any record in
	// it is acknowledged.
	if err := l.fsys.SyncDir(filepath.Dir(l.path)); err != nil {
		return fmt.Errorf("appendlog: %s: sync directory: %w", l.path, err)
	}
	return nil
}

func (l *Log) replay(data []byte, replay func([]byte) error) error {
	if string(data[:min(len(data), len(l.magic))]) != l.magic {
		return fmt.Errorf("%w: %s: bad magic, want %q", ErrCorrupt, l.path, l.magic)
	}
	good, records, err := l.fr.replay(data, len(l.magic), replay)
	if err != nil {
		return fmt.Errorf("%s: %w", l.path, err)
	}
	if good < int64(len(data)) {
		if err := l.f.Truncate(good); err != nil {
			return fmt.Errorf("appendlog: %s: truncate torn tail: %w", l.path, err)
		}
		if err := l.f.Sync(); err != nil {
			return fmt.Errorf("appendlog: %s: sync: %w", l.path, err)
		}
	}
	l.size, l.records = good, records
	return nil
}

// unwrittenHeader reports whether data is what creating a log and crashing
// before its header was synced can leave: nothing, part of the magic, or
// zeros no longer than the magic. A longer run of zeros is not a header
// write cut short, and reading it as an empty log could forget records, so
// it is left to fail as corrupt.
func unwrittenHeader(data []byte, magic string) bool {
	if len(data) > len(magic) {
		return false
	}
	return string(data) == magic[:len(data)] || allZero(data)
}

func (l *Log) writeHeader() error {
	if err := l.f.Truncate(0); err != nil {
		return fmt.Errorf("appendlog: %s: %w", l.path, err)
	}
	if err := writeFull(l.f, []byte(l.magic), 0); err != nil {
		return fmt.Errorf("appendlog: %s: write header: %w", l.path, err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("appendlog: %s: sync: %w", l.path, err)
	}
	l.size, l.records = int64(len(l.magic)), 0
	return nil
}

// writeFull writes b at off; a short write without an error still fails.
func writeFull(f File, b []byte, off int64) error {
	n, err := f.WriteAt(b, off)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	return err
}

// Append writes rec as one frame and syncs it. It returns nil only once the
// record is on stable storage; see the package doc for what an error means.
func (l *Log) Append(rec []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	frame, err := l.fr.appendFrame(l.scratch[:0], rec)
	if err != nil {
		return err
	}
	l.scratch = frame
	if err := writeFull(l.f, frame, l.size); err != nil {
		// Part of the frame may have reached the file; appending after it
		// would put damage before intact frames. Reopening truncates it.
		l.err = fmt.Errorf("%w: %s: append: %v", ErrPoisoned, l.path, err)
		return fmt.Errorf("%w: %s: append: %w", ErrPoisoned, l.path, err)
	}
	synced := time.Now()
	err = l.f.Sync()
	if l.onSync != nil {
		l.onSync(time.Since(synced))
	}
	if err != nil {
		// The kernel may have dropped the dirty pages and will not report
		// the error again: a retried sync could succeed without the data.
		l.err = fmt.Errorf("%w: %s: sync: %v", ErrPoisoned, l.path, err)
		return fmt.Errorf("%w: %s: sync: %w", ErrPoisoned, l.path, err)
	}
	l.size += int64(len(frame))
	l.records++
	return nil
}

// Compact replaces the log's contents with the records live yields, in that
// order (a yielded slice may be reused once yield returns). On success the
// log holds exactly those records. On error the old contents stay in place
// and the log stays usable, except when the directory sync after the rename
// failed: then the log is poisoned (see the package doc).
func (l *Log) Compact(live iter.Seq[[]byte]) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	buf := []byte(l.magic)
	n := 0
	for rec := range live {
		var err error
		if buf, err = l.fr.appendFrame(buf, rec); err != nil {
			return fmt.Errorf("appendlog: %s: compact: %w", l.path, err)
		}
		n++
	}
	tmp := l.path + ".compact"
	f, err := l.fsys.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("appendlog: %s: compact: %w", l.path, err)
	}
	fail := func(step string, err error) error {
		f.Close()
		l.fsys.Remove(tmp)
		return fmt.Errorf("appendlog: %s: compact: %s: %w", l.path, step, err)
	}
	if err := writeFull(f, buf, 0); err != nil {
		return fail("write", err)
	}
	if err := f.Sync(); err != nil {
		return fail("sync", err)
	}
	if err := l.fsys.Rename(tmp, l.path); err != nil {
		return fail("rename", err)
	}
	l.f.Close()
	l.f, l.size, l.records = f, int64(len(buf)), n
	if err := l.fsys.SyncDir(filepath.Dir(l.path)); err != nil {
		// Until the rename is durable a crash may bring back the old file,
		// which lacks whatever is appended to the new one from now on.
		l.err = fmt.Errorf("%w: %s: compact: sync directory: %v", ErrPoisoned, l.path, err)
		return fmt.Errorf("%w: %s: compact: sync directory: %w", ErrPoisoned, l.path, err)
	}
	return nil
}

// Records is the number of records in the file: those replayed at Open plus
// those appended since, or those written by the last Compact plus those
// appended since. An owner can compare it with its live state to decide
// when to compact.
func (l *Log) Records() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.records
}

// Size is the length of the file in bytes.
func (l *Log) Size() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}

// Err is nil while the log accepts appends, else an error wrapping
// ErrPoisoned or ErrClosed.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Close releases the file and the lock. It is safe to call more than once;
// every later operation fails with ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	if lerr := l.lock.Close(); err == nil {
		err = lerr
	}
	l.f, l.lock = nil, nil
	l.err = fmt.Errorf("%w: %s", ErrClosed, l.path)
	return err
}
