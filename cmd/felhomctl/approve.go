package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows"
)

const approveHelp = `Usage: felhomctl approve WORKFLOW_ID [--key FILE] [--key-id ID] [--ttl 10m] [--yes] [flags]

Approves the destructive action a guest workflow (WORKFLOW_ID is
guest/HOST/VMID) waits for: reads it from the workflow's pending query,
checks it, builds the op blob from it with a fresh random nonce, not_before
one minute ago (clock skew) and expires_at --ttl from now, shows the exact
op and asks for confirmation, canonicalises it with the gate's
canonicaliser, signs it (SSHSIG, namespace felhom-op-v1), sends it with the
workflow's approve Update, and waits for the host's verdict: the host
verifies the signature against its pinned keys and performs the action.

The pending query is answered through the Temporal server, which is not
trusted: before anything is signed, approve refuses (exit 1, naming the
field and the reason; nothing is signed or sent) an answer whose
  host_id or guest_id is not the HOST and VMID of WORKFLOW_ID,
  op is not one a guest workflow can wait for (guest.destroy, disk.detach,
     volume.wipe, guest.config; never signers.rotate, disk.shrink (Proxmox
     cannot shrink a disk, so no plan holds it), guest.restore or an unknown op),
  params name a volume of another guest (vm-N-..., subvol-N-... with N not
     the VMID), or, for volume.wipe, no volume of this guest.

Then it prints every field of the op it is about to sign (op, host_id,
guest_id, params as canonical JSON, nonce, not_before, expires_at, key_id)
on stderr and reads one line from stdin: "yes" signs and sends it, anything
else refuses (exit 1). Without --yes, stdin that ends before a line
(closed, /dev/null, an empty pipe) is refused with exit 2. --yes signs
without asking, for scripts that have checked the op themselves.

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
	yes := fs.Bool("yes", false, "sign and send without asking for confirmation on stdin")
	pos, err := c.parseFlags(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErrorf("WORKFLOW_ID is required, e.g. guest/pve1/101 (see felhomctl pending)")
	}
	host, vmid, err := parseGuestWorkflowID(pos[0])
	if err != nil {
		return err
	}
	id := workflows.GuestWorkflowID(host, vmid)
	if err := sf.check(); err != nil {
		return err
	}
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
	if err := checkPending(host, vmid, t); err != nil {
		return fmt.Errorf("%s: refusing to sign the pending action the server returned; nothing was signed or sent:\n%w", id, err)
	}
	op, blob, err := prepareOp(gate.Op{Op: t.Op, HostID: t.HostID, GuestID: t.GuestID, Params: t.Params},
		key.Signer.PublicKey(), sf.keyID, sf.ttl, sf.maxValidity, time.Now())
	if err != nil {
		return fmt.Errorf("%s: refusing to sign the pending action; nothing was signed or sent: %w", id, err)
	}
	if !*yes || !c.json() {
		printOp(c.stderr, id, p.Action.Reason, op)
	}
	if !*yes {
		if err := confirm(c.stdin, c.stderr); err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
	}
	approval, err := signBlob(key.Signer, blob)
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

// parseGuestWorkflowID reads guest/HOST/VMID, the only kind of workflow
// that waits for an approval.
func parseGuestWorkflowID(id string) (string, int, error) {
	// HOST/VMID, as status takes it, names the same workflow.
	h, v, ok := strings.Cut(strings.TrimPrefix(id, "guest/"), "/")
	vmid, err := strconv.Atoi(v)
	if !ok || h == "" || strings.Contains(v, "/") || err != nil || vmid < 100 || strconv.Itoa(vmid) != v {
		return "", 0, usageErrorf("WORKFLOW_ID %q is not guest/HOST/VMID: only a guest workflow waits for an approval (see felhomctl pending)", id)
	}
	return h, vmid, nil
}

// pendingOps are the ops a guest workflow's plan can hold for a signature.
// Anything else in a pending answer (signers.rotate, guest.restore, an
// unknown op) was not put there by a guest workflow. disk.shrink is not
// among them: a plan notes a disk larger than the spec, since no executor
// can shrink one, and an approval for it would authorise nothing.
var pendingOps = []string{gate.OpGuestDestroy, gate.OpDiskDetach, gate.OpVolumeWipe, gate.OpGuestConfig}

// volumeOwner finds the VMIDs a volume ID names as its owner:
// local-lvm:vm-101-disk-0, local:101/vm-101-disk-0.qcow2,
// local-zfs:subvol-101-disk-0. Templates' base images (base-N-...) are
// shared read-only by linked clones and name no owner.
var volumeOwner = regexp.MustCompile(`(?:^|[:/])(?:vm|subvol)-(\d+)-`)

// pendingRefusal is one reason not to sign a pending answer.
type pendingRefusal struct{ Field, Reason string }

func (r *pendingRefusal) Error() string { return r.Field + ": " + r.Reason }

// checkPending refuses a pending answer that the guest workflow
// guest/host/vmid cannot have given: another host or guest, an op no guest
// plan gates, or params naming another guest's volume. The server that
// answers the query is not trusted; the host checks the signed op again,
// but a signature, once made, is a standing capability until it expires.
func checkPending(host string, vmid int, t workflows.OpTemplate) error {
	var errs []error
	refuse := func(field, format string, args ...any) {
		errs = append(errs, &pendingRefusal{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	guest := strconv.Itoa(vmid)
	if !slices.Contains(pendingOps, t.Op) {
		refuse("op", "%q cannot be pending on a guest workflow (only %s are)", t.Op, strings.Join(pendingOps, ", "))
	}
	if t.HostID != host {
		refuse("host_id", "%q is not the workflow's host %q", t.HostID, host)
	}
	if t.GuestID != guest {
		refuse("guest_id", "%q is not the workflow's guest %q", t.GuestID, guest)
	}
	ownVolume := false
	for _, k := range slices.Sorted(maps.Keys(t.Params)) {
		s, ok := t.Params[k].(string)
		if !ok {
			continue
		}
		for _, m := range volumeOwner.FindAllStringSubmatch(s, -1) {
			if m[1] == guest {
				ownVolume = ownVolume || k == "volume"
				continue
			}
			refuse("params."+k, "%q names a volume of guest %s, not of guest %s", s, m[1], guest)
		}
	}
	if t.Op == gate.OpVolumeWipe && !ownVolume {
		refuse("params.volume", "%s must name a volume of guest %s, got %s", t.Op, guest, paramsText(t.Params))
	}
	return errors.Join(errs...)
}

// printOp shows every field of the op about to be signed.
func printOp(w io.Writer, id, reason string, op gate.Op) {
	fmt.Fprintf(w, "%s waits for a signature on:\n", id)
	if reason != "" {
		fmt.Fprintf(w, "  reason      %s\n", reason)
	}
	for _, f := range [][2]string{
		{"op", op.Op}, {"host_id", op.HostID}, {"guest_id", op.GuestID}, {"params", paramsText(op.Params)},
		{"nonce", op.Nonce}, {"not_before", op.NotBefore.Format(gate.TimeLayout)},
		{"expires_at", op.ExpiresAt.Format(gate.TimeLayout)}, {"key_id", op.KeyID},
	} {
		fmt.Fprintf(w, "  %-11s %s\n", f[0], f[1])
	}
}

// errNotConfirmed means the operator answered something other than "yes".
var errNotConfirmed = errors.New("not approved; nothing was signed or sent")

// confirm asks on w and reads one line from r: "yes" confirms. No line at
// all (stdin ended: closed, /dev/null, an empty pipe) is a usage error: the
// command cannot ask, and --yes was not given.
func confirm(r io.Reader, w io.Writer) error {
	fmt.Fprint(w, `Sign it and send it to the host? Type "yes" to approve: `)
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && (!errors.Is(err, io.EOF) || line == "") {
		fmt.Fprintln(w)
		return usageErrorf("no confirmation on stdin (it ended before a line was read): answer \"yes\" at the prompt, or give --yes to approve without asking; nothing was signed or sent")
	}
	if answer := strings.TrimSpace(line); answer != "yes" {
		return fmt.Errorf("answered %q: %w", answer, errNotConfirmed)
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
