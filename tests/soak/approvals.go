package main

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows"
)

// sshKey is a key made by ssh-keygen.
type sshKey struct {
	path string // private key
	pub  string // authorized_keys line
}

// keys are the operators' keys: the hosts pin operational and recovery;
// forged is pinned nowhere.
type keys struct {
	operational, recovery, forged sshKey
	dir                           string
	n                             int
	mu                            sync.Mutex
}

func newKeys(dir string) (*keys, error) {
	k := &keys{dir: dir}
	for _, p := range []struct {
		key  *sshKey
		name string
	}{{&k.operational, "operational"}, {&k.recovery, "recovery"}, {&k.forged, "forged"}} {
		path := filepath.Join(dir, "id_"+p.name)
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", p.name+"@soak", "-f", path).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
		pub, err := os.ReadFile(path + ".pub")
		if err != nil {
			return nil, err
		}
		*p.key = sshKey{path: path, pub: strings.TrimSpace(string(pub))}
	}
	return k, nil
}

// sign canonicalises op and signs it with `ssh-keygen -Y sign`, as an
// operator without any project tool would.
func (k *keys) sign(key sshKey, op gate.Op) (workflows.Approval, error) {
	blob, err := gate.Canonicalize(op)
	if err != nil {
		return workflows.Approval{}, err
	}
	k.mu.Lock()
	k.n++
	path := filepath.Join(k.dir, fmt.Sprintf("op-%d.json", k.n))
	k.mu.Unlock()
	defer os.Remove(path)
	defer os.Remove(path + ".sig")
	if err := os.WriteFile(path, blob, 0o600); err != nil {
		return workflows.Approval{}, err
	}
	if out, err := exec.Command("ssh-keygen", "-Y", "sign", "-n", gate.Namespace, "-f", key.path, path).CombinedOutput(); err != nil {
		return workflows.Approval{}, fmt.Errorf("ssh-keygen -Y sign: %w: %s", err, out)
	}
	sig, err := os.ReadFile(path + ".sig")
	if err != nil {
		return workflows.Approval{}, err
	}
	return workflows.Approval{Blob: string(blob), Signature: string(sig)}, nil
}

// Kinds of approvals the soak sends, and the gate code each invalid one
// must be refused with.
const (
	apValid       = "valid"
	apForged      = "forged"        // signed by a key no host pins
	apTampered    = "tampered"      // blob changed after signing
	apReplayed    = "replayed"      // an approval a host already accepted, sent again
	apExpired     = "expired"       // expires_at in the past
	apOverLong    = "over_long"     // valid for longer than the host's cap (24h)
	apOtherGuest  = "other_guest"   // signed for another guest of the host
	apOtherAction = "other_action"  // signed for another act on the guest (params)
	apOtherHost   = "other_host"    // signed for another host
	apWrongRole   = "wrong_role"    // signed by the recovery key
	apNotPending  = "not_pending"   // outcome: the guest no longer waited for it
	apNoAnswer    = "no_answer"     // outcome: no verdict within the timeout
	apAccepted    = "accepted"      // outcome
	apSendFailure = "send_failure"  // outcome: the update could not be sent
	apActionFail  = "accepted_fail" // outcome: accepted, the act failed
)

var approvalKinds = []weighted{
	{apValid, 30}, {apForged, 7}, {apTampered, 7}, {apReplayed, 10}, {apExpired, 7}, {apOverLong, 7},
	{apOtherGuest, 8}, {apOtherAction, 8}, {apOtherHost, 8}, {apWrongRole, 8},
}

// approvalRecord is one approval the soak sent, and what came back.
type approvalRecord struct {
	Kind     string    `json:"kind"`
	Host     string    `json:"host"`
	VMID     int       `json:"vmid"`
	Op       string    `json:"op"`
	Nonce    string    `json:"nonce"`
	Key      string    `json:"key"` // sha256 of the signed bytes, as the ledger keys admissions
	Expires  time.Time `json:"expires_at"`
	Expected string    `json:"expected"` // the code an invalid approval must be refused with
	Outcome  string    `json:"outcome"`  // accepted, a refusal code, not_pending, no_answer...
	Detail   string    `json:"detail,omitempty"`
	Sent     time.Time `json:"sent"`
	// Template is what the approval was signed for.
	Template workflows.OpTemplate `json:"template"`
	approval workflows.Approval
}

func randomNonce() string {
	b := make([]byte, 16)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

func approvalKey(ap workflows.Approval) string {
	sum := sha256.Sum256([]byte(ap.Blob))
	return hex.EncodeToString(sum[:])
}

// approvalFor makes an approval of kind for the pending action tpl of
// guest vmid on host, or nil when that kind cannot be made now (no earlier
// approval to replay). accepted are approvals hosts accepted so far.
func (f *fleet) approvalFor(rng *rand.Rand, kind string, h *host, vmid int, tpl workflows.OpTemplate, accepted []approvalRecord) (*approvalRecord, error) {
	now := time.Now().UTC().Truncate(time.Second)
	op := gate.Op{Op: tpl.Op, HostID: tpl.HostID, GuestID: tpl.GuestID, Params: tpl.Params,
		Nonce: randomNonce(), NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(10 * time.Minute), KeyID: "ops"}
	key := f.keys.operational
	rec := &approvalRecord{Kind: kind, Host: h.id, VMID: vmid, Op: tpl.Op}
	switch kind {
	case apValid:
	case apForged:
		key = f.keys.forged
		rec.Expected = "unknown_signer"
	case apTampered:
		rec.Expected = "signature"
	case apExpired:
		op.NotBefore, op.ExpiresAt = now.Add(-30*time.Minute), now.Add(-10*time.Minute)
		rec.Expected = "expired"
	case apOverLong:
		op.ExpiresAt = op.NotBefore.Add(25 * time.Hour)
		rec.Expected = "validity_too_long"
	case apOtherGuest:
		other := vmid + 1 + rng.IntN(5)
		op.GuestID = fmt.Sprint(other)
		rec.Expected = "binding_mismatch"
	case apOtherAction:
		params := map[string]any{}
		for k, v := range tpl.Params {
			params[k] = v
		}
		if params["kind"] == "lxc" {
			params["kind"] = "qemu"
		} else {
			params["kind"] = "lxc"
		}
		op.Params = params
		rec.Expected = "binding_mismatch"
	case apOtherHost:
		op.HostID = f.otherHost(h)
		rec.Expected = "wrong_host"
	case apWrongRole:
		key = f.keys.recovery
		op.KeyID = "recovery"
		rec.Expected = "role_denied"
	case apReplayed:
		if len(accepted) == 0 {
			return nil, nil
		}
		// Prefer one accepted for this very guest (the same act on an
		// earlier instance); else any this host accepted.
		var pick *approvalRecord
		for i := len(accepted) - 1; i >= 0; i-- {
			a := accepted[i]
			if a.Host == h.id && a.VMID == vmid {
				pick = &accepted[i]
				break
			}
		}
		if pick == nil {
			for i := len(accepted) - 1; i >= 0; i-- {
				if accepted[i].Host == h.id {
					pick = &accepted[i]
					break
				}
			}
		}
		if pick == nil {
			return nil, nil
		}
		r := *pick
		r.Kind, r.Outcome, r.Detail, r.VMID = apReplayed, "", "", vmid
		r.Expected = replayCode(r, h.id, tpl, time.Now())
		return &r, nil
	}
	ap, err := f.keys.sign(key, op)
	if err != nil {
		return nil, err
	}
	if kind == apTampered {
		// One more minute of validity, after signing.
		op.ExpiresAt = op.ExpiresAt.Add(time.Minute)
		blob, err := gate.Canonicalize(op)
		if err != nil {
			return nil, err
		}
		ap.Blob = string(blob)
	}
	rec.Nonce, rec.Key, rec.Expires, rec.approval = op.Nonce, approvalKey(ap), op.ExpiresAt, ap
	rec.Template = workflows.OpTemplate{Op: op.Op, HostID: op.HostID, GuestID: op.GuestID, Params: op.Params}
	return rec, nil
}

// replayCode is the code a replayed approval must be refused with: the
// first stage of the gate's pipeline it fails after the signature (which
// verifies: the approval is one an operator made).
func replayCode(r approvalRecord, hostID string, pending workflows.OpTemplate, now time.Time) string {
	switch {
	case r.Template.HostID != hostID:
		return "wrong_host"
	case !now.Before(r.Expires):
		return "expired"
	case r.Template.Op != pending.Op || r.Template.GuestID != pending.GuestID || !sameParams(r.Template.Params, pending.Params):
		return "binding_mismatch"
	}
	return "replay"
}

func sameParams(a, b map[string]any) bool {
	ca, errA := gate.CanonicalJSON(a)
	cb, errB := gate.CanonicalJSON(b)
	return errA == nil && errB == nil && string(ca) == string(cb)
}

func (f *fleet) otherHost(h *host) string {
	for _, o := range f.hosts {
		if o.id != h.id {
			return o.id
		}
	}
	return h.id + "-other"
}

// sendApproval sends the approval through the guest workflow's approve
// Update, as `felhomctl approve` does, and records the verdict.
func (f *fleet) sendApproval(ctx context.Context, rec *approvalRecord) {
	rec.Sent = time.Now()
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	var v workflows.ApprovalVerdict
	h, err := f.tc.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID: workflows.GuestWorkflowID(rec.Host, rec.VMID), UpdateName: workflows.UpdateApprove,
		Args: []any{rec.approval}, WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err == nil {
		err = h.Get(ctx, &v)
	}
	var appErr *temporal.ApplicationError
	switch {
	case err == nil && v.Accepted && v.Code == "":
		rec.Outcome = apAccepted
	case err == nil && v.Accepted:
		rec.Outcome, rec.Detail = apActionFail, v.Detail
	case err == nil:
		rec.Outcome, rec.Detail = v.Code, v.Detail
	case errors.As(err, &appErr):
		// The Update's validator: nothing (or something else) pending.
		rec.Outcome, rec.Detail = apNotPending, appErr.Message()
	case ctx.Err() != nil:
		rec.Outcome, rec.Detail = apNoAnswer, err.Error()
	default:
		rec.Outcome, rec.Detail = apSendFailure, err.Error()
	}
}
