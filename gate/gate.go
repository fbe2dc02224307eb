package gate

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Approval is an operator's approval as received: the raw op blob and its
// armored SSHSIG signature.
type Approval struct {
	Blob      []byte
	Signature []byte
}

// Request asks whether an action may run now.
type Request struct {
	Action     Action
	Provenance Provenance // from the host-local ledger and Proxmox only
	Approval   *Approval  // nil when nothing was signed
	// RequireRole, when set, is the only signer role that may approve this
	// action. The signers.rotate executor sets RoleRecovery when the
	// rotation changes the recovery keys.
	RequireRole Role
}

// Decision is the gate's answer. Code is CodeAllowedBenign, CodeAllowedSigned
// or the rejection's Code.
type Decision struct {
	Class   Class
	Allowed bool
	Code    string
	// Op is the signed op once its signature verified, also when a later
	// check refused it (for the record). Only Allowed grants anything.
	Op *VerifiedOp
	// ApprovalCode is, for a Benign action that came with an approval,
	// what became of the approval: CodeApprovalConsumed when it passed
	// every check and its nonce is now spent, CodeAllowedAdmitted for a
	// Readmit of an approval spent before, or the rejection's code when it
	// was refused (ApprovalErr says why). It is "" when no approval came,
	// and for a Destructive action, whose Code already says it.
	ApprovalCode string
	// ApprovalErr is the refusal of a Benign action's approval, wrapping
	// its sentinel like Decide's error; nil otherwise.
	ApprovalErr error
}

// Gate decides whether actions may run. It is safe for concurrent use.
type Gate struct {
	verifier *Verifier
	log      *slog.Logger
	observe  func(Decision)
}

// Option changes a Gate at New.
type Option func(*Gate)

// WithObserver has observe told every decision the gate audits, after the
// audit record is written (for metrics). Like the audit record, it is a
// signal and never the guard: the decision is made before it is called.
func WithObserver(observe func(Decision)) Option {
	return func(g *Gate) { g.observe = observe }
}

func (g *Gate) now() time.Time {
	if g.verifier != nil {
		return g.verifier.now()
	}
	return time.Now()
}

// New returns a gate that verifies approvals with v and writes an audit
// record for every decision to logger (slog.Default() if nil). With a nil v
// no signer is pinned, so every destructive action stays pending.
func New(v *Verifier, logger *slog.Logger, opts ...Option) *Gate {
	if logger == nil {
		logger = slog.Default()
	}
	g := &Gate{verifier: v, log: logger}
	for _, o := range opts {
		o(g)
	}
	return g
}

// Decide returns a Decision with Allowed set and a nil error when the action
// may run. Otherwise the error wraps the rejection's sentinel (errors.Is) and
// the Decision carries its Code. A destructive action needs an approval whose
// op passes the verifier, whose signer's role permits the op, and whose op,
// host, guest and params name exactly this action; its nonce is burnt only
// when all of that holds.
//
// A benign action is allowed unsigned. An approval that comes with it anyway
// is checked by the same pipeline and, when it holds, spent: an approval is
// consumed by the act it was given for, benign or not, so that it cannot
// destroy a later instance of the guest the op names (the op names no
// instance). The benign act is allowed whatever became of the approval, since
// it needs none; Decision.ApprovalCode and ApprovalErr report it. A refused
// approval keeps its nonce unused, as every rejection does. A nonce store
// failure (code nonce_store) leaves the nonce perhaps unrecorded; it does not
// block the benign act, because refusing the act would not record the nonce
// either, and the same store refuses every destructive act until it works
// again (a FileNonceStore refuses every Use until reopened).
func (g *Gate) Decide(ctx context.Context, req Request) (Decision, error) {
	d, err := g.decide(ctx, req, false)
	g.audit(ctx, req, d, err)
	return d, err
}

func (g *Gate) decide(ctx context.Context, req Request, admitted bool) (Decision, error) {
	d := Decision{Class: Classify(req.Action, req.Provenance, g.now())}
	signed := req.Approval != nil && (len(req.Approval.Blob) != 0 || len(req.Approval.Signature) != 0)
	if d.Class == Benign {
		d.Allowed, d.Code = true, CodeAllowedBenign
		if !signed {
			return d, nil
		}
		// The act needs no signature: the approval's outcome is recorded,
		// never returned as the decision's error.
		vop, code, err := g.verifyApproval(ctx, req, admitted)
		d.Op, d.ApprovalCode, d.ApprovalErr = vop, code, err
		if err == nil && !admitted {
			d.ApprovalCode = CodeApprovalConsumed
		}
		return d, nil
	}
	if !signed || len(req.Approval.Blob) == 0 || len(req.Approval.Signature) == 0 {
		d.Code = Code(ErrPendingSignature)
		return d, fmt.Errorf("%w: %s", ErrPendingSignature, describe(req.Action))
	}
	vop, code, err := g.verifyApproval(ctx, req, admitted)
	d.Op = vop
	if err != nil {
		d.Code = code
		return d, err
	}
	d.Allowed, d.Code = true, code
	return d, nil
}

// verifyApproval runs the verify pipeline with the gate's role and binding
// checks on req's approval, spending its nonce unless admitted (Readmit).
// The code is CodeAllowedSigned, CodeAllowedAdmitted or the rejection's.
func (g *Gate) verifyApproval(ctx context.Context, req Request, admitted bool) (*VerifiedOp, string, error) {
	if len(req.Approval.Blob) == 0 || len(req.Approval.Signature) == 0 {
		err := fmt.Errorf("%w: the approval lacks its op or its signature", ErrPendingSignature)
		return nil, Code(err), err
	}
	if g.verifier == nil {
		err := fmt.Errorf("%w: no signer keys are pinned on this host", ErrUnknownSigner)
		return nil, Code(err), err
	}
	check := func(v *VerifiedOp) error {
		if !v.Signer.Role.permits(v.Op.Op) {
			return fmt.Errorf("%w: a %s key may not approve %s", ErrRoleDenied, v.Signer.Role, v.Op.Op)
		}
		if req.RequireRole != "" && v.Signer.Role != req.RequireRole {
			return fmt.Errorf("%w: this %s needs a %s key, it was signed with a %s key", ErrRoleDenied, v.Op.Op, req.RequireRole, v.Signer.Role)
		}
		return Bind(req.Action, v.Op)
	}
	var (
		vop *VerifiedOp
		err error
	)
	if admitted {
		vop, err = g.verifier.reverify(req.Approval.Signature, req.Approval.Blob, check)
	} else {
		vop, err = g.verifier.verify(ctx, req.Approval.Signature, req.Approval.Blob, check)
	}
	if err != nil {
		return vop, Code(err), err
	}
	if admitted {
		return vop, CodeAllowedAdmitted, nil
	}
	return vop, CodeAllowedSigned, nil
}

// Readmit decides a retry of an act this host already admitted: it runs
// every stage and check of Decide except the time window and the nonce, which
// the first admission passed and spent. The caller must hold a durable
// admission of this approval, made when Decide allowed it, bound to the same
// action and guest instance (see "Admissions" in the package doc): Readmit
// alone grants nothing to an approval that was never admitted.
func (g *Gate) Readmit(ctx context.Context, req Request) (Decision, error) {
	d, err := g.decide(ctx, req, true)
	g.audit(ctx, req, d, err)
	return d, err
}

// Bind checks that op names exactly action: same op, host, guest and
// canonically equal params. The error wraps ErrBindingMismatch.
func Bind(action Action, op Op) error {
	switch {
	case op.Op != action.Op:
		return fmt.Errorf("%w: signed op %q, action %q", ErrBindingMismatch, op.Op, action.Op)
	case op.HostID != action.HostID:
		return fmt.Errorf("%w: signed host %q, action host %q", ErrBindingMismatch, op.HostID, action.HostID)
	case op.GuestID != action.GuestID:
		return fmt.Errorf("%w: signed guest %q, action guest %q", ErrBindingMismatch, op.GuestID, action.GuestID)
	}
	signed, err := CanonicalJSON(op.Params)
	if err != nil {
		return fmt.Errorf("%w: signed params: %v", ErrBindingMismatch, err)
	}
	actual, err := CanonicalJSON(action.Params)
	if err != nil {
		return fmt.Errorf("%w: action params: %v", ErrBindingMismatch, err)
	}
	if !bytes.Equal(signed, actual) {
		return fmt.Errorf("%w: signed params %s, action params %s", ErrBindingMismatch, signed, actual)
	}
	return nil
}

func describe(a Action) string {
	params, err := CanonicalJSON(a.Params)
	if err != nil {
		params = []byte("(unencodable)")
	}
	return fmt.Sprintf("%s host=%s guest=%s params=%s", a.Op, a.HostID, a.GuestID, params)
}

// permits reports whether role may approve op. Recovery keys exist to
// regain control after an operational key is lost, so they rotate signers
// and nothing else.
func (r Role) permits(op string) bool {
	switch r {
	case RoleOperational:
		return true
	case RoleRecovery:
		return op == OpSignersRotate
	}
	return false
}

// spentLookup is a NonceStore that can tell whether a nonce is recorded
// without recording it.
type spentLookup interface {
	Spent(nonce string) bool
}

// NonceSpent reports whether the nonce named in approval's op is recorded
// as spent in this host's nonce store. known is false when the blob does not
// parse or the store cannot tell. It verifies nothing and grants nothing: an
// executor asks it, under the same lock as the Decide that follows, to learn
// whether a nonce is still unspent before it records its intent to have
// Decide spend it (see "Admissions" in the package doc).
func (g *Gate) NonceSpent(approval *Approval) (spent, known bool) {
	if g.verifier == nil || approval == nil {
		return false, false
	}
	lookup, ok := g.verifier.nonces.(spentLookup)
	if !ok {
		return false, false
	}
	op, err := ParseOp(approval.Blob)
	if err != nil {
		return false, false
	}
	return lookup.Spent(op.Nonce), true
}
