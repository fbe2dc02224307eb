package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

const jobHelp = `Usage: felhomctl job submit --op OP --host H [--guest G] [--params JSON] [--key FILE] [--ttl 10m] [flags]

Signed one-shot jobs: destructive operations that do not come from desired
state. Hosts run guest.restore (params {"archive": VOLID[, "storage": S, "kind": K]}),
volume.wipe (params {"volume": VOLID}; --guest is the VMID the volume's name
belongs to, e.g. 101 for local-lvm:vm-101-disk-1, or empty) and guest.destroy
(params {"kind": "qemu"|"lxc"}).

"job submit" builds the op from the flags with a fresh nonce, signs it, starts
the SignedJobWorkflow job/NONCE on the host's task queue, and waits for its
result. The host verifies the signature and that it names exactly the
action before it acts. Prints "done" (exit 0), "rejected: CODE: DETAIL" with
the gate's code, or "failed: DETAIL" (exit 1). Malformed flags or params exit
2 before anything is signed or sent.

A job on a guest (guest.destroy, guest.restore, a volume.wipe with --guest)
is run by that guest's workflow, guest/HOST/VMID, between two of its passes
(started, without a desired state, if it does not run): nothing else touches
the guest meanwhile. After a guest.destroy the guest's desired state is
absent, so it is not created again. job/NONCE stays the job's record:
Temporal refuses a second job of that ID while its history exists, and the
host's nonce store refuses the same op after that.
` + keyDoc

// jobResult is job submit's JSON output; field names are stable.
type jobResult struct {
	WorkflowID string    `json:"workflow_id"`
	Op         string    `json:"op"`
	HostID     string    `json:"host_id"`
	GuestID    string    `json:"guest_id"`
	Nonce      string    `json:"nonce"`
	KeyID      string    `json:"key_id"`
	Done       bool      `json:"done"`
	Code       string    `json:"code,omitempty"` // gate rejection code
	Detail     string    `json:"detail,omitempty"`
	Finished   time.Time `json:"finished,omitzero"`
}

func (c *command) job(args []string) error {
	if len(args) == 0 || args[0] != "submit" {
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-help" || args[0] == "-h" || args[0] == "help") {
			fmt.Fprint(c.stdout, jobHelp)
			return nil
		}
		return usageErrorf("want \"job submit\"\n\n%s", jobHelp)
	}
	fs := c.newFlagSet("job submit", jobHelp)
	opName := fs.String("op", "", "operation: guest.restore, volume.wipe, guest.destroy (required)")
	host := fs.String("host", "", "host `ID` the job runs on (required)")
	guest := fs.String("guest", "", "guest `VMID` the op names")
	params := fs.String("params", "{}", "op parameters as a JSON `OBJECT`")
	sf := addSignFlags(fs)
	if _, err := c.parseFlags(fs, args[1:], 0); err != nil {
		return err
	}
	if err := sf.check(); err != nil {
		return err
	}
	if *opName == "" || *host == "" {
		return usageErrorf("--op and --host are required")
	}
	p, err := parseParams(*params)
	if err != nil {
		return err
	}
	op := gate.Op{Op: *opName, HostID: *host, GuestID: *guest, Params: p}
	// Refuse a malformed op before touching a key.
	trial := op
	trial.Nonce, trial.NotBefore, trial.ExpiresAt = "check", time.Unix(0, 0), time.Unix(1, 0)
	if _, err := gate.Canonicalize(trial); err != nil {
		return usageError{err}
	}
	key, err := loadSigner(context.Background(), sf.key, sf.keyID)
	if err != nil {
		return err
	}
	defer key.Close()
	approval, op, err := signOp(op, key.Signer, sf.keyID, sf.ttl, sf.maxValidity, time.Now())
	if err != nil {
		return err
	}

	ctx, cancel := c.context()
	defer cancel()
	tc, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer tc.Close()

	id := workflows.JobWorkflowID(op.Nonce)
	in := workflows.SignedJobInput{
		Host: *host,
		Action: desired.Action{
			Op: op.Op, Host: op.HostID, Guest: op.GuestID, Params: op.Params,
			Destructive: true, Reason: "signed job submitted with felhomctl",
		},
		Approval: approval,
	}
	if !c.json() {
		runner := "the host"
		if vmid, ok := workflows.GuestOfJob(in); ok {
			runner = workflows.GuestWorkflowID(*host, vmid)
		}
		fmt.Fprintf(c.stderr, "%s: signed %s on %s/%s %s (valid until %s); waiting for %s\n",
			id, op.Op, op.HostID, op.GuestID, paramsText(op.Params), op.ExpiresAt.Format(time.RFC3339), runner)
	}
	res := jobResult{WorkflowID: id, Op: op.Op, HostID: op.HostID, GuestID: op.GuestID, Nonce: op.Nonce, KeyID: op.KeyID}
	var out workflows.SignedJobResult
	err = c.waitWithProgress(ctx, id, nil, func(ctx context.Context) error {
		run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID:                    id,
			TaskQueue:             workflows.TaskQueue(*host),
			WorkflowIDReusePolicy: enums.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		}, workflows.SignedJobWorkflow, in)
		if err != nil {
			return fmt.Errorf("start %s: %w", id, err)
		}
		return run.Get(ctx, &out)
	})
	var appErr *temporal.ApplicationError
	switch {
	case err == nil:
		res.Done, res.Detail, res.Finished = true, out.Detail, out.Finished
	case errors.As(err, new(*waitTimeout)):
		return err
	case errors.As(err, &appErr) && appErr.Type() == workflows.ErrTypeGateRejection:
		res.Code, res.Detail = "rejected", appErr.Message()
		if appErr.HasDetails() {
			_ = appErr.Details(&res.Code)
		}
	case errors.As(err, &appErr):
		res.Detail = appErr.Message()
	default:
		return fmt.Errorf("%s: %w", id, err)
	}
	if c.json() {
		if err := writeJSON(c.stdout, res); err != nil {
			return err
		}
	} else {
		switch {
		case res.Done:
			fmt.Fprintf(c.stdout, "%s: done (%s)\n", id, res.Detail)
		case res.Code != "":
			fmt.Fprintf(c.stdout, "%s: rejected: %s: %s\n", id, res.Code, res.Detail)
		default:
			fmt.Fprintf(c.stdout, "%s: failed: %s\n", id, res.Detail)
		}
	}
	if !res.Done {
		return errReported
	}
	return nil
}

// parseParams reads a JSON object; numbers stay exact (json.Number) so the
// canonicaliser sees the digits that were typed.
func parseParams(s string) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader([]byte(s)))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, usageErrorf("--params: invalid JSON: %v", err)
	}
	if d.More() {
		return nil, usageErrorf("--params: more than one JSON value")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, usageErrorf("--params: must be a JSON object, e.g. '{\"volume\":\"local-lvm:vm-101-disk-1\"}'")
	}
	return m, nil
}
