// Package ledger is the host-local provenance ledger: a small durable file on
// the Proxmox host that records which guests the agent itself created (in
// which workflow run, and whether as scratch) and when they were destroyed.
//
// The reversibility gate reads provenance only from here, never from the hub
// or from Temporal history, so a compromised control plane cannot relabel a
// customer's guest as agent-created scratch.
//
// # File format
//
// The file starts with an 8-byte magic header and is followed by records:
//
//	uint32 big-endian payload length | uint32 big-endian CRC-32C of payload | JSON payload
//
// Every append is written with one write(2) and fsync'd before the call
// returns, so a record that was acknowledged survives a crash or power loss.
// On open the log is replayed; a torn tail (an append cut short by a crash:
// an incomplete record, a final record whose checksum fails, or zero-filled
// space past the last record) is truncated away. Damage anywhere else is
// reported as ErrCorrupt instead of being silently dropped, because losing a
// "removed" record in the middle of the log would make a reused VMID look
// agent-created.
//
// A second process opening the same ledger fails with ErrLocked (flock on a
// sibling ".lock" file, which survives compaction's rename).
//
// # Create is two-phase
//
// BeginCreate is fsync'd before the create request is sent to Proxmox and
// ConfirmCreate after the create task succeeded. A pending (begun, not
// confirmed) record never counts as agent provenance for the gate: if the
// agent crashed before its POST reached Proxmox and somebody else then created
// that VMID, the guest is theirs and must stay protected. Only the create
// activity of the same workflow run may resolve a pending record (see
// package activities).
//
// # Admissions
//
// The ledger also keeps admissions: "the gate admitted this signed approval
// for this activity" (Admit), until the step is over (Spend). They let a
// retry of a destructive step that crashed after the gate spent the
// approval's nonce proceed instead of being refused as a replay.
//
// Compaction (rewriting the log with only live state, through a synced
// temporary file and a rename) happens when the ledger is opened.
package ledger

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
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

const (
	magic         = "FLHMLDG1"
	headerSize    = 8
	maxRecordSize = 64 << 10
	// compaction is considered on open once the log holds this many records
	// and more than half of them are superseded.
	compactMinRecords = 256
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var (
	// ErrLocked means another process holds the ledger open.
	ErrLocked = errors.New("ledger: in use by another process")
	// ErrCorrupt means the log is damaged somewhere other than its tail.
	ErrCorrupt = errors.New("ledger: corrupt")
	// ErrClosed is returned by operations on a closed ledger.
	ErrClosed = errors.New("ledger: closed")
)

// State is the lifecycle state of a VMID in the ledger.
type State string

const (
	// StatePending: the agent recorded its intent to create the guest and may
	// or may not have sent the create request.
	StatePending State = "pending"
	// StateCreated: the agent's create task for this guest succeeded.
	StateCreated State = "created"
)

// Entry is what the ledger knows about one VMID.
type Entry struct {
	VMID     int       `json:"vmid"`
	Kind     string    `json:"kind"` // "qemu" or "lxc"
	Workflow string    `json:"workflow,omitempty"`
	Run      string    `json:"run"`
	Scratch  bool      `json:"scratch"`
	State    State     `json:"state"`
	At       time.Time `json:"at"`
}

// Provenance is the gate-facing view of an entry; its fields mirror
// gate.Provenance so the caller converts it field by field.
type Provenance struct {
	AgentCreated bool
	CreatedByRun string
	Scratch      bool
}

type op string

const (
	opBegin   op = "create_begin"
	opConfirm op = "create_confirm"
	opAbort   op = "create_abort"
	opRemove  op = "removed"
	opAdmit   op = "admitted"
	opSpent   op = "admission_spent"
)

type record struct {
	Op       op        `json:"op"`
	VMID     int       `json:"vmid"`
	Kind     string    `json:"kind,omitempty"`
	Workflow string    `json:"workflow,omitempty"`
	Run      string    `json:"run"`
	Scratch  bool      `json:"scratch,omitempty"`
	Key      string    `json:"key,omitempty"`
	At       time.Time `json:"at"`
}

// Admission records that the gate admitted a signed approval for one
// activity, so that a retry of that same activity after a crash can proceed
// although the approval's nonce is already spent.
type Admission struct {
	Key  string    `json:"key"`
	VMID int       `json:"vmid"`
	Run  string    `json:"run"`
	At   time.Time `json:"at"`
}

// Ledger is an open provenance ledger. It is safe for concurrent use.
type Ledger struct {
	path string

	mu         sync.Mutex
	f          *os.File
	lock       *os.File
	entries    map[int]Entry
	admissions map[string]Admission
	records    int // records in the file, for compaction accounting
	now        func() time.Time
}

// Open opens (creating it and its directory if needed) the ledger at path,
// replays it and takes an exclusive lock that lasts until Close.
func Open(path string) (*Ledger, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("ledger: create directory: %w", err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ledger: open lock file: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		return nil, fmt.Errorf("ledger: lock %s: %w", path, err)
	}
	l := &Ledger{path: path, lock: lock, entries: map[int]Entry{}, admissions: map[string]Admission{}, now: time.Now}
	if err := l.load(); err != nil {
		l.f = nil
		lock.Close()
		return nil, err
	}
	return l, nil
}

func (l *Ledger) load() error {
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("ledger: stat: %w", err)
	}
	if fi.Size() == 0 {
		if _, err := f.Write([]byte(magic)); err != nil {
			f.Close()
			return fmt.Errorf("ledger: write header: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("ledger: sync header: %w", err)
		}
		if err := syncDir(filepath.Dir(l.path)); err != nil {
			f.Close()
			return err
		}
	}
	good, err := l.replay(f)
	if err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(good); err != nil {
		f.Close()
		return fmt.Errorf("ledger: truncate torn tail: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("ledger: sync: %w", err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("ledger: seek: %w", err)
	}
	l.f = f
	if l.records >= compactMinRecords && l.records > 2*(len(l.entries)+len(l.admissions)) {
		return l.compactLocked()
	}
	return nil
}

// replay applies every intact record and returns the offset just past the last
// one, i.e. where the torn tail (if any) begins.
func (l *Ledger) replay(f *os.File) (int64, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	data, err := io.ReadAll(bufio.NewReader(f))
	if err != nil {
		return 0, fmt.Errorf("ledger: read: %w", err)
	}
	if len(data) < headerSize {
		// A crash while writing the header of a brand-new file.
		if bytes.HasPrefix([]byte(magic), data) {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return 0, err
			}
			if err := f.Truncate(0); err != nil {
				return 0, err
			}
			if _, err := f.Write([]byte(magic)); err != nil {
				return 0, err
			}
			return headerSize, nil
		}
		return 0, fmt.Errorf("%w: %s: bad header", ErrCorrupt, l.path)
	}
	if string(data[:headerSize]) != magic {
		return 0, fmt.Errorf("%w: %s: not a ledger file (bad magic)", ErrCorrupt, l.path)
	}
	off := headerSize
	for off < len(data) {
		rest := data[off:]
		if len(rest) < 8 {
			return int64(off), nil // torn: incomplete frame header
		}
		n := int(binary.BigEndian.Uint32(rest[0:4]))
		sum := binary.BigEndian.Uint32(rest[4:8])
		if n == 0 || n > maxRecordSize {
			if allZero(rest) {
				return int64(off), nil // torn: space allocated, never written
			}
			return 0, fmt.Errorf("%w: %s: bad record length %d at offset %d", ErrCorrupt, l.path, n, off)
		}
		if len(rest) < 8+n {
			return int64(off), nil // torn: incomplete payload
		}
		payload := rest[8 : 8+n]
		if crc32.Checksum(payload, crcTable) != sum {
			if len(rest) == 8+n || allZero(payload) {
				return int64(off), nil // torn: the final append did not fully reach the disk
			}
			return 0, fmt.Errorf("%w: %s: checksum mismatch at offset %d", ErrCorrupt, l.path, off)
		}
		var r record
		if err := json.Unmarshal(payload, &r); err != nil {
			return 0, fmt.Errorf("%w: %s: record at offset %d: %v", ErrCorrupt, l.path, off, err)
		}
		l.apply(r)
		l.records++
		off += 8 + n
	}
	return int64(off), nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (l *Ledger) apply(r record) {
	switch r.Op {
	case opBegin:
		l.entries[r.VMID] = Entry{VMID: r.VMID, Kind: r.Kind, Workflow: r.Workflow, Run: r.Run,
			Scratch: r.Scratch, State: StatePending, At: r.At}
	case opConfirm:
		if e, ok := l.entries[r.VMID]; ok && e.Run == r.Run {
			e.State = StateCreated
			e.At = r.At
			l.entries[r.VMID] = e
		}
	case opAbort:
		if e, ok := l.entries[r.VMID]; ok && e.Run == r.Run && e.State == StatePending {
			delete(l.entries, r.VMID)
		}
	case opRemove:
		delete(l.entries, r.VMID)
	case opAdmit:
		l.admissions[r.Key] = Admission{Key: r.Key, VMID: r.VMID, Run: r.Run, At: r.At}
	case opSpent:
		delete(l.admissions, r.Key)
	}
}

func encode(r record) ([]byte, error) {
	payload, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(payload) > maxRecordSize {
		return nil, fmt.Errorf("ledger: record too large (%d bytes)", len(payload))
	}
	buf := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint32(buf[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(buf[4:8], crc32.Checksum(payload, crcTable))
	copy(buf[8:], payload)
	return buf, nil
}

// append writes and fsyncs one record, then applies it in memory. A failed
// write or sync leaves the in-memory state unchanged and poisons the handle:
// after an fsync error the page cache state is unknown, so the ledger must be
// reopened (which replays what actually reached the disk).
func (l *Ledger) append(r record) error {
	if l.f == nil {
		return ErrClosed
	}
	r.At = l.now().UTC()
	buf, err := encode(r)
	if err != nil {
		return err
	}
	if _, err := l.f.Write(buf); err != nil {
		l.poison()
		return fmt.Errorf("ledger: append: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		l.poison()
		return fmt.Errorf("ledger: fsync: %w", err)
	}
	l.apply(r)
	l.records++
	return nil
}

func (l *Ledger) poison() {
	l.f.Close()
	l.f = nil
}

// BeginCreate durably records that workflow run e.Run is about to create the
// guest e.VMID. It must return before the create request is sent.
func (l *Ledger) BeginCreate(e Entry) error {
	if e.VMID <= 0 || e.Run == "" {
		return fmt.Errorf("ledger: begin create: vmid and run are required")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.append(record{Op: opBegin, VMID: e.VMID, Kind: e.Kind, Workflow: e.Workflow, Run: e.Run, Scratch: e.Scratch})
}

// ConfirmCreate durably records that run's create of vmid succeeded.
func (l *Ledger) ConfirmCreate(vmid int, run string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[vmid]
	if !ok || e.Run != run {
		return fmt.Errorf("ledger: confirm create of %d by run %q: no matching begin record", vmid, run)
	}
	if e.State == StateCreated {
		return nil
	}
	return l.append(record{Op: opConfirm, VMID: vmid, Run: run})
}

// AbortCreate drops run's pending create of vmid (the create was refused, so
// the guest under that VMID, if any, is not the agent's).
func (l *Ledger) AbortCreate(vmid int, run string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[vmid]
	if !ok || e.Run != run || e.State != StatePending {
		return nil
	}
	return l.append(record{Op: opAbort, VMID: vmid, Run: run})
}

// Remove durably records that the guest vmid no longer exists (destroyed by
// run). Removing an unknown VMID is a no-op.
func (l *Ledger) Remove(vmid int, run string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.entries[vmid]; !ok {
		return nil
	}
	return l.append(record{Op: opRemove, VMID: vmid, Run: run})
}

// Entry returns the raw ledger entry for vmid, pending or created.
func (l *Ledger) Entry(vmid int) (Entry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[vmid]
	return e, ok
}

// Lookup returns the gate-facing provenance of vmid. Only a confirmed create
// counts as agent-created; a pending one does not.
func (l *Ledger) Lookup(vmid int) Provenance {
	e, ok := l.Entry(vmid)
	if !ok || e.State != StateCreated {
		return Provenance{}
	}
	return Provenance{AgentCreated: true, CreatedByRun: e.Run, Scratch: e.Scratch}
}

// Admit durably records an admission under key (see Admission).
func (l *Ledger) Admit(key string, vmid int, run string) error {
	if key == "" {
		return fmt.Errorf("ledger: admit: empty key")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.admissions[key]; ok {
		return nil
	}
	return l.append(record{Op: opAdmit, Key: key, VMID: vmid, Run: run})
}

// Admitted reports whether key holds an admission that is not yet spent.
func (l *Ledger) Admitted(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.admissions[key]
	return ok
}

// Spend durably marks the admission under key as used up: the step it
// admitted has completed and no retry may lean on it any more.
func (l *Ledger) Spend(key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.admissions[key]; !ok {
		return nil
	}
	return l.append(record{Op: opSpent, Key: key})
}

// Entries returns a copy of all entries.
func (l *Ledger) Entries() []Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Entry, 0, len(l.entries))
	for _, e := range l.entries {
		out = append(out, e)
	}
	return out
}

// compactLocked rewrites the log with one record pair per live entry, via a
// synced temporary file renamed over the old one.
func (l *Ledger) compactLocked() error {
	tmp := l.path + ".compact"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("ledger: compact: %w", err)
	}
	var buf bytes.Buffer
	buf.WriteString(magic)
	n := 0
	for _, e := range l.entries {
		recs := []record{{Op: opBegin, VMID: e.VMID, Kind: e.Kind, Workflow: e.Workflow, Run: e.Run, Scratch: e.Scratch, At: e.At}}
		if e.State == StateCreated {
			recs = append(recs, record{Op: opConfirm, VMID: e.VMID, Run: e.Run, At: e.At})
		}
		for _, r := range recs {
			b, err := encode(r)
			if err != nil {
				f.Close()
				return err
			}
			buf.Write(b)
			n++
		}
	}
	for _, ad := range l.admissions {
		b, err := encode(record{Op: opAdmit, Key: ad.Key, VMID: ad.VMID, Run: ad.Run, At: ad.At})
		if err != nil {
			f.Close()
			return err
		}
		buf.Write(b)
		n++
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("ledger: compact write: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("ledger: compact sync: %w", err)
	}
	if err := os.Rename(tmp, l.path); err != nil {
		f.Close()
		return fmt.Errorf("ledger: compact rename: %w", err)
	}
	if err := syncDir(filepath.Dir(l.path)); err != nil {
		f.Close()
		return err
	}
	l.f.Close()
	l.f = f
	l.records = n
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("ledger: open dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("ledger: sync dir: %w", err)
	}
	return nil
}

// Close releases the file and the lock.
func (l *Ledger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var err error
	if l.f != nil {
		err = l.f.Close()
		l.f = nil
	}
	if l.lock != nil {
		if cerr := l.lock.Close(); err == nil {
			err = cerr
		}
		l.lock = nil
	}
	return err
}
