package activities

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"

	"go.temporal.io/sdk/temporal"
	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pinnedsigners"
)

// ErrTypeSigners marks a rotation whose new key set cannot be used.
const ErrTypeSigners = "SignerKeys"

// PinnedSigners is the host's durable set of pinned signer keys. The agent's
// configuration seeds it; a signed signers.rotate op replaces it, and from
// then on the file on the host is what is trusted, across restarts. The file
// also records the configured keys in effect when it was written, so that a
// later change of the configuration is never ignored silently: see package
// pinnedsigners for how the keys in force are decided at start. The file is
// replaced atomically, so a crash leaves either the old set or the new one.
// The agent holds the file's lock until Close.
type PinnedSigners struct {
	path       string
	log        *slog.Logger
	configured pinnedsigners.Keys
	lock       *pinnedsigners.Lock

	mu          sync.Mutex
	operational []string
	recovery    []string
	gate        *gate.Gate
	newGate     func([]gate.Signer) (*gate.Gate, error)
}

// OpenPinnedSigners takes the lock of the file at path, decides the keys in
// force from the file and the configured operational and recovery keys
// (pinnedsigners.Decide: the rotated set if the configuration is the one
// recorded when it was pinned or equals it, the configuration if there is
// no file, else an error), and builds the gate with newGate. A file that
// cannot be used is an error, never a fallback to the configured keys.
func OpenPinnedSigners(path string, operational, recovery []string, newGate func([]gate.Signer) (*gate.Gate, error), log *slog.Logger) (*PinnedSigners, error) {
	configured := pinnedsigners.Keys{Operational: operational, Recovery: recovery}
	lock, err := pinnedsigners.TryLock(path)
	if err != nil {
		return nil, err
	}
	p, err := openPinnedSigners(path, configured, lock, newGate, log)
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	return p, nil
}

func openPinnedSigners(path string, configured pinnedsigners.Keys, lock *pinnedsigners.Lock, newGate func([]gate.Signer) (*gate.Gate, error), log *slog.Logger) (*PinnedSigners, error) {
	d, err := pinnedsigners.Resolve(path, configured)
	if err != nil {
		return nil, err
	}
	if d.Record {
		if err := pinnedsigners.Write(path, pinnedsigners.File{Keys: d.Keys, Configured: &configured}); err != nil {
			return nil, err
		}
		log.Info("the configured signer keys equal the pinned ones; recorded them as the configuration in effect", "file", path)
	}
	if d.Pinned {
		fps, _ := pinnedsigners.Fingerprints(d.Keys)
		log.Info("signer keys pinned on this host are in force", "file", path, "keys", fps.String())
	}
	p := &PinnedSigners{
		path: path, log: log, configured: configured, lock: lock, newGate: newGate,
		operational: d.Keys.Operational, recovery: d.Keys.Recovery,
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

// Close releases the file's lock.
func (p *PinnedSigners) Close() error { return p.lock.Unlock() }

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

// NonceSpent asks the gate built from the current keys (they share the
// host's nonce store).
func (p *PinnedSigners) NonceSpent(approval *gate.Approval) (spent, known bool) {
	p.mu.Lock()
	g := p.gate
	p.mu.Unlock()
	return g.NonceSpent(approval)
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
	configured := p.configured
	if err := pinnedsigners.Write(p.path, pinnedsigners.File{
		Keys: pinnedsigners.Keys{Operational: operational, Recovery: recovery}, Configured: &configured,
	}); err != nil {
		return err
	}
	p.operational, p.recovery, p.gate = operational, recovery, g
	p.log.Warn("signer keys rotated", "file", p.path, "operational", len(operational), "recovery", len(recovery))
	return nil
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
