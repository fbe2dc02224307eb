package ledger

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/appendlog/appendlogtest"
)

func openT(t *testing.T, path string) *Ledger {
	t.Helper()
	l, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

// created reports whether the ledger holds a confirmed create under vmid.
func created(l *Ledger, vmid int) bool {
	e, ok := l.Entry(vmid)
	return ok && e.State == StateCreated
}

func TestLifecycle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "var", "lib", "felhom-agent", "prov.ledger")
	l := openT(t, path)
	l.now = func() time.Time { return time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC) }

	if err := l.BeginCreate(Entry{VMID: 101, Kind: "qemu", Instance: "i-a", Scratch: true}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Entry{{VMID: 104, Kind: "qemu"}, {VMID: 0, Kind: "qemu", Instance: "i"}, {VMID: 104, Instance: "i"}} {
		if err := l.BeginCreate(bad); err == nil {
			t.Fatalf("begin of %+v accepted: vmid, kind and instance are required", bad)
		}
	}
	if created(l, 101) {
		t.Fatal("pending create counts as created")
	}
	if err := l.ConfirmCreate(101, "i-b", "", nil); err == nil {
		t.Fatal("confirm of another instance must fail")
	}
	if err := l.ConfirmCreate(101, "i-a", "uuid-1", []string{"local-lvm:vm-101-disk-0"}); err != nil {
		t.Fatal(err)
	}
	if err := l.HandOver(101, "i-other"); err != nil {
		t.Fatal(err)
	}
	if e, _ := l.Entry(101); e.HandedOver {
		t.Fatal("hand-over of another instance marked this one")
	}
	if err := l.HandOver(101, "i-a"); err != nil {
		t.Fatal(err)
	}
	want := Entry{VMID: 101, Kind: "qemu", Instance: "i-a", SMBIOS: "uuid-1", Volumes: []string{"local-lvm:vm-101-disk-0"},
		Scratch: true, State: StateCreated, BegunAt: l.now(), CreatedAt: l.now(), HandedOver: true}
	if got, _ := l.Entry(101); !reflect.DeepEqual(got, want) {
		t.Fatalf("Entry = %+v, want %+v", got, want)
	}

	if err := l.BeginCreate(Entry{VMID: 102, Kind: "lxc", Instance: "i-c"}); err != nil {
		t.Fatal(err)
	}
	if err := l.AbortCreate(102, "i-other"); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Entry(102); !ok {
		t.Fatal("abort of another instance dropped the pending create")
	}
	if err := l.AbortCreate(102, "i-c"); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Entry(102); ok {
		t.Fatal("aborted create still present")
	}
	if err := l.BeginCreate(Entry{VMID: 103, Kind: "qemu", Instance: "i-d"}); err != nil {
		t.Fatal(err)
	}
	if err := l.ConfirmCreate(103, "i-d", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := l.Remove(103); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openT(t, path)
	defer l.Close()
	if got, _ := l.Entry(101); !reflect.DeepEqual(got, want) {
		t.Fatalf("after reopen Entry(101) = %+v, want %+v", got, want)
	}
	if _, ok := l.Entry(102); ok {
		t.Fatal("after reopen: aborted 102 present")
	}
	if _, ok := l.Entry(103); ok {
		t.Fatal("after reopen: removed 103 still present")
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prov.ledger")
	l := openT(t, path)
	if _, err := Open(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open err = %v, want ErrLocked", err)
	}
	l.Close()
	l2 := openT(t, path)
	l2.Close()
}

// The framing, torn tails, corruption and crash-safety are appendlog's, and
// tested there; these tests are the ledger's own.

func TestCorruptRecordIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prov.ledger")
	l := openT(t, path)
	if err := l.BeginCreate(Entry{VMID: 101, Kind: "qemu", Instance: "r"}); err != nil {
		t.Fatal(err)
	}
	// A frame whose checksum holds but whose payload is no record.
	if err := l.log.Append([]byte("not json")); err != nil {
		t.Fatal(err)
	}
	if err := l.BeginCreate(Entry{VMID: 102, Kind: "qemu", Instance: "r"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := Open(path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open err = %v, want ErrCorrupt", err)
	}
	os.WriteFile(path, []byte("something else entirely"), 0o600)
	if _, err := Open(path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of a foreign file err = %v, want ErrCorrupt", err)
	}
}

// A record whose sync failed is not applied, and the ledger refuses every
// later change until reopened; what was acknowledged stays.
func TestFailedSyncRefusesUntilReopened(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prov.ledger")
	var armed atomic.Bool
	l, err := open(path, appendlogtest.FailingSync{Armed: &armed}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.BeginCreate(Entry{VMID: 101, Kind: "qemu", Instance: "a"}); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	if err := l.ConfirmCreate(101, "a", "", nil); !errors.Is(err, ErrClosed) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("ConfirmCreate with a failing sync = %v, want ErrClosed wrapping EIO", err)
	}
	if created(l, 101) {
		t.Fatal("an unacknowledged confirm was applied")
	}
	armed.Store(false)
	if err := l.Admit(Admission{Key: "k", Action: "x", ExpiresAt: time.Now().Add(time.Hour)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Admit after a failed sync = %v, want ErrClosed", err)
	}
	l.Close()
	l = openT(t, path)
	defer l.Close()
	if e, ok := l.Entry(101); !ok || e.Instance != "a" {
		t.Fatalf("acknowledged begin lost: %+v", e)
	}
	if err := l.ConfirmCreate(101, "a", "", nil); err != nil {
		t.Fatalf("after reopening: %v", err)
	}
}

// A compaction at open that fails before it replaced the file leaves the
// ledger usable, with everything it held.
func TestFailedCompactionAtOpenKeepsTheLedger(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prov.ledger")
	l := openT(t, path)
	for i := 0; i < 2*compactMinRecords; i++ {
		if err := l.BeginCreate(Entry{VMID: 500, Kind: "qemu", Instance: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	before, _ := os.ReadFile(path)
	var armed atomic.Bool
	armed.Store(true) // the compacted file's sync fails
	l, err := open(path, appendlogtest.FailingSync{Armed: &armed}, nil)
	if err != nil {
		t.Fatalf("Open with a failing compaction: %v", err)
	}
	defer l.Close()
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("the failed compaction changed the file")
	}
	armed.Store(false)
	if e, ok := l.Entry(500); !ok || e.Instance != fmt.Sprint(2*compactMinRecords-1) {
		t.Fatalf("entry after a failed compaction: %+v", e)
	}
	if err := l.Remove(500); err != nil {
		t.Fatalf("append after a failed compaction: %v", err)
	}
}

func TestCompactionKeepsState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prov.ledger")
	l := openT(t, path)
	for i := 0; i < 400; i++ {
		vmid := 100 + i%10
		run := fmt.Sprintf("run-%d", i)
		if err := l.BeginCreate(Entry{VMID: vmid, Kind: "qemu", Instance: run, Scratch: i%2 == 0}); err != nil {
			t.Fatal(err)
		}
		if err := l.ConfirmCreate(vmid, run, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	want := map[int]Entry{}
	for v := 100; v < 110; v++ {
		want[v], _ = l.Entry(v)
	}
	l.Close()
	fi, _ := os.Stat(path)
	l = openT(t, path) // compacts: 800 records, 10 live
	fi2, _ := os.Stat(path)
	if fi2.Size() >= fi.Size()/10 {
		t.Fatalf("not compacted: %d -> %d bytes", fi.Size(), fi2.Size())
	}
	if err := l.Remove(105); err != nil {
		t.Fatal(err)
	}
	delete(want, 105)
	l.Close()
	l = openT(t, path)
	defer l.Close()
	for v := 100; v < 110; v++ {
		if got, _ := l.Entry(v); !reflect.DeepEqual(got, want[v]) {
			t.Fatalf("Entry(%d) = %+v, want %+v", v, got, want[v])
		}
	}
}

func BenchmarkAppend(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "prov.ledger"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := l.BeginCreate(Entry{VMID: 100 + i%1000, Kind: "qemu", Instance: "r"}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestAdmissions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prov.ledger")
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock = func() time.Time { return at }
	t.Cleanup(func() { clock = time.Now })
	open := func() *Ledger { return openT(t, path) }
	l := open()
	if _, ok := l.Admission("k1"); ok {
		t.Fatal("unknown key admitted")
	}
	exp := at.Add(time.Hour)
	k1 := Admission{Key: "k1", Action: "destroy-101", VMID: 101, Instance: "i-1", ExpiresAt: exp}
	if err := l.Admit(k1); err != nil {
		t.Fatal(err)
	}
	if err := l.Admit(k1); err != nil {
		t.Fatalf("admitting the same act again: %v", err)
	}
	other := k1
	other.Instance = "i-2"
	if err := l.Admit(other); !errors.Is(err, ErrAdmissionConflict) {
		t.Fatalf("admitting the approval for another instance: err = %v, want ErrAdmissionConflict", err)
	}
	if err := l.StartAct("unknown"); err == nil {
		t.Fatal("StartAct of an unknown admission succeeded")
	}
	for _, ad := range []Admission{
		{Key: "k2", Action: "wipe", ExpiresAt: exp},                        // done: dropped once expired
		{Key: "k3", Action: "restore", ExpiresAt: exp},                     // started: kept past expiry
		{Key: "k4", Action: "detach", ExpiresAt: exp},                      // admitted: dropped once expired
		{Key: "k5", Action: "destroy", ExpiresAt: exp.Add(48 * time.Hour)}, // not yet expired
	} {
		if err := l.Admit(ad); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		do  func(string) error
		key string
	}{{l.StartAct, "k1"}, {l.StartAct, "k2"}, {func(k string) error { return l.FinishAct(k, true) }, "k2"}, {l.StartAct, "k3"}} {
		if err := step.do(step.key); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.StartAct("k2"); err == nil {
		t.Fatal("StartAct of a done act succeeded")
	}
	state := func(l *Ledger, key string) AdmissionState {
		ad, ok := l.Admission(key)
		if !ok {
			return "gone"
		}
		return ad.State
	}
	// enough churn to make the next open compact the log
	for i := 0; i < 300; i++ {
		if err := l.BeginCreate(Entry{VMID: 500, Kind: "qemu", Instance: "churn"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	l = open()
	want := map[string]AdmissionState{"k1": Started, "k2": Done, "k3": Started, "k4": Admitted, "k5": Admitted}
	for k, w := range want {
		if got := state(l, k); got != w {
			t.Errorf("before expiry: %s is %s, want %s", k, got, w)
		}
	}
	if ad, _ := l.Admission("k1"); ad.StartedAt != at || ad.Instance != "i-1" {
		t.Errorf("k1 after reopen = %+v", ad)
	}
	if ad, _ := l.Admission("k2"); !ad.Failed {
		t.Errorf("k2 after reopen = %+v, want failed", ad)
	}
	l.Close()

	at = exp.Add(time.Minute) // past the ops' expiry: compaction drops what cannot serve
	l = open()
	for i := 0; i < 300; i++ {
		if err := l.BeginCreate(Entry{VMID: 500, Kind: "qemu", Instance: "churn"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	l = open()
	defer l.Close()
	want = map[string]AdmissionState{"k1": Started, "k2": "gone", "k3": Started, "k4": "gone", "k5": Admitted}
	for k, w := range want {
		if got := state(l, k); got != w {
			t.Errorf("after expiry: %s is %s, want %s", k, got, w)
		}
	}
}

func TestIntents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prov.ledger")
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock = func() time.Time { return at }
	t.Cleanup(func() { clock = time.Now })
	l := openT(t, path)
	state := func(l *Ledger, key string) AdmissionState {
		if ad, ok := l.Admission(key); ok {
			return ad.State
		}
		return "gone"
	}
	exp := at.Add(time.Hour)
	intent := func(key string) Admission {
		return Admission{Key: key, Action: "destroy-101", VMID: 101, Instance: "i-1"}
	}
	for _, k := range []string{"promoted", "dropped", "kept", "lapsing"} {
		if err := l.Intend(intent(k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Intend(intent("kept")); err != nil {
		t.Fatalf("intending the same act again: %v", err)
	}
	other := intent("kept")
	other.Instance = "i-2"
	if err := l.Intend(other); !errors.Is(err, ErrAdmissionConflict) {
		t.Fatalf("intent for another instance: err = %v, want ErrAdmissionConflict", err)
	}
	if err := l.Admit(Admission{Key: "kept", Action: "destroy-101", VMID: 101, Instance: "i-2", ExpiresAt: exp}); !errors.Is(err, ErrAdmissionConflict) {
		t.Fatalf("admitting an intent for another instance: err = %v, want ErrAdmissionConflict", err)
	}
	// An intent grants nothing: it cannot start or finish an act.
	if err := l.StartAct("kept"); err == nil {
		t.Fatal("StartAct of an intent succeeded")
	}
	if err := l.FinishAct("kept", false); err != nil || state(l, "kept") != Intended {
		t.Fatalf("FinishAct of an intent: %v, state %s", err, state(l, "kept"))
	}
	p := intent("promoted")
	p.ExpiresAt = exp
	if err := l.Admit(p); err != nil {
		t.Fatal(err)
	}
	if err := l.Drop("dropped"); err != nil {
		t.Fatal(err)
	}
	if err := l.Drop("promoted"); err != nil || state(l, "promoted") != Admitted {
		t.Fatalf("Drop of an admission: %v, state %s", err, state(l, "promoted"))
	}
	for i := 0; i < 300; i++ { // churn: the next open compacts
		if err := l.BeginCreate(Entry{VMID: 500, Kind: "qemu", Instance: "churn"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	l = openT(t, path)
	want := map[string]AdmissionState{"promoted": Admitted, "dropped": "gone", "kept": Intended, "lapsing": Intended}
	for k, w := range want {
		if got := state(l, k); got != w {
			t.Errorf("after reopen: %s is %s, want %s", k, got, w)
		}
	}
	if ad, _ := l.Admission("promoted"); !ad.ExpiresAt.Equal(exp) || ad.Instance != "i-1" {
		t.Errorf("promoted after reopen = %+v", ad)
	}
	l.Close()

	at = at.Add(IntentRetention + time.Minute) // intents lapse
	l = openT(t, path)
	for i := 0; i < 300; i++ {
		if err := l.BeginCreate(Entry{VMID: 500, Kind: "qemu", Instance: "churn"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	l = openT(t, path)
	defer l.Close()
	for _, k := range []string{"kept", "lapsing", "promoted"} {
		if got := state(l, k); got != "gone" {
			t.Errorf("past IntentRetention: %s is %s, want gone", k, got)
		}
	}
}
