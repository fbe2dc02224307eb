package ledger

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"syscall"
	"testing"
	"time"
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
	if err := l.BeginCreate(Entry{VMID: 104, Kind: "qemu"}); err == nil {
		t.Fatal("begin without an instance marker accepted")
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

// TestTornTail cuts the last record at every byte boundary and checks that the
// ledger reopens with everything before it, and accepts new appends.
func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "prov.ledger")
	l := openT(t, path)
	if err := l.BeginCreate(Entry{VMID: 101, Kind: "qemu", Instance: "r1"}); err != nil {
		t.Fatal(err)
	}
	if err := l.ConfirmCreate(101, "r1", "", nil); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	before := fi.Size()
	if err := l.BeginCreate(Entry{VMID: 202, Kind: "lxc", Instance: "r2", Scratch: true}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	cases := map[string][]byte{}
	for cut := before + 1; cut < int64(len(full)); cut++ {
		cases[fmt.Sprintf("cut at %d", cut)] = full[:cut]
	}
	flipped := append([]byte(nil), full...)
	flipped[len(flipped)-2] ^= 0xff
	cases["last payload byte flipped"] = flipped
	cases["zero-filled tail"] = append(append([]byte(nil), full[:before]...), make([]byte, 300)...)

	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "prov.ledger")
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
			l, err := Open(p)
			if err != nil {
				t.Fatalf("Open torn ledger: %v", err)
			}
			defer l.Close()
			if !created(l, 101) {
				t.Fatal("record before the torn tail lost")
			}
			if _, ok := l.Entry(202); ok {
				t.Fatal("torn record surfaced")
			}
			fi, _ := os.Stat(p)
			if fi.Size() != before {
				t.Fatalf("file size after open = %d, want truncated to %d", fi.Size(), before)
			}
			if err := l.BeginCreate(Entry{VMID: 303, Kind: "qemu", Instance: "r3"}); err != nil {
				t.Fatal(err)
			}
			if err := l.ConfirmCreate(303, "r3", "", nil); err != nil {
				t.Fatal(err)
			}
			l.Close()
			l2 := openT(t, p)
			defer l2.Close()
			if !created(l2, 303) || !created(l2, 101) {
				t.Fatal("append after truncation not durable")
			}
		})
	}
}

func TestCorruptionInTheMiddleIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prov.ledger")
	l := openT(t, path)
	for i := 0; i < 3; i++ {
		if err := l.BeginCreate(Entry{VMID: 100 + i, Kind: "qemu", Instance: "r"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	data, _ := os.ReadFile(path)
	data[headerSize+10] ^= 0x01 // inside the first record's payload
	os.WriteFile(path, data, 0o600)
	if _, err := Open(path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open err = %v, want ErrCorrupt", err)
	}

	os.WriteFile(path, []byte("something else entirely"), 0o600)
	if _, err := Open(path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of a foreign file err = %v, want ErrCorrupt", err)
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

// crash test: a child process appends as fast as it can and reports each
// acknowledged (fsync'd) operation on stdout; the parent SIGKILLs it at a
// random point and checks that every acknowledged operation survived.

const crashChildEnv = "LEDGER_CRASH_CHILD"

type step struct {
	kind    op
	vmid    int
	run     string
	scratch bool
}

func stepAt(i int) step {
	cycle := i / 3
	s := step{vmid: 100 + cycle%40, run: "run-" + strconv.Itoa(cycle), scratch: cycle%2 == 0}
	switch i % 3 {
	case 0:
		s.kind = opBegin
	case 1:
		s.kind = opConfirm
	default:
		if cycle%3 == 0 {
			s.kind = opRemove
		} else {
			s.kind = opConfirm // idempotent repeat
		}
	}
	return s
}

func (s step) do(l *Ledger) error {
	switch s.kind {
	case opBegin:
		return l.BeginCreate(Entry{VMID: s.vmid, Kind: "qemu", Instance: s.run, Scratch: s.scratch})
	case opConfirm:
		return l.ConfirmCreate(s.vmid, s.run, "", nil)
	default:
		return l.Remove(s.vmid)
	}
}

// provenance is what the crash test compares: which instance, and scratch.
type provenance struct {
	instance string
	scratch  bool
}

// model replays the steps without using the ledger's own code.
type model struct {
	n       int
	created map[int]provenance
	pending map[int]string
}

func newModel() *model {
	return &model{created: map[int]provenance{}, pending: map[int]string{}}
}

func (m *model) step() {
	s := stepAt(m.n)
	m.n++
	switch s.kind {
	case opBegin:
		delete(m.created, s.vmid)
		m.pending[s.vmid] = s.run
	case opConfirm:
		if m.pending[s.vmid] == s.run {
			m.created[s.vmid] = provenance{instance: s.run, scratch: s.scratch}
		}
	case opRemove:
		delete(m.created, s.vmid)
		delete(m.pending, s.vmid)
	}
}

func snapshot(l *Ledger) map[int]provenance {
	m := map[int]provenance{}
	for _, e := range l.Entries() {
		if e.State == StateCreated {
			m[e.VMID] = provenance{instance: e.Instance, scratch: e.Scratch}
		}
	}
	return m
}

func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		t.Skip("helper process for TestCrashKeepsAcknowledgedRecords")
	}
	start, _ := strconv.Atoi(os.Getenv("LEDGER_CRASH_START"))
	l, err := Open(path)
	if err != nil {
		fmt.Println("open-error", err)
		os.Exit(3)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := start; ; i++ {
		if err := stepAt(i).do(l); err != nil {
			fmt.Fprintln(w, "error", err)
			w.Flush()
			os.Exit(4)
		}
		fmt.Fprintln(w, i) // acknowledged: fsync returned
		w.Flush()
	}
}

func TestCrashKeepsAcknowledgedRecords(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	path := filepath.Join(t.TempDir(), "prov.ledger")
	next := 0
	for round := 0; round < 6; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path, "LEDGER_CRASH_START="+strconv.Itoa(next))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		killAfter := 30 + rand.IntN(200)
		acked := -1
		for n := 0; n < killAfter && sc.Scan(); n++ {
			v, err := strconv.Atoi(sc.Text())
			if err != nil {
				t.Fatalf("child: %s", sc.Text())
			}
			acked = v
			if n == 5 {
				if _, err := Open(path); !errors.Is(err, ErrLocked) {
					t.Fatalf("Open while the child holds the ledger: err = %v, want ErrLocked", err)
				}
			}
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		go func() { // drain so the child never blocks on a full pipe before dying
			for sc.Scan() {
			}
		}()
		cmd.Wait()
		if acked < 0 {
			t.Fatal("child acknowledged nothing")
		}
		// The kill lands while later operations run; at the latest
		// acknowledged one, the state must include all of them.
		l, err := Open(path)
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		got := snapshot(l)
		l.Close()
		// Operations after the last one we read may also have been
		// acknowledged (the pipe still held them), so accept the state after
		// any number of steps at or beyond it.
		m := newModel()
		for m.n < acked+1 {
			m.step()
		}
		matched := -1
		for m.n <= acked+1+1<<20 {
			if reflect.DeepEqual(got, m.created) {
				matched = m.n
				break
			}
			m.step()
		}
		if matched < 0 {
			t.Fatalf("round %d: state after crash matches no prefix of >= %d acknowledged steps: %v", round, acked+1, got)
		}
		next = matched
		t.Logf("round %d: killed after %d acknowledged steps, state = first %d steps", round, acked+1, matched)
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
