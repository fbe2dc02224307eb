package pinnedsigners

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Three ed25519 keys; their SHA256 fingerprints as ssh-keygen -l prints them.
const (
	keyA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINk0i03PToHABRfmXdccPn8dFj1JtETlpCDpzaPBjGPB a@example"
	keyB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAHTM40f2+xiUThlKwp5FwqHeOraBeMnUx/erXycZSdZ b@example"
	keyC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINK9M7lOckJP3bJGWSsFvzJ+LSlUEyaIi3jb8vsmJOXn c@example"
	fpA  = "SHA256:JM0zSh/NryE5D+n2lnKMEOVY4QosYSsRuZuLSydJT/Y"
	fpB  = "SHA256:rjH6heu06lXh4tOsgdNhaku4W/KkpjzVDUCDPyeyChs"
	fpC  = "SHA256:BEBau1toIf7+5sYLuoHxacIlwQj1fC00reVGZ1vPnnI"
)

func keys(operational []string, recovery ...string) Keys {
	return Keys{Operational: operational, Recovery: recovery}
}

func TestDecide(t *testing.T) {
	ab, c := keys([]string{keyA, keyB}), keys([]string{keyC})
	tests := []struct {
		name       string
		file       *File
		configured Keys
		want       Keys // when no error
		wantPinned bool
		wantRecord bool
		wantErr    string
		wantLegacy bool
	}{
		{name: "no file: the configuration", configured: ab, want: ab},
		{name: "configuration as recorded: the rotated keys", file: &File{Keys: c, Configured: &ab}, configured: ab, want: c, wantPinned: true},
		{name: "same keys in another order and with other comments", file: &File{Keys: c, Configured: &ab},
			configured: keys([]string{strings.TrimSuffix(keyB, " b@example") + " renamed", keyA}), want: c, wantPinned: true},
		{name: "configuration follows the rotation: pinned, recorded", file: &File{Keys: c, Configured: &ab}, configured: c, want: c, wantPinned: true, wantRecord: true},
		{name: "configuration differs from both", file: &File{Keys: c, Configured: &ab}, configured: keys([]string{keyA}),
			wantErr: "configured now:          operational [" + fpA + "], recovery [none]"},
		{name: "a key moved to recovery is a change", file: &File{Keys: c, Configured: &ab}, configured: keys([]string{keyA}, keyB),
			wantErr: "operational [" + fpA + "], recovery [" + fpB + "]"},
		{name: "earlier version's file, configuration equals it", file: &File{Keys: c}, configured: c, want: c, wantPinned: true, wantRecord: true},
		{name: "earlier version's file, configuration differs", file: &File{Keys: c}, configured: ab,
			wantErr: "written by an earlier version", wantLegacy: true},
		{name: "bad configured keys", configured: keys(nil), wantErr: "configured signers: gate: no operational signer key configured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Decide("/x/signers.json", tt.file, tt.configured)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decide error = %v, want %q", err, tt.wantErr)
				}
				var de *DivergedError
				if errors.As(err, &de) != (tt.file != nil) || (de != nil && de.Legacy != tt.wantLegacy) {
					t.Errorf("error %T (%+v), want a DivergedError with Legacy %v", err, de, tt.wantLegacy)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalKeys(d.Keys, tt.want) || d.Pinned != tt.wantPinned || d.Record != tt.wantRecord {
				t.Errorf("Decide = %+v, want keys %v pinned %v record %v", d, tt.want, tt.wantPinned, tt.wantRecord)
			}
		})
	}
}

// The refusal names every set's fingerprints and both ways out.
func TestDivergedErrorText(t *testing.T) {
	ab, c := keys([]string{keyA, keyB}), keys([]string{keyC}, keyB)
	_, err := Decide("/var/lib/felhom-agent/signers.json", &File{Keys: c, Configured: &ab}, keys([]string{keyA}))
	for _, want := range []string{
		"pinned signers /var/lib/felhom-agent/signers.json: the configured signer keys differ from the keys pinned on this host and from the configured keys recorded when they were pinned",
		"configured now:          operational [" + fpA + "], recovery [none]",
		"configured when pinned:  operational [" + fpA + ", " + fpB + "], recovery [none]",
		"pinned (in force):       operational [" + fpC + "], recovery [" + fpB + "]",
		"make signers.operational and signers.recovery in the configuration equal the pinned keys",
		`run "felhom-agent signers repin --config FILE" on the host`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestReadRefusesFilesItCannotUse(t *testing.T) {
	tests := []struct{ name, content, want string }{
		{"empty", "", "EOF"},
		{"not json", "operational: [x]", "invalid character"},
		{"truncated", `{"operational": ["` + keyA, "unexpected EOF"},
		{"unknown field", `{"operational": ["` + keyA + `"], "recovery": [], "operators": []}`, `unknown field "operators"`},
		{"two objects", `{"operational": ["` + keyA + `"]} {}`, "data after the JSON object"},
		{"no operational key", `{"operational": [], "recovery": ["` + keyA + `"]}`, "no operational signer key"},
		{"a bad key", `{"operational": ["ssh-ed25519 AAAA-not-base64"]}`, "pinned keys: operational signer line 1"},
		{"a bad recorded key", `{"operational": ["` + keyA + `"], "configured": {"operational": ["nope"]}}`, "recorded configured keys"},
		{"a key in both roles", `{"operational": ["` + keyA + `"], "recovery": ["` + keyA + `"]}`, "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "signers.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Resolve(path, keys([]string{keyA}))
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Resolve = %v, want ErrCorrupt naming %s and %q", err, path, tt.want)
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "signers.json")
		if err := os.Mkdir(path, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := Resolve(path, keys([]string{keyA})); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Resolve of a directory = %v, want ErrCorrupt", err)
		}
	})
}

func TestWriteReadRepin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signers.json")
	ab := keys([]string{keyA, keyB})
	if err := Write(path, File{Keys: keys([]string{keyC}), Configured: &ab}); err != nil {
		t.Fatal(err)
	}
	f, err := Read(path)
	if err != nil || f == nil || !equalKeys(f.Keys, keys([]string{keyC})) || f.Configured == nil || !equalKeys(*f.Configured, ab) {
		t.Fatalf("Read = %+v, %v", f, err)
	}
	if err := Repin(path, ab); err != nil {
		t.Fatal(err)
	}
	d, err := Resolve(path, ab)
	if err != nil || !equalKeys(d.Keys, ab) || !d.Pinned || d.Record {
		t.Fatalf("after Repin, Resolve = %+v, %v; want the configured keys, pinned", d, err)
	}
	if err := Repin(path, keys(nil)); err == nil {
		t.Error("Repin of no keys succeeded")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after the writes, want only the file", len(entries))
	}
}

func TestLockIsExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signers.json")
	l, err := TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TryLock(path); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "is felhom-agent running") {
		t.Errorf("second TryLock = %v, want ErrLocked", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	l, err = TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after Unlock: %v", err)
	}
	l.Unlock()
}

func equalKeys(a, b Keys) bool {
	return strings.Join(a.Operational, "\n") == strings.Join(b.Operational, "\n") &&
		strings.Join(a.Recovery, "\n") == strings.Join(b.Recovery, "\n")
}
