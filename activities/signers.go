package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"go.temporal.io/sdk/temporal"
	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/gate"
)

// ErrTypeSigners marks a rotation whose new key set cannot be used.
const ErrTypeSigners = "SignerKeys"

// PinnedSigners is the host's durable set of pinned signer keys. The agent's
// configuration seeds it; a signed signers.rotate op replaces it, and from
// then on the file on the host is what is trusted, across restarts. The
// file is replaced atomically (write, fsync, rename, fsync of the
// directory), so a crash leaves either the old set or the new one.
type PinnedSigners struct {
	path string
	log  *slog.Logger

	mu          sync.Mutex
	operational []string
	recovery    []string
	gate        *gate.Gate
	newGate     func([]gate.Signer) (*gate.Gate, error)
}

type signersFile struct {
	Operational []string `json:"operational"`
	Recovery    []string `json:"recovery"`
}

// OpenPinnedSigners loads the rotated set at path if there is one, else the
// configured operational and recovery keys, and builds the gate with
// newGate.
func OpenPinnedSigners(path string, operational, recovery []string, newGate func([]gate.Signer) (*gate.Gate, error), log *slog.Logger) (*PinnedSigners, error) {
	p := &PinnedSigners{path: path, log: log, operational: operational, recovery: recovery, newGate: newGate}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("pinned signers %s: %w", path, err)
	default:
		var f signersFile
		if err := json.Unmarshal(data, &f); err != nil {
			return nil, fmt.Errorf("pinned signers %s: %w", path, err)
		}
		if !slices.Equal(f.Operational, operational) || !slices.Equal(f.Recovery, recovery) {
			log.Warn("signer keys were rotated on this host: the configured signers are ignored", "file", path)
		}
		p.operational, p.recovery = f.Operational, f.Recovery
	}
	signers, err := gate.ParseSigners(p.operational, p.recovery)
	if err != nil {
		return nil, fmt.Errorf("pinned signers: %w", err)
	}
	if p.gate, err = newGate(signers); err != nil {
		return nil, err
	}
	return p, nil
}

// Decide asks the gate built from the current keys.
func (p *PinnedSigners) Decide(ctx context.Context, req gate.Request) (gate.Decision, error) {
	p.mu.Lock()
	g := p.gate
	p.mu.Unlock()
	return g.Decide(ctx, req)
}

// Readmit asks the gate built from the current keys.
func (p *PinnedSigners) Readmit(ctx context.Context, req gate.Request) (gate.Decision, error) {
	p.mu.Lock()
	g := p.gate
	p.mu.Unlock()
	return g.Readmit(ctx, req)
}

// Current returns the pinned keys.
func (p *PinnedSigners) Current() (operational, recovery []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.operational), slices.Clone(p.recovery)
}

// Replace makes operational and recovery the pinned keys, durably, and
// rebuilds the gate. Replacing with the current set is a no-op, which makes
// a retried rotation idempotent.
func (p *PinnedSigners) Replace(operational, recovery []string) error {
	signers, err := gate.ParseSigners(operational, recovery)
	if err != nil {
		return err
	}
	g, err := p.newGate(signers)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if slices.Equal(operational, p.operational) && slices.Equal(recovery, p.recovery) {
		if _, err := os.Stat(p.path); err == nil {
			return nil
		}
	}
	data, err := json.MarshalIndent(signersFile{Operational: operational, Recovery: recovery}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(p.path, data); err != nil {
		return fmt.Errorf("pinned signers %s: %w", p.path, err)
	}
	p.operational, p.recovery, p.gate = operational, recovery, g
	p.log.Warn("signer keys rotated", "file", p.path, "operational", len(operational), "recovery", len(recovery))
	return nil
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

// rotateSigners runs a signers.rotate op: the gate on this host checks the
// approval (role-scoped: a recovery key may sign this and nothing else), then
// the new keys replace the pinned ones.
func (h *Host) rotateSigners(ctx context.Context, params map[string]any, approval *gate.Approval) error {
	const what = "rotate signer keys"
	operational, err1 := stringList(params, "operational")
	recovery, err2 := stringList(params, "recovery")
	if err := errors.Join(err1, err2); err != nil {
		return temporal.NewNonRetryableApplicationError(what+": "+err.Error(), ErrTypeBadRequest, nil)
	}
	if _, err := gate.ParseSigners(operational, recovery); err != nil {
		return temporal.NewNonRetryableApplicationError(what+": the new keys cannot be used: "+err.Error(), ErrTypeSigners, nil)
	}
	action := gate.Action{Op: gate.OpSignersRotate, HostID: h.Proxmox.HostID, Params: params}
	// The recovery keys exist to regain control after an operational key is
	// lost: only a recovery key may change them, so that one stolen
	// operational key cannot lock the recovery keys out.
	var role gate.Role
	if _, currentRecovery := h.Signers.Current(); !sameKeys(recovery, currentRecovery) {
		role = gate.RoleRecovery
	}
	_, at, err := h.Proxmox.authorize(ctx, what, action, Guest{}, approval, role)
	if err != nil {
		return err
	}
	if at != nil && at.done {
		return nil
	}
	if err := h.Proxmox.startAct(context.WithValue(ctx, actContextKey{}, at)); err != nil {
		return err
	}
	err = h.Signers.Replace(operational, recovery)
	if err != nil {
		err = temporal.NewApplicationErrorWithCause(what+": "+err.Error(), ErrTypeSigners, err)
	}
	h.Proxmox.settle(at, err)
	return err
}

// sameKeys reports whether two lists of key lines name the same keys, in
// any order and with any comments.
func sameKeys(a, b []string) bool {
	parse := func(lines []string) []string {
		var out []string
		for _, line := range lines {
			if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err == nil {
				out = append(out, string(k.Marshal()))
			}
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return slices.Equal(parse(a), parse(b))
}

func stringList(params map[string]any, key string) ([]string, error) {
	raw, ok := params[key]
	if !ok {
		return nil, nil
	}
	items, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("params.%s must be a list of key lines", key)
	}
	out := make([]string, 0, len(items))
	for i, it := range items {
		s, ok := it.(string)
		if !ok {
			return nil, fmt.Errorf("params.%s[%d] is not a string", key, i)
		}
		out = append(out, s)
	}
	return out, nil
}
