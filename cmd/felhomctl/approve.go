package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows"
)

const approveHelp = `Usage: felhomctl approve WORKFLOW_ID [--key FILE] [--key-id ID] [--ttl 10m] [flags]

Approves the destructive action a guest workflow waits for: reads it from
the workflow's pending query, builds the op blob from it with a fresh random
nonce, not_before one minute ago (clock skew) and expires_at --ttl from now,
canonicalises it with the gate's canonicaliser, signs it (SSHSIG, namespace
felhom-op-v1), sends it with the workflow's approve Update, and waits for the
host's verdict: the host verifies the signature against its pinned keys and
performs the action.

Prints "accepted" (exit 0), or "rejected: CODE: DETAIL" with the gate's
typed code (unknown_signer, expired, binding_mismatch, replay, ...; exit 1).
An action the host allowed but Proxmox failed prints "accepted, but the
action failed" (exit 1).
` + keyDoc

// approveResult is approve's JSON output; field names are stable.
type approveResult struct {
	WorkflowID string `json:"workflow_id"`
	Op         string `json:"op"`
	HostID     string `json:"host_id"`
	GuestID    string `json:"guest_id"`
	Nonce      string `json:"nonce"`
	KeyID      string `json:"key_id"`
	Accepted   bool   `json:"accepted"`
	Code       string `json:"code,omitempty"`
	Detail     string `json:"detail,omitempty"`
}

func (c *command) approve(args []string) error {
	fs := c.newFlagSet("approve", approveHelp)
	sf := addSignFlags(fs)
	pos, err := c.parseFlags(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErrorf("WORKFLOW_ID is required, e.g. guest/pve1/101 (see felhomctl pending)")
	}
	if err := sf.check(); err != nil {
		return err
	}
	id := pos[0]
	key, err := loadSigner(context.Background(), sf.key, sf.keyID)
	if err != nil {
		return err
	}
	defer key.Close()

	ctx, cancel := c.context()
	defer cancel()
	tc, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer tc.Close()

	var p *workflows.PendingAction
	if err := c.query(ctx, tc, id, workflows.QueryPending, &p); err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("%s: no action is waiting for a signature", id)
	}
	t := p.OpTemplate
	approval, op, err := signOp(gate.Op{Op: t.Op, HostID: t.HostID, GuestID: t.GuestID, Params: t.Params}, key.Signer, sf.keyID, sf.ttl, time.Now())
	if err != nil {
		return fmt.Errorf("sign the pending action: %w", err)
	}
	if !c.json() {
		fmt.Fprintf(c.stderr, "%s: signed %s on %s/%s %s (nonce %s, valid until %s); waiting for the host's verdict\n",
			id, op.Op, op.HostID, op.GuestID, paramsText(op.Params), op.Nonce, op.ExpiresAt.Format(time.RFC3339))
	}
	verdict, err := c.sendApproval(ctx, tc, id, approval)
	if err != nil {
		return err
	}
	res := approveResult{
		WorkflowID: id, Op: op.Op, HostID: op.HostID, GuestID: op.GuestID, Nonce: op.Nonce, KeyID: op.KeyID,
		Accepted: verdict.Accepted, Code: verdict.Code, Detail: verdict.Detail,
	}
	if c.json() {
		if err := writeJSON(c.stdout, res); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(c.stdout, verdictText(verdict))
	}
	if !verdict.Accepted || verdict.Code != "" {
		return errReported
	}
	return nil
}

// sendApproval sends approval with the approve Update and waits for the
// verdict, reporting progress. A refusal by the Update's validator (nothing
// pending any more) is a verdict too.
func (c *command) sendApproval(ctx context.Context, tc client.Client, id string, approval workflows.Approval) (workflows.ApprovalVerdict, error) {
	var v workflows.ApprovalVerdict
	probe := func(ctx context.Context) string {
		st, err := c.queryStatus(ctx, tc, id)
		if err != nil {
			return ""
		}
		return "phase " + st.Phase
	}
	err := c.waitWithProgress(ctx, id, probe, func(ctx context.Context) error {
		h, err := tc.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
			WorkflowID:   id,
			UpdateName:   workflows.UpdateApprove,
			Args:         []any{approval},
			WaitForStage: client.WorkflowUpdateStageCompleted,
		})
		if err != nil {
			return err
		}
		return h.Get(ctx, &v)
	})
	if errors.As(err, new(*waitTimeout)) {
		return v, err
	}
	if err != nil && isRejection(err) {
		return workflows.ApprovalVerdict{Code: "not_pending", Detail: rejectionText(err)}, nil
	}
	if err != nil {
		return v, fmt.Errorf("%s: send approval: %w", id, err)
	}
	return v, nil
}

func verdictText(v workflows.ApprovalVerdict) string {
	switch {
	case v.Accepted && v.Code == "":
		if v.Detail != "" && v.Detail != "done" {
			return "accepted (" + v.Detail + ")"
		}
		return "accepted"
	case v.Accepted:
		return "accepted, but the action failed: " + v.Detail
	}
	detail := v.Detail
	// The host's message repeats the code; keep it once.
	detail = strings.TrimPrefix(detail, v.Code+": ")
	if detail == "" {
		return "rejected: " + v.Code
	}
	return "rejected: " + v.Code + ": " + detail
}
