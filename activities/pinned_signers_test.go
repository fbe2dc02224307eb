package activities

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pinnedsigners"
)

// Three ed25519 keys with their SHA256 fingerprints.
const (
	pinKeyA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINk0i03PToHABRfmXdccPn8dFj1JtETlpCDpzaPBjGPB a@example"
	pinKeyB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAHTM40f2+xiUThlKwp5FwqHeOraBeMnUx/erXycZSdZ b@example"
	pinKeyC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINK9M7lOckJP3bJGWSsFvzJ+LSlUEyaIi3jb8vsmJOXn c@example"
	pinFpA  = "SHA256:JM0zSh/NryE5D+n2lnKMEOVY4QosYSsRuZuLSydJT/Y"
	pinFpC  = "SHA256:BEBau1toIf7+5sYLuoHxacIlwQj1fC00reVGZ1vPnnI"
)

func openPinned(t *testing.T, path string, operational, recovery []string) (*PinnedSigners, error) {
	t.Helper()
	newGate := func(s []gate.Signer) (*gate.Gate, error) {
		v, err := gate.NewVerifier(gate.VerifierConfig{HostID: "pve1", Signers: s, Nonces: gate.NewMemoryNonceStore()})
		if err != nil {
			return nil, err
		}
		return gate.New(v, slog.New(slog.DiscardHandler)), nil
	}
	p, err := OpenPinnedSigners(path, operational, recovery, newGate, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Cleanup(func() { p.Close() })
	}
	return p, err
}

func readPinnedFile(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// The keys in force across a rotation and restarts with real files: the
// rotated set while the configuration is the one it replaced, the
// configuration's once it equals the rotated set, and a refusal naming the
// sets when the configuration differs from both, until an explicit repin.
func TestPinnedSignersAcrossRotationAndConfigurationChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signers.json")
	a, c := []string{pinKeyA}, []string{pinKeyC}

	// No file: the configuration; opening writes nothing.
	p, err := openPinned(t, path, a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ops, _ := p.Current(); !slices.Equal(ops, a) {
		t.Fatalf("no file: keys %v, want the configured %v", ops, a)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("opening without a rotation wrote the file: %v", err)
	}
	// A rotation pins C and records A as the configuration in effect.
	if err := p.Replace(c, []string{pinKeyB}); err != nil {
		t.Fatal(err)
	}
	m := readPinnedFile(t, path)
	if conf, ok := m["configured"].(map[string]any); !ok || conf["operational"].([]any)[0] != pinKeyA {
		t.Fatalf("file after a rotation: %v, want configured.operational [A]", m)
	}
	p.Close()

	// Restart with the same configuration: the rotated keys.
	p, err = openPinned(t, path, a, nil)
	if err != nil {
		t.Fatalf("restart with the configuration the rotation replaced: %v", err)
	}
	if ops, rec := p.Current(); !slices.Equal(ops, c) || !slices.Equal(rec, []string{pinKeyB}) {
		t.Fatalf("restart: keys %v %v, want the rotated C, B", ops, rec)
	}
	p.Close()

	// The configuration changed to neither set: refused, naming both.
	_, err = openPinned(t, path, []string{pinKeyA, pinKeyB}, nil)
	var de *pinnedsigners.DivergedError
	if !errors.As(err, &de) || de.Legacy {
		t.Fatalf("configuration differing from both: %v, want a DivergedError", err)
	}
	for _, want := range []string{pinFpA, pinFpC, "felhom-agent signers repin"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal lacks %q:\n%v", want, err)
		}
	}
	// The refusal released the lock and changed nothing.
	if m2 := readPinnedFile(t, path); m2["configured"].(map[string]any)["operational"].([]any)[0] != pinKeyA {
		t.Errorf("refusal changed the file: %v", m2)
	}

	// The configuration now equals the rotated set: in force, and recorded.
	p, err = openPinned(t, path, c, []string{pinKeyB})
	if err != nil {
		t.Fatalf("configuration equal to the pinned keys: %v", err)
	}
	p.Close()
	if conf := readPinnedFile(t, path)["configured"].(map[string]any); conf["operational"].([]any)[0] != pinKeyC {
		t.Errorf("configuration not recorded: %v", conf)
	}
	// From then on, going back to A is a change, not the recorded config.
	if _, err := openPinned(t, path, a, nil); !errors.As(err, &de) {
		t.Fatalf("configuration back to A after C was recorded: %v, want a DivergedError", err)
	}

	// An explicit repin pins the configuration.
	if err := pinnedsigners.Repin(path, pinnedsigners.Keys{Operational: a}); err != nil {
		t.Fatal(err)
	}
	p, err = openPinned(t, path, a, nil)
	if err != nil {
		t.Fatalf("after repin: %v", err)
	}
	if ops, rec := p.Current(); !slices.Equal(ops, a) || len(rec) != 0 {
		t.Errorf("after repin: keys %v %v, want A", ops, rec)
	}
}

// A file written by the earlier version records no configuration: it is
// used, and upgraded, only when the configuration equals its keys.
func TestPinnedSignersFileOfTheEarlierVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signers.json")
	legacy := `{
  "operational": [
    "` + pinKeyC + `"
  ],
  "recovery": null
}`
	if err := os.WriteFile(path, []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := openPinned(t, path, []string{pinKeyA}, nil)
	var de *pinnedsigners.DivergedError
	if !errors.As(err, &de) || !de.Legacy || !strings.Contains(err.Error(), "written by an earlier version") {
		t.Fatalf("earlier file, other configuration: %v, want a DivergedError for an earlier version", err)
	}
	if data, _ := os.ReadFile(path); string(data) != legacy {
		t.Errorf("refusal changed the file:\n%s", data)
	}
	p, err := openPinned(t, path, []string{pinKeyC}, nil)
	if err != nil {
		t.Fatalf("earlier file, same keys: %v", err)
	}
	p.Close()
	if _, ok := readPinnedFile(t, path)["configured"]; !ok {
		t.Error("the earlier version's file was not upgraded to record the configuration")
	}
}

// A pinned-signers file that cannot be used stops the agent; the configured
// keys are never a fallback.
func TestPinnedSignersCorruptFileRefuses(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":      "\x00\x01garbage",
		"empty":        "",
		"no keys":      `{"operational": [], "recovery": []}`,
		"unknown keys": `{"operational": ["` + pinKeyA + `"], "trusted": true}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "signers.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := openPinned(t, path, []string{pinKeyA}, nil); !errors.Is(err, pinnedsigners.ErrCorrupt) {
				t.Errorf("OpenPinnedSigners = %v, want ErrCorrupt", err)
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "signers.json")
		if err := os.Mkdir(path, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := openPinned(t, path, []string{pinKeyA}, nil); !errors.Is(err, pinnedsigners.ErrCorrupt) {
			t.Errorf("OpenPinnedSigners = %v, want ErrCorrupt", err)
		}
	})
}

// The running agent holds the file's lock: a repin cannot race it.
func TestPinnedSignersHoldsTheLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signers.json")
	p, err := openPinned(t, path, []string{pinKeyA}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pinnedsigners.TryLock(path); !errors.Is(err, pinnedsigners.ErrLocked) {
		t.Errorf("TryLock while open = %v, want ErrLocked", err)
	}
	p.Close()
	l, err := pinnedsigners.TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after Close: %v", err)
	}
	l.Unlock()
}
