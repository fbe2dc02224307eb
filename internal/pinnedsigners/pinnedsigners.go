// Package pinnedsigners is the host's file of pinned signer keys: the keys
// a signed signers.rotate op installed, and the configured keys that were
// in effect when they were pinned. At start it decides which keys the host
// trusts, and it never chooses silently when the configuration and the
// file disagree.
//
// Decide's contract, for the configuration's keys C, the file's pinned keys
// P and the configured keys R recorded in the file (sets of key material,
// per role; order and comments do not matter):
//
//   - no file: C (nothing was ever rotated on this host);
//   - R = C: P, a signed rotation being newer than the configuration;
//   - C = P: P, and the file is to record C as R from now on (the operator
//     made the configuration follow the rotation);
//   - otherwise: refuse with a *DivergedError naming C, R and P. The ways
//     out are to make the configuration equal P, or to run
//     "felhom-agent signers repin", a local action of the host's operator
//     that pins C (Repin);
//   - a file of an earlier version, which recorded no R: P when C = P (and
//     R is recorded), else a *DivergedError with Legacy set: nothing tells
//     whether the configuration changed after the rotation, so the same two
//     ways out apply;
//   - a file that cannot be read or is not a valid set of keys: refuse with
//     an error wrapping ErrCorrupt; the configured keys are never a
//     fallback, since that would bring back keys a rotation retired.
//
// The file is replaced atomically (write, fsync, rename, fsync of the
// directory), so a crash leaves either the old content or the new. The
// agent holds Lock for as long as it runs, so a repin cannot race it.
package pinnedsigners

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/felhom/felhom-agent/internal/filelock"

	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/gate"
)

// Keys is a signer key set, one OpenSSH authorized_keys or allowed_signers
// line per key, as in the agent's configuration.
type Keys struct {
	Operational []string `json:"operational"`
	Recovery    []string `json:"recovery"`
}

// File is the content of the pinned-signers file.
type File struct {
	// Keys are the pinned keys, in force on this host.
	Keys
	// Configured is the configuration's key set when the file was written;
	// nil in a file written by an earlier version.
	Configured *Keys `json:"configured,omitempty"`
}

// ErrCorrupt marks a pinned-signers file that exists but cannot be used.
var ErrCorrupt = errors.New("pinned signers file cannot be used")

// ErrLocked means another process (a running agent) holds the file's lock.
var ErrLocked = errors.New("pinned signers file is in use by another process")

// Read returns the file at path, or nil when there is none.
func Read(path string) (*File, error) {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	var f File
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	if d.More() {
		return nil, fmt.Errorf("%w: %s: data after the JSON object", ErrCorrupt, path)
	}
	if _, err := Fingerprints(f.Keys); err != nil {
		return nil, fmt.Errorf("%w: %s: pinned keys: %w", ErrCorrupt, path, err)
	}
	if f.Configured != nil {
		if _, err := Fingerprints(*f.Configured); err != nil {
			return nil, fmt.Errorf("%w: %s: recorded configured keys: %w", ErrCorrupt, path, err)
		}
	}
	return &f, nil
}

// Write replaces the file at path with f, atomically and durably.
func Write(path string, f File) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(path, append(data, '\n')); err != nil {
		return fmt.Errorf("pinned signers %s: %w", path, err)
	}
	return nil
}

// Set is a key set by key material: the SHA256 fingerprints of each role,
// sorted.
type Set struct {
	Operational, Recovery []string
}

// Equal reports whether s and o hold the same keys in the same roles.
func (s Set) Equal(o Set) bool {
	return slices.Equal(s.Operational, o.Operational) && slices.Equal(s.Recovery, o.Recovery)
}

func (s Set) String() string {
	list := func(fps []string) string {
		if len(fps) == 0 {
			return "none"
		}
		return strings.Join(fps, ", ")
	}
	return "operational [" + list(s.Operational) + "], recovery [" + list(s.Recovery) + "]"
}

// Fingerprints parses k as the gate does (at least one operational key, no
// key in both roles) and returns its Set.
func Fingerprints(k Keys) (Set, error) {
	signers, err := gate.ParseSigners(k.Operational, k.Recovery)
	if err != nil {
		return Set{}, err
	}
	var s Set
	for _, sg := range signers {
		fp := ssh.FingerprintSHA256(sg.Key)
		if sg.Role == gate.RoleRecovery {
			s.Recovery = append(s.Recovery, fp)
		} else {
			s.Operational = append(s.Operational, fp)
		}
	}
	slices.Sort(s.Operational)
	slices.Sort(s.Recovery)
	return s, nil
}

// Decision is which keys the host trusts.
type Decision struct {
	Keys Keys
	// Pinned is true when Keys come from the file, false when there is no
	// file and they are the configuration's.
	Pinned bool
	// Record is true when the file should be rewritten to record the
	// configuration as its configured set (the configuration now equals
	// the pinned keys).
	Record bool
}

// DivergedError is a configuration that differs from both the pinned keys
// and the configured keys recorded when they were pinned (or, for a file of
// an earlier version, from the pinned keys).
type DivergedError struct {
	Path                         string
	Configured, Recorded, Pinned Set
	// Legacy is true for a file that recorded no configured keys.
	Legacy bool
}

func (e *DivergedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pinned signers %s: ", e.Path)
	if e.Legacy {
		b.WriteString("the configured signer keys differ from the keys pinned on this host, and the file (written by an earlier version) " +
			"does not record which configured keys were in effect when they were pinned; refusing to start rather than pick one set silently\n")
	} else {
		b.WriteString("the configured signer keys differ from the keys pinned on this host and from the configured keys recorded when they were pinned; " +
			"refusing to start rather than pick one set silently\n")
	}
	fmt.Fprintf(&b, "  configured now:          %s\n", e.Configured)
	if !e.Legacy {
		fmt.Fprintf(&b, "  configured when pinned:  %s\n", e.Recorded)
	}
	fmt.Fprintf(&b, "  pinned (in force):       %s\n", e.Pinned)
	b.WriteString("Either make signers.operational and signers.recovery in the configuration equal the pinned keys (this keeps the signed rotation), " +
		"or, as this host's operator, run \"felhom-agent signers repin --config FILE\" on the host to pin the configured keys instead")
	return b.String()
}

// Decide applies the package's contract to the file f (nil: no file) at
// path and the configured keys.
func Decide(path string, f *File, configured Keys) (Decision, error) {
	conf, err := Fingerprints(configured)
	if err != nil {
		return Decision{}, fmt.Errorf("configured signers: %w", err)
	}
	if f == nil {
		return Decision{Keys: configured}, nil
	}
	pinned, err := Fingerprints(f.Keys)
	if err != nil {
		return Decision{}, fmt.Errorf("%w: %s: pinned keys: %w", ErrCorrupt, path, err)
	}
	if f.Configured != nil {
		recorded, err := Fingerprints(*f.Configured)
		if err != nil {
			return Decision{}, fmt.Errorf("%w: %s: recorded configured keys: %w", ErrCorrupt, path, err)
		}
		if conf.Equal(recorded) {
			return Decision{Keys: f.Keys, Pinned: true}, nil
		}
		if conf.Equal(pinned) {
			return Decision{Keys: f.Keys, Pinned: true, Record: true}, nil
		}
		return Decision{}, &DivergedError{Path: path, Configured: conf, Recorded: recorded, Pinned: pinned}
	}
	if conf.Equal(pinned) {
		return Decision{Keys: f.Keys, Pinned: true, Record: true}, nil
	}
	return Decision{}, &DivergedError{Path: path, Configured: conf, Pinned: pinned, Legacy: true}
}

// Resolve reads the file at path and decides with the configured keys.
func Resolve(path string, configured Keys) (Decision, error) {
	f, err := Read(path)
	if err != nil {
		return Decision{}, err
	}
	return Decide(path, f, configured)
}

// Lock is an exclusive lock on a pinned-signers file (flock on PATH.lock),
// held by the running agent and by repin.
type Lock struct{ c io.Closer }

// TryLock takes the lock of the file at path, or fails at once with an
// error wrapping ErrLocked.
func TryLock(path string) (*Lock, error) {
	c, err := filelock.TryLock(path + ".lock")
	if errors.Is(err, filelock.ErrLocked) {
		return nil, fmt.Errorf("%w: %s.lock is held (is felhom-agent running on this host?)", ErrLocked, path)
	}
	if err != nil {
		return nil, fmt.Errorf("pinned signers: %w", err)
	}
	return &Lock{c: c}, nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() error {
	if l == nil || l.c == nil {
		return nil
	}
	err := l.c.Close()
	l.c = nil
	return err
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".signers-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Repin replaces the file at path with the configured keys, pinned and
// recorded as the configured set: the explicit way out of a
// DivergedError or ErrCorrupt. The caller holds the lock.
func Repin(path string, configured Keys) error {
	if _, err := Fingerprints(configured); err != nil {
		return fmt.Errorf("configured signers: %w", err)
	}
	c := Keys{Operational: slices.Clone(configured.Operational), Recovery: slices.Clone(configured.Recovery)}
	return Write(path, File{Keys: configured, Configured: &c})
}
