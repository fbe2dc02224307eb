package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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
// sent. The act's first mutating request marks it Started (launch calls
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
	if key != "" && a.Ledger != nil {
		if ad, ok := a.Ledger.Admission(key); ok {
			return a.readmit(ctx, what, req, g, ad)
		}
	}
	dec, err := a.Gate.Decide(ctx, req)
	if err != nil {
		return ctx, nil, a.refused(what, action, err)
	}
	if dec.Class == gate.Benign {
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
	digest, err := actionDigest(action)
	if err != nil {
		return ctx, nil, badInput(what, "action params: %v", err)
	}
	ad := ledger.Admission{Key: key, Action: digest, VMID: g.VMID, Instance: instanceOf(g), ExpiresAt: dec.Op.Op.ExpiresAt}
	if err := a.Ledger.Admit(ad); err != nil {
		// The nonce is spent and the admission is not on disk: a retry is
		// refused as a replay. Fail-safe; the operator signs again.
		return ctx, nil, temporal.NewNonRetryableApplicationError(what+": record admission: "+err.Error(), ErrTypeLedger, err)
	}
	killpoint.Reach(killpoint.GateAccepted, action.Op)
	at := &act{key: key, state: ledger.Admitted}
	return context.WithValue(ctx, actContextKey{}, at), at, nil
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
