// Package ledger is the host-local provenance ledger: a small durable file on
// the Proxmox host that records which guest instances the agent itself
// created (and whether as scratch), and which signed approvals the gate on
// this host admitted for which act.
//
// The reversibility gate reads provenance only from here and from Proxmox,
// never from the hub or from Temporal history, so a compromised control
// plane cannot relabel a customer's guest as agent-created scratch.
//
// # Instances, not VMIDs
//
// Proxmox reuses VMIDs. An entry names the instance the agent created by a
// random marker that the create wrote into the guest's description (and, for
// QEMU, the SMBIOS uuid Proxmox generated); the caller counts a live guest as
// the entry's only when it carries them. A guest that took the VMID later,
// or a scratch guest's backup restored elsewhere, is not the agent's.
//
// # File format
//
// The ledger is an appendlog (see that package for framing, durability,
// torn-tail recovery, locking and compaction) with the magic "FLHMLDG1" and
// length-prefixed frames, one JSON record each. Every append is synced
// before the call returns, so an acknowledged record survives a crash or
// power loss. Damage before the tail refuses to open (ErrCorrupt) instead of
// being dropped, because losing a "removed" record in the middle of the log
// would make a reused VMID look agent-created. A second process opening the
// same ledger fails with ErrLocked.
//
// # Create is two-phase
//
// BeginCreate is fsync'd before the create request is sent to Proxmox and
// ConfirmCreate after the create task succeeded. A pending (begun, not
// confirmed) record never counts as agent provenance for the gate; it only
// lets a retry of the same create recognise, by its marker, a guest that the
// crashed attempt created.
//
// # Admissions
//
// The ledger also keeps admissions: "the gate admitted this signed approval
// for this act on this guest instance". An admission is keyed by the
// approval's signed bytes and bound to the action and instance; it moves
// Admitted → Started (before the act's first mutating request) → Done. A
// retry of the same act leans on it instead of being refused as a replay;
// nothing else can.
//
// Before the gate is asked to spend an approval's nonce the executor writes
// an intent (Intend, state Intended): the approval's key, act and instance,
// written while the nonce is unspent. The gate spends the nonce, then Admit
// promotes the intent. A crash between the two leaves a spent nonce and an
// intent; the retry of that act, and only of that act on that instance,
// finds both and completes the admission (see the activities package).
// Records written by earlier versions (keyed by workflow
// run) replay into entries and admissions that match nothing.
//
// Compaction (rewriting the log with only live state, through a synced
// temporary file and a rename) happens when the ledger is opened; it drops
// admissions whose op expired, started ones StartedRetention later, and
// intents IntentRetention after they were written.
package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/felhom/felhom-agent/internal/appendlog"
)

const (
	magic = "FLHMLDG1"
	// compaction is considered on open once the log holds this many records
	// and more than half of them are superseded.
	compactMinRecords = 256
)

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

// Entry is what the ledger knows about the guest instance the agent created
// under one VMID.
type Entry struct {
	VMID int    `json:"vmid"`
	Kind string `json:"kind"` // "qemu" or "lxc"
	// Instance is the random marker the agent wrote into the guest's
	// description when it created it. A guest is this entry's only if it
	// carries the marker: VMIDs are reused, markers are not.
	Instance string `json:"instance"`
	// SMBIOS is the SMBIOS uuid Proxmox generated for a QEMU guest, read
	// after the create; "" for containers.
	SMBIOS string `json:"smbios,omitempty"`
	// Volumes are the volume ids the create allocated for this instance.
	Volumes  []string `json:"volumes,omitempty"`
	Workflow string   `json:"workflow,omitempty"` // for the record only
	Scratch  bool     `json:"scratch"`
	State    State    `json:"state"`
	// BegunAt is when the create was recorded (before the request was
	// sent); CreatedAt when it was confirmed. Both on this host's clock.
	BegunAt   time.Time `json:"begun_at"`
	CreatedAt time.Time `json:"created_at,omitempty"`
	// HandedOver is set once the guest was started by the agent: from then
	// on it may hold its user's data and is no create to roll back.
	HandedOver bool `json:"handed_over,omitempty"`
}

type op string

const (
	opBegin    op = "create_begin"
	opConfirm  op = "create_confirm"
	opAbort    op = "create_abort"
	opHandOver op = "handed_over"
	opRemove   op = "removed"
	opAdmit    op = "admitted"
	opStart    op = "act_started"
	opDone     op = "act_done"
	opIntend   op = "admit_intended"
	opDrop     op = "intent_dropped"
)

// record is one line of the log. Records written by earlier versions carry
// a "run" and no instance; they replay into entries that match no live
// guest, which fails safe (the guest counts as customer data).
type record struct {
	Op        op         `json:"op"`
	VMID      int        `json:"vmid,omitempty"`
	Kind      string     `json:"kind,omitempty"`
	Instance  string     `json:"instance,omitempty"`
	SMBIOS    string     `json:"smbios,omitempty"`
	Volumes   []string   `json:"volumes,omitempty"`
	Workflow  string     `json:"workflow,omitempty"`
	Scratch   bool       `json:"scratch,omitempty"`
	Key       string     `json:"key,omitempty"`
	Failed    bool       `json:"failed,omitempty"`
	Admission *Admission `json:"admission,omitempty"`
	At        time.Time  `json:"at"`
}

// AdmissionState is where an admitted approval stands.
type AdmissionState string

const (
	// Intended: the executor is about to ask the gate to admit the approval
	// (see Intend); the gate may or may not have spent its nonce. It grants
	// nothing by itself and lapses IntentRetention after it was written.
	Intended AdmissionState = "intended"
	// Admitted: the gate accepted the approval (its nonce is spent) and no
	// request of the act has been sent yet. It lapses at ExpiresAt.
	Admitted AdmissionState = "admitted"
	// Started: the act's first mutating request is about to be or has been
	// sent. Retries of that same act may finish it, whatever the time.
	Started AdmissionState = "started"
	// Done: the act completed, or failed for good after it started. The
	// approval authorises nothing more.
	Done AdmissionState = "done"
)

// Admission records that the gate on this host accepted one signed approval
// for one act on one guest instance. It is keyed by the approval itself
// (never by workflow, run or activity ids, which the Temporal server
// supplies) and bound to the act: a retry may lean on it only for the same
// action on the same instance.
type Admission struct {
	Key string `json:"key"` // identifies the approval: a digest of its signed bytes
	// Action identifies the gated action exactly (a digest of its canonical
	// form), Instance the guest instance it was admitted on.
	Action    string         `json:"action"`
	VMID      int            `json:"vmid,omitempty"`
	Instance  string         `json:"instance,omitempty"`
	ExpiresAt time.Time      `json:"expires_at"` // the signed op's expires_at
	State     AdmissionState `json:"state"`
	At        time.Time      `json:"at"`                   // admitted, this host's clock
	StartedAt time.Time      `json:"started_at,omitempty"` // first mutating request, this host's clock
	// Failed: the act ended Done because it failed for good, not because
	// it completed.
	Failed bool `json:"failed,omitempty"`
}

// clock is the ledger's time source; tests replace it.
var clock = time.Now

// StartedRetention is how long a started act's admission is kept past its
// op's expiry, so that a retry of an act under way still finds it.
const StartedRetention = 7 * 24 * time.Hour

// Ledger is an open provenance ledger. It is safe for concurrent use.
type Ledger struct {
	mu         sync.Mutex
	log        *appendlog.Log
	entries    map[int]Entry
	admissions map[string]Admission
	now        func() time.Time
}

// Open opens (creating it and its directory if needed) the ledger at path,
// replays it and takes an exclusive lock that lasts until Close.
func Open(path string) (*Ledger, error) {
	return open(path, nil, nil)
}

// OpenObserved is Open telling onSync how long each record's fsync took.
func OpenObserved(path string, onSync func(time.Duration)) (*Ledger, error) {
	return open(path, nil, onSync)
}

// open opens the ledger on fsys (the operating system if nil), so tests can
// make its file operations fail.
func open(path string, fsys appendlog.FS, onSync func(time.Duration)) (*Ledger, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("ledger: create directory: %w", err)
	}
	l := &Ledger{entries: map[int]Entry{}, admissions: map[string]Admission{}, now: clock}
	log, err := appendlog.Open(path, magic, appendlog.Options{FS: fsys, OnSync: onSync}, func(rec []byte) error {
		var r record
		if err := json.Unmarshal(rec, &r); err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		l.apply(r)
		return nil
	})
	if err != nil {
		return nil, ledgerError(err)
	}
	l.log = log
	if log.Records() >= compactMinRecords && log.Records() > 2*(len(l.entries)+l.liveAdmissions()) {
		// A failed compaction leaves the old log intact and usable.
		if err := l.compactLocked(); err != nil && l.log.Err() != nil {
			l.log.Close()
			return nil, err
		}
	}
	return l, nil
}

// ledgerError adds the ledger's own sentinel to an appendlog error.
func ledgerError(err error) error {
	for _, m := range []struct{ from, to error }{
		{appendlog.ErrLocked, ErrLocked},
		{appendlog.ErrCorrupt, ErrCorrupt},
		{appendlog.ErrPoisoned, ErrClosed},
		{appendlog.ErrClosed, ErrClosed},
	} {
		if errors.Is(err, m.from) {
			return fmt.Errorf("%w: %w", m.to, err)
		}
	}
	return fmt.Errorf("ledger: %w", err)
}

func (l *Ledger) liveAdmissions() int {
	n, now := 0, l.now()
	for _, ad := range l.admissions {
		if ad.live(now) {
			n++
		}
	}
	return n
}

func (l *Ledger) apply(r record) {
	switch r.Op {
	case opBegin:
		l.entries[r.VMID] = Entry{VMID: r.VMID, Kind: r.Kind, Instance: r.Instance, Workflow: r.Workflow,
			Scratch: r.Scratch, State: StatePending, BegunAt: r.At}
	case opConfirm:
		if e, ok := l.entries[r.VMID]; ok && e.Instance == r.Instance {
			e.State, e.CreatedAt, e.SMBIOS, e.Volumes = StateCreated, r.At, r.SMBIOS, r.Volumes
			l.entries[r.VMID] = e
		}
	case opAbort:
		if e, ok := l.entries[r.VMID]; ok && e.Instance == r.Instance && e.State == StatePending {
			delete(l.entries, r.VMID)
		}
	case opHandOver:
		if e, ok := l.entries[r.VMID]; ok && e.Instance == r.Instance {
			e.HandedOver = true
			l.entries[r.VMID] = e
		}
	case opRemove:
		delete(l.entries, r.VMID)
	case opAdmit:
		if r.Admission != nil {
			l.admissions[r.Admission.Key] = *r.Admission
		}
	case opStart:
		if ad, ok := l.admissions[r.Key]; ok && ad.State == Admitted {
			ad.State, ad.StartedAt = Started, r.At
			l.admissions[r.Key] = ad
		}
	case opIntend:
		if r.Admission != nil {
			if _, ok := l.admissions[r.Admission.Key]; !ok {
				l.admissions[r.Admission.Key] = *r.Admission
			}
		}
	case opDrop:
		if ad, ok := l.admissions[r.Key]; ok && ad.State == Intended {
			delete(l.admissions, r.Key)
		}
	case opDone:
		if ad, ok := l.admissions[r.Key]; ok && ad.State != Intended {
			ad.State, ad.Failed = Done, r.Failed
			l.admissions[r.Key] = ad
		}
	}
}

// append syncs one record to the log, then applies it in memory. A failed
// append leaves the in-memory state unchanged; after a failed write or sync
// the log refuses everything until the ledger is reopened (which replays
// what actually reached the disk).
func (l *Ledger) append(r record) error {
	if err := l.log.Err(); err != nil {
		return ledgerError(err)
	}
	r.At = l.now().UTC()
	payload, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("ledger: encode: %w", err)
	}
	if err := l.log.Append(payload); err != nil {
		return ledgerError(err)
	}
	l.apply(r)
	return nil
}

// BeginCreate durably records that the agent is about to create e.VMID as
// the instance e.Instance. It must return before the create request is sent.
// It replaces whatever the ledger held for that VMID: the caller has seen
// that no guest exists there.
func (l *Ledger) BeginCreate(e Entry) error {
	if e.VMID <= 0 || e.Instance == "" || e.Kind == "" {
		return fmt.Errorf("ledger: begin create: vmid, kind and instance are required")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.append(record{Op: opBegin, VMID: e.VMID, Kind: e.Kind, Instance: e.Instance, Workflow: e.Workflow, Scratch: e.Scratch})
}

// ConfirmCreate durably records that the create of instance under vmid
// succeeded, with the identity and volumes Proxmox gave it.
func (l *Ledger) ConfirmCreate(vmid int, instance, smbios string, volumes []string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[vmid]
	if !ok || e.Instance != instance {
		return fmt.Errorf("ledger: confirm create of %d: no begin record for this instance", vmid)
	}
	if e.State == StateCreated {
		return nil
	}
	return l.append(record{Op: opConfirm, VMID: vmid, Instance: instance, SMBIOS: smbios, Volumes: volumes})
}

// AbortCreate drops the pending create of instance under vmid (the create
// certainly did not happen, so a guest under that VMID is not the agent's).
func (l *Ledger) AbortCreate(vmid int, instance string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[vmid]
	if !ok || e.Instance != instance || e.State != StatePending {
		return nil
	}
	return l.append(record{Op: opAbort, VMID: vmid, Instance: instance})
}

// HandOver durably records that instance under vmid was started: it is no
// longer a fresh create that a compensating rollback may undo unsigned.
func (l *Ledger) HandOver(vmid int, instance string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[vmid]
	if !ok || e.Instance != instance || e.HandedOver {
		return nil
	}
	return l.append(record{Op: opHandOver, VMID: vmid, Instance: instance})
}

// Remove durably records that the guest vmid no longer exists. Removing an
// unknown VMID is a no-op.
func (l *Ledger) Remove(vmid int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.entries[vmid]; !ok {
		return nil
	}
	return l.append(record{Op: opRemove, VMID: vmid})
}

// Entry returns the ledger entry for vmid, pending or created. It says what
// the agent created under that VMID, not that the guest there now is it:
// the caller compares Instance with the live guest.
func (l *Ledger) Entry(vmid int) (Entry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[vmid]
	e.Volumes = slices.Clone(e.Volumes)
	return e, ok
}

// Entries returns a copy of all entries.
func (l *Ledger) Entries() []Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Entry, 0, len(l.entries))
	for _, e := range l.entries {
		e.Volumes = slices.Clone(e.Volumes)
		out = append(out, e)
	}
	return out
}

// ErrAdmissionConflict means an approval was admitted before for another
// act or another guest instance.
var ErrAdmissionConflict = errors.New("ledger: approval already admitted for another act")

// Admit durably records ad (state Admitted, admitted now). Admitting the
// same approval again for the same act and instance is a no-op; for any
// other act it fails with ErrAdmissionConflict.
func (l *Ledger) Admit(ad Admission) error {
	if ad.Key == "" || ad.Action == "" || ad.ExpiresAt.IsZero() {
		return fmt.Errorf("ledger: admit: key, action and expiry are required")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, ok, err := l.heldLocked(ad); err != nil || (ok && prev.State != Intended) {
		return err
	}
	ad.State, ad.At, ad.StartedAt = Admitted, l.now().UTC(), time.Time{}
	return l.append(record{Op: opAdmit, Admission: &ad})
}

// heldLocked returns what the ledger holds for ad.Key, and
// ErrAdmissionConflict when that is bound to another act or instance.
func (l *Ledger) heldLocked(ad Admission) (Admission, bool, error) {
	prev, ok := l.admissions[ad.Key]
	if ok && (prev.Action != ad.Action || prev.Instance != ad.Instance || prev.VMID != ad.VMID) {
		return prev, ok, ErrAdmissionConflict
	}
	return prev, ok, nil
}

// IntentRetention is how long an intent (state Intended) survives
// compaction: the longest validity a host may accept for an op
// (gate.MaxValidityLimit, 7 days), so that a retry within the op's validity
// still finds it.
const IntentRetention = 7 * 24 * time.Hour

// Intend durably records that the executor is about to ask the gate to
// admit the approval ad.Key for ad.Action on ad.Instance: the intent (state
// Intended). The caller writes it only while the approval's nonce is
// unspent and before the gate may spend it, so that a retry finding the
// nonce spent and this intent knows the spend was this approval's, for this
// act. Admit promotes it; Drop removes it. Intending an approval the ledger
// holds already is a no-op when the binding matches, ErrAdmissionConflict
// otherwise.
func (l *Ledger) Intend(ad Admission) error {
	if ad.Key == "" || ad.Action == "" {
		return fmt.Errorf("ledger: intend: key and action are required")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok, err := l.heldLocked(ad); err != nil || ok {
		return err
	}
	ad.State, ad.At, ad.StartedAt = Intended, l.now().UTC(), time.Time{}
	ad.ExpiresAt = ad.At.Add(IntentRetention)
	return l.append(record{Op: opIntend, Admission: &ad})
}

// Drop durably removes the intent under key: the gate refused the approval
// without spending its nonce, or the act turned out to need no admission.
// Anything but an intent is left alone.
func (l *Ledger) Drop(key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ad, ok := l.admissions[key]; !ok || ad.State != Intended {
		return nil
	}
	return l.append(record{Op: opDrop, Key: key})
}

// Admission returns the admission of the approval key, if any.
func (l *Ledger) Admission(key string) (Admission, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ad, ok := l.admissions[key]
	return ad, ok
}

// StartAct durably marks the admission under key Started: its act's first
// mutating request goes out next. Starting a started act is a no-op; a done
// or unknown one is an error.
func (l *Ledger) StartAct(key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	ad, ok := l.admissions[key]
	switch {
	case !ok:
		return fmt.Errorf("ledger: start act: no admission %.12s", key)
	case ad.State == Started:
		return nil
	case ad.State == Done:
		return fmt.Errorf("ledger: start act: admission %.12s is used up", key)
	case ad.State == Intended:
		return fmt.Errorf("ledger: start act: approval %.12s is not admitted", key)
	}
	return l.append(record{Op: opStart, Key: key})
}

// FinishAct durably marks the admission under key Done: the act completed,
// or (failed) it failed for good after it started.
func (l *Ledger) FinishAct(key string, failed bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	ad, ok := l.admissions[key]
	if !ok || ad.State == Done || ad.State == Intended {
		return nil
	}
	return l.append(record{Op: opDone, Key: key, Failed: failed})
}

// live reports whether ad must survive compaction at now: an admission is
// useless once its op expired (the verifier refuses the op and the nonce
// store still remembers it), except a started act, which a retry may still
// finish for StartedRetention more.
func (ad Admission) live(now time.Time) bool {
	if ad.State == Started {
		return now.Before(ad.ExpiresAt.Add(StartedRetention))
	}
	return now.Before(ad.ExpiresAt)
}

// compactLocked rewrites the log with the live state only. The records are
// encoded first, so an encoding error never touches the file.
func (l *Ledger) compactLocked() error {
	var recs [][]byte
	add := func(r record) error {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("ledger: compact: %w", err)
		}
		recs = append(recs, b)
		return nil
	}
	now := l.now()
	for _, e := range l.entries {
		rs := []record{{Op: opBegin, VMID: e.VMID, Kind: e.Kind, Instance: e.Instance, Workflow: e.Workflow, Scratch: e.Scratch, At: e.BegunAt}}
		if e.State == StateCreated {
			rs = append(rs, record{Op: opConfirm, VMID: e.VMID, Instance: e.Instance, SMBIOS: e.SMBIOS, Volumes: e.Volumes, At: e.CreatedAt})
		}
		if e.HandedOver {
			rs = append(rs, record{Op: opHandOver, VMID: e.VMID, Instance: e.Instance, At: e.CreatedAt})
		}
		for _, r := range rs {
			if err := add(r); err != nil {
				return err
			}
		}
	}
	for key, ad := range l.admissions {
		if !ad.live(now) {
			continue
		}
		state := ad.State
		if state == Intended {
			if err := add(record{Op: opIntend, Admission: &ad, At: ad.At}); err != nil {
				return err
			}
			continue
		}
		ad.State = Admitted
		rs := []record{{Op: opAdmit, Admission: &ad, At: ad.At}}
		switch state {
		case Started:
			rs = append(rs, record{Op: opStart, Key: key, At: ad.StartedAt})
		case Done:
			rs = append(rs, record{Op: opDone, Key: key, Failed: ad.Failed, At: ad.At})
		}
		for _, r := range rs {
			if err := add(r); err != nil {
				return err
			}
		}
	}
	if err := l.log.Compact(slices.Values(recs)); err != nil {
		return ledgerError(err)
	}
	for key, ad := range l.admissions {
		if !ad.live(now) {
			delete(l.admissions, key)
		}
	}
	return nil
}

// Close releases the file and the lock.
func (l *Ledger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.log.Close()
}
