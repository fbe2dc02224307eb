package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/killpoint"
)

// This file is the one place where an executor meets the gate. Everything an
// activity receives through Temporal (its input, heartbeat details, workflow,
// run and activity ids) is a claim; what reaches gate.Decide is built here
// from facts:
//
//   - the Action is computed by the executor from the guest as Proxmox shows
//     it now (kind, volumes) and from the exact request it will send;
//   - the Provenance comes from provenanceOf: the host's ledger, counted only
//     for the guest instance it recorded;
//   - the admission of a signed approval is kept in the host's ledger, keyed
//     by the approval's signed bytes and bound to the action and the guest
//     instance, never to workflow, run or activity ids.
//
// An approval authorises one act on one guest instance. Decide admits it
// once (its nonce is spent) and the admission is fsync'd before anything is
// sent (see "Intents" below for the step between the two). The act's first mutating request marks it Started (launch calls
// startAct); a retry of the same act on the same instance is re-verified by
// Readmit (every stage but the time window and the nonce) and proceeds; it
// may finish a Started act whenever it runs, while an admission whose act
// never started lapses with its op. Once the act completed, or failed for
// good after it started, the admission is Done: the same approval then
// authorises nothing, and a retry of that act only reports it done.
//
// An approval that comes with an act the gate classifies Benign is passed to
// Decide all the same: the gate verifies and spends it (the act runs
// whatever it says), so it cannot be admitted later for another instance at
// the same VMID. Nothing is admitted for a benign act.
//
// # Intents
//
// Decide spends the nonce last in its pipeline (an order the gate keeps),
// and only then can the admission be written. So that a crash between the
// two does not cost the operator a second signature, the executor first
// writes an intent (ledger.Intended: key, action digest, VMID, instance),
// and only while Gate.NonceSpent says the nonce is unspent. admitMu makes
// "lookup, intent, Decide, admit" one step in this process; the ledger and
// the nonce store are each locked to one process. Hence the invariant: an
// intent on disk was written while its nonce was unspent, and the next
// spend of that nonce was this host's Decide of this approval for the
// intent's act. (A benign act drops an intent before its Decide, so its
// spend never meets one. The executor tells benign from destructive with
// gate.Classify on its own clock; should the gate's Decide, a moment later,
// classify the act otherwise, an intent written for it is dropped right
// after that Decide instead.) The interleavings of a destructive act:
//
//   - killed before the intent: nothing on disk, the nonce unspent; the
//     retry starts afresh.
//   - killed after the intent, before Decide spent the nonce: the retry
//     finds the intent, Decide spends the nonce, the intent is promoted.
//   - Decide refused (any code but replay): the nonce stays unspent, as
//     for every rejection; this attempt's intent is dropped. A refusal that
//     finds an earlier attempt's intent leaves it: the nonce is still
//     unspent, and it lapses IntentRetention after it was written.
//   - killed after Decide spent the nonce, before the admission was written
//     (killpoint.NonceSpent): the retry's Decide answers replay; with the
//     intent for the same action digest, VMID and instance, completeIntent
//     re-verifies the approval (Gate.Readmit: every stage but window and
//     nonce), refuses it if it expired, and promotes the intent. The act
//     then runs once, under the one nonce.
//   - killed after the admission: the readmit path below, as before.
//   - the admission's write failed (ledger error) after the spend: the same
//     as the kill after the spend, once the ledger works again.
//
// A hostile control plane replaying the blob: on another host the gate
// refuses it (wrong host) and that host's nonce store has no intent; on
// this host for another guest instance at the VMID, or with another
// action, completeIntent finds the intent bound to something else and the
// spent nonce stays a replay; an intent whose nonce is unspent and that
// names another act is moot and is replaced, as the approval never acted.
// It can make the host write an intent (one fsync, and one more to drop it)
// for an approval that will be refused, since the lookup does not verify
// the signature; intents lapse, and compaction drops them. Not covered: two
// different signed ops that carry the same nonce (the operator's tool draws
// each nonce at random, so only a deliberate reuse makes them). If the
// first one's attempt is killed between its intent and its Decide and the
// second one then spends the nonce, the first one's retry finds the nonce
// spent and its own intent, and is completed: two acts under one nonce,
// each signed by the operator. Recording the nonce in the intent and
// refusing a completion when another admission holds it would close that.

// act is an admitted approval's act in this attempt.
type act struct {
	key   string
	done  bool // the admission says this act already completed
	state ledger.AdmissionState
}

// finished refuses a retry of an act whose admission is Done because it
// failed: the approval is used up. A completed act is nil: the caller
// reports it done without acting again.
func (a *Proxmox) finished(what string, action gate.Action, ad ledger.Admission) error {
	if !ad.Failed {
		return nil
	}
	return a.refused(what, action, fmt.Errorf("%w: this approval's act already ran and failed; sign it again", gate.ErrReplay))
}

type actContextKey struct{}

// approvalKey identifies an approval by its signed bytes: the nonce store
// spends the op inside them once, and an armored signature can be
// re-encoded, so the signature bytes do not name it.
func approvalKey(ap *gate.Approval) string {
	if ap == nil || len(ap.Blob) == 0 {
		return ""
	}
	sum := sha256.Sum256(ap.Blob)
	return hex.EncodeToString(sum[:])
}

// actionDigest identifies a gated action exactly: op, host, guest and
// canonical params.
func actionDigest(action gate.Action) (string, error) {
	params, err := gate.CanonicalJSON(action.Params)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q ", action.Op, action.HostID, action.GuestID)
	h.Write(params)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// refused is the gate refusing an action: a non-retryable application error
// whose type is the gate's code and whose cause wraps the gate's sentinel.
func (a *Proxmox) refused(what string, action gate.Action, err error) error {
	code := gate.Code(err)
	a.log().Warn("gate refused", "op", action.Op, "guest", action.GuestID, "code", code, "err", err)
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("%s: refused by the gate on host %s (%s): %v", what, a.HostID, code, err), code, err)
}

// usedUp refuses an approval whose act completed when its goal (a guest or
// volume gone) is not met: what is there now is something else.
func (a *Proxmox) usedUp(what string, action gate.Action) error {
	return a.refused(what, action, fmt.Errorf("%w: this approval's act already completed; what is there now is another guest or volume", gate.ErrReplay))
}

// authorize runs the gate on this host for action on the live guest g (the
// zero Guest for an action on no guest). role, when set, is the only signer
// role that may approve it. The returned context carries the act, so that
// its first mutating request marks the admission Started; act.done reports
// an act that already completed (the caller returns without acting).
func (a *Proxmox) authorize(ctx context.Context, what string, action gate.Action, g Guest, approval *gate.Approval, role gate.Role) (context.Context, *act, error) {
	if a.Gate == nil {
		return ctx, nil, temporal.NewNonRetryableApplicationError(what+": no gate configured on this host: refusing", "gate_missing", nil)
	}
	req := gate.Request{Action: action, Provenance: a.provenanceOf(g), Approval: approval, RequireRole: role}
	key := approvalKey(approval)
	if key == "" || a.Ledger == nil {
		return a.decide(ctx, what, req, g, key, nil)
	}
	admitMu.Lock()
	defer admitMu.Unlock()
	ad, ok := a.Ledger.Admission(key)
	if ok && ad.State != ledger.Intended {
		return a.readmit(ctx, what, req, g, ad)
	}
	var found *ledger.Admission
	if ok {
		found = &ad
	}
	return a.decide(ctx, what, req, g, key, found)
}

// admitMu makes "is the nonce unspent? record the intent; Decide" one step
// for every approval of this process (the ledger and the nonce store are
// each held by one process), so no other spend of a nonce falls between an
// intent and its Decide.
var admitMu sync.Mutex

// afterNonceSpent, when set (by tests), is called where killpoint.NonceSpent
// is reached; a non-nil error ends the attempt there as a crash would, with
// nothing more written.
var afterNonceSpent func(op string) error

// decide asks the gate to admit req's approval and records the admission.
// intent is the intent an earlier attempt recorded for this approval, nil
// for none. See "Intents" at the top of this file for the interleavings.
func (a *Proxmox) decide(ctx context.Context, what string, req gate.Request, g Guest, key string, intent *ledger.Admission) (context.Context, *act, error) {
	action := req.Action
	var digest string
	wrote := false
	if key != "" && a.Ledger != nil {
		if gate.Classify(action, req.Provenance, a.now()) != gate.Destructive {
			// A benign act is never admitted. Drop an intent first, so
			// that a spend by this act never meets an intent on disk.
			if intent != nil {
				if err := a.Ledger.Drop(key); err != nil {
					return ctx, nil, temporal.NewNonRetryableApplicationError(what+": drop an intent: "+err.Error(), ErrTypeLedger, err)
				}
				intent = nil
			}
		} else {
			var err error
			if digest, err = actionDigest(action); err != nil {
				return ctx, nil, badInput(what, "action params: %v", err)
			}
			cur := ledger.Admission{Key: key, Action: digest, VMID: g.VMID, Instance: instanceOf(g)}
			spent, known := a.Gate.NonceSpent(req.Approval)
			if intent != nil && !sameAct(*intent, cur) && known && !spent {
				// The intent's attempt never spent the nonce: it is moot.
				if err := a.Ledger.Drop(key); err != nil {
					return ctx, nil, temporal.NewNonRetryableApplicationError(what+": drop an intent: "+err.Error(), ErrTypeLedger, err)
				}
				intent = nil
			}
			if intent == nil && known && !spent {
				// Record the intent only while the nonce is unspent: a
				// spent nonce with an intent then means that this
				// approval spent it, for the intent's act.
				if err := a.Ledger.Intend(cur); err != nil {
					return ctx, nil, temporal.NewNonRetryableApplicationError(what+": record the intent to admit: "+err.Error(), ErrTypeLedger, err)
				}
				wrote = true
			}
		}
	}
	dec, err := a.Gate.Decide(ctx, req)
	if err != nil {
		if errors.Is(err, gate.ErrReplay) && intent != nil {
			return a.completeIntent(ctx, what, req, g, digest, *intent)
		}
		if wrote {
			// Every refusal but a replay leaves the nonce unspent; a
			// replay here means a spend this intent does not explain.
			a.dropIntent(key)
		}
		return ctx, nil, a.refused(what, action, err)
	}
	if dec.Class == gate.Benign {
		if wrote || intent != nil {
			a.dropIntent(key)
		}
		// Nothing to admit: the act needs no signature. An approval that
		// came with it was spent by the gate when it held, so it cannot be
		// admitted later for another instance at this VMID.
		if dec.ApprovalCode != "" {
			a.log().Info("gate: benign act came with an approval", "op", action.Op, "guest", action.GuestID, "approval_code", dec.ApprovalCode)
		}
		return ctx, nil, nil
	}
	if a.Ledger == nil {
		return ctx, nil, temporal.NewNonRetryableApplicationError(what+": no provenance ledger to record the admission in", ErrTypeLedger, nil)
	}
	killpoint.Reach(killpoint.NonceSpent, action.Op)
	if afterNonceSpent != nil {
		if err := afterNonceSpent(action.Op); err != nil {
			return ctx, nil, err
		}
	}
	if digest == "" {
		if digest, err = actionDigest(action); err != nil {
			return ctx, nil, badInput(what, "action params: %v", err)
		}
	}
	return a.admit(ctx, what, action.Op, ledger.Admission{Key: key, Action: digest, VMID: g.VMID, Instance: instanceOf(g), ExpiresAt: dec.Op.Op.ExpiresAt})
}

// admit records the admission ad (promoting its intent, if any) and
// returns the act it authorises.
func (a *Proxmox) admit(ctx context.Context, what, op string, ad ledger.Admission) (context.Context, *act, error) {
	if err := a.Ledger.Admit(ad); err != nil {
		// The nonce is spent and the admission is not on disk. With an
		// intent on disk a retry completes it; without one it is refused
		// as a replay. Fail-safe either way.
		return ctx, nil, temporal.NewNonRetryableApplicationError(what+": record admission: "+err.Error(), ErrTypeLedger, err)
	}
	killpoint.Reach(killpoint.GateAccepted, op)
	at := &act{key: ad.Key, state: ledger.Admitted}
	return context.WithValue(ctx, actContextKey{}, at), at, nil
}

// completeIntent admits an approval whose nonce is spent while the ledger
// holds this host's intent for it: the crashed attempt that wrote the
// intent spent the nonce and died before Admit. The retry must be the same
// act (action digest) on the same guest instance as the intent, and the
// approval must pass every check of the gate but the time window and the
// nonce (Readmit) and not have expired; anything else stays a replay.
func (a *Proxmox) completeIntent(ctx context.Context, what string, req gate.Request, g Guest, digest string, intent ledger.Admission) (context.Context, *act, error) {
	if digest == "" || !sameAct(intent, ledger.Admission{Action: digest, VMID: g.VMID, Instance: instanceOf(g)}) {
		return ctx, nil, a.refused(what, req.Action, fmt.Errorf(
			"%w: this approval's nonce was spent for another act or guest instance; sign the act again", gate.ErrReplay))
	}
	dec, err := a.Gate.Readmit(ctx, req)
	if err != nil {
		return ctx, nil, a.refused(what, req.Action, err)
	}
	if dec.Class == gate.Benign || dec.Op == nil {
		return ctx, nil, a.refused(what, req.Action, fmt.Errorf(
			"%w: this approval's nonce is spent and the act needs none", gate.ErrReplay))
	}
	if now := a.now(); !now.Before(dec.Op.Op.ExpiresAt) {
		return ctx, nil, a.refused(what, req.Action, fmt.Errorf(
			"%w: its nonce was spent, but it expired at %s before it was admitted", gate.ErrExpired, dec.Op.Op.ExpiresAt.Format(gate.TimeLayout)))
	}
	a.log().Info("gate: approval's nonce was spent by a crashed attempt of this act; admitting it", "op", req.Action.Op, "guest", req.Action.GuestID)
	return a.admit(ctx, what, req.Action.Op, ledger.Admission{Key: intent.Key, Action: digest, VMID: g.VMID, Instance: instanceOf(g), ExpiresAt: dec.Op.Op.ExpiresAt})
}

// sameAct reports whether two admissions bind the same act on the same
// guest instance.
func sameAct(x, y ledger.Admission) bool {
	return x.Action == y.Action && x.VMID == y.VMID && x.Instance == y.Instance
}

// dropIntent removes an intent the gate's answer made moot. Failing to is
// harmless: an intent grants nothing alone and lapses.
func (a *Proxmox) dropIntent(key string) {
	if err := a.Ledger.Drop(key); err != nil {
		a.log().Warn("ledger: could not drop an intent", "err", err)
	}
}

// readmit decides a retry of an approval this host admitted before.
func (a *Proxmox) readmit(ctx context.Context, what string, req gate.Request, g Guest, ad ledger.Admission) (context.Context, *act, error) {
	dec, err := a.Gate.Readmit(ctx, req)
	if err != nil {
		return ctx, nil, a.refused(what, req.Action, err)
	}
	if dec.Class == gate.Benign {
		return ctx, nil, nil
	}
	digest, err := actionDigest(req.Action)
	if err != nil {
		return ctx, nil, badInput(what, "action params: %v", err)
	}
	if ad.Action != digest || ad.VMID != g.VMID {
		return ctx, nil, a.refused(what, req.Action, fmt.Errorf(
			"%w: this approval was admitted for another act; sign the act again", gate.ErrReplay))
	}
	if ad.State == ledger.Done {
		// Nothing more is done under it: the caller only reports the act
		// done (the guest may look different since: a restore replaces its
		// configuration).
		if err := a.finished(what, req.Action, ad); err != nil {
			return ctx, nil, err
		}
		return ctx, &act{key: ad.Key, done: true, state: ad.State}, nil
	}
	if ad.Instance != instanceOf(g) {
		return ctx, nil, a.refused(what, req.Action, fmt.Errorf(
			"%w: this approval was admitted for another instance of guest %d; sign the act again", gate.ErrReplay, g.VMID))
	}
	switch ad.State {
	case ledger.Admitted:
		if now := a.now(); !now.Before(ad.ExpiresAt) {
			return ctx, nil, a.refused(what, req.Action, fmt.Errorf(
				"%w: admitted, but no request was sent before it expired at %s", gate.ErrExpired, ad.ExpiresAt.Format(gate.TimeLayout)))
		}
	}
	a.log().Info("gate: approval already admitted for this act; continuing", "op", req.Action.Op, "guest", req.Action.GuestID, "state", ad.State)
	at := &act{key: ad.Key, state: ad.State}
	return context.WithValue(ctx, actContextKey{}, at), at, nil
}

// startAct marks the admission of ctx's act Started, durably, before the
// act's first mutating request. Without an act it does nothing.
func (a *Proxmox) startAct(ctx context.Context) error {
	at, _ := ctx.Value(actContextKey{}).(*act)
	if at == nil || at.state == ledger.Started {
		return nil
	}
	if err := a.Ledger.StartAct(at.key); err != nil {
		return temporal.NewNonRetryableApplicationError("record that the approved act starts: "+err.Error(), ErrTypeLedger, err)
	}
	at.state = ledger.Started
	return nil
}

// settle marks an act Done once no retry may lean on its admission: it
// succeeded, or failed for good after its first request went out. An act
// that failed before sending anything keeps its admission until it lapses.
func (a *Proxmox) settle(at *act, err error) {
	if at == nil || at.done || a.Ledger == nil {
		return
	}
	if err != nil && (!isNonRetryable(err) || at.state != ledger.Started) {
		return
	}
	if ferr := a.Ledger.FinishAct(at.key, err != nil); ferr != nil {
		a.log().Error("ledger: could not mark the approved act done", "err", ferr)
	}
}

// forget drops the ledger's entry of a guest that no longer exists.
func (a *Proxmox) forget(what string, vmid int) error {
	if a.Ledger == nil {
		return nil
	}
	if err := a.Ledger.Remove(vmid); err != nil {
		return temporal.NewApplicationErrorWithCause(what+": record removal in the provenance ledger: "+err.Error(), ErrTypeLedger, err)
	}
	return nil
}

func (a *Proxmox) now() time.Time {
	if a.Clock != nil {
		return a.Clock()
	}
	return time.Now()
}
