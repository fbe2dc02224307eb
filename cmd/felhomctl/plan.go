package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

const planHelp = `Usage: felhomctl plan -f FILE|DIR [flags]

A dry run: validates the desired state like apply, reads each guest's
observed state from its workflow's status query, and prints the actions
that applying it would run, in order. A destructive action is marked
"needs signature": the workflow will hold it until an operator approves it
(felhomctl approve). Nothing is sent and nothing changes.

A guest whose workflow does not exist yet is read on its host first (a
short read-only workflow on the host's task queue, as the guest workflow
reads it), so the plan is made against the real guest: a guest that exists
and is asked to be absent plans a destroy that needs a signature. This
needs the host's felhom-agent running, as apply does. A workflow that has
not read its guest yet is planned against "not observed yet".

--detailed-exitcode exits 3 when some guest would change (0 when none), so
a script can tell "changes present" from an error (1) and a bad command
line (2).

The plan labels with the gate's classifier without the host's provenance
ledger, so it is conservative: a destroy the host would find benign (a guest
the agent created as scratch) is still shown as needing a signature.
` + specFormatDoc

// planAction and planGuest are plan's JSON output; field names are stable.
type planAction struct {
	Op             string         `json:"op"`
	Params         map[string]any `json:"params"`
	Reason         string         `json:"reason"`
	Destructive    bool           `json:"destructive"`
	NeedsSignature bool           `json:"needs_signature"`
}

type planGuest struct {
	WorkflowID     string            `json:"workflow_id"`
	Host           string            `json:"host"`
	VMID           int               `json:"vmid"`
	WorkflowExists bool              `json:"workflow_exists"`
	Observed       *desired.Observed `json:"observed"` // null: not observed yet
	Phase          string            `json:"phase,omitempty"`
	Actions        []planAction      `json:"actions"`
	Notes          []string          `json:"notes,omitempty"`
}

// errChanges is plan's answer under --detailed-exitcode when some guest
// would change: exit 3.
var errChanges = errors.New("changes present")

func (c *command) plan(args []string) error {
	var detailed bool
	specs, err := c.specsFlagWith("plan", planHelp, args, func(fs *flag.FlagSet) {
		fs.BoolVar(&detailed, "detailed-exitcode", false, "exit 3 when some guest would change, 0 when none")
	})
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

	var out []planGuest
	changes, signatures := 0, 0
	for _, g := range specs {
		pg := planGuest{WorkflowID: g.WorkflowID(), Host: g.Spec.Host, VMID: g.Spec.VMID, Actions: []planAction{}}
		st, err := c.queryStatus(ctx, tc, pg.WorkflowID)
		switch {
		case errors.Is(err, errNoWorkflow):
			obs, err := c.observe(ctx, tc, g.Spec.Host, g.Spec.VMID)
			if err != nil {
				return err
			}
			pg.Observed = &obs.Guest
		case err != nil:
			return err
		default:
			pg.WorkflowExists, pg.Observed, pg.Phase = true, st.Observed, st.Phase
		}
		var obs desired.Observed
		if pg.Observed != nil {
			obs = *pg.Observed
		}
		p := desired.Make(g.Normalised, obs, conservativeClassifier(g.Spec.Host, g.Spec.VMID))
		for _, a := range p.Actions {
			pg.Actions = append(pg.Actions, planAction{
				Op: a.Op, Params: a.Params, Reason: a.Reason, Destructive: a.Destructive, NeedsSignature: a.Destructive,
			})
			if a.Destructive {
				signatures++
			}
		}
		if len(p.Actions) > 0 {
			changes++
		}
		pg.Notes = p.Notes
		out = append(out, pg)
		if !c.json() {
			c.printPlanGuest(pg)
		}
	}
	if c.json() {
		return writeList(c, "guests", out)
	}
	fmt.Fprintf(c.stdout, "\nPlan: %d of %d guests change, %d actions need a signature.\n", changes, len(out), signatures)
	if detailed && changes > 0 {
		return errChanges
	}
	return nil
}

// observe reads a guest that has no workflow yet on its host, through
// ObserveGuestWorkflow on the host's task queue, waiting --query-timeout
// for the host's worker.
func (c *command) observe(ctx context.Context, tc client.Client, host string, vmid int) (workflows.Observation, error) {
	octx, cancel := context.WithTimeout(ctx, c.queryTimeout)
	defer cancel()
	id := workflows.ObserveWorkflowID(host, vmid, newNonce())
	run, err := tc.ExecuteWorkflow(octx, client.StartWorkflowOptions{
		ID: id, TaskQueue: workflows.TaskQueue(host), WorkflowExecutionTimeout: c.queryTimeout,
	}, workflows.ObserveGuestWorkflow, workflows.ObserveInput{VMID: vmid})
	if err != nil {
		return workflows.Observation{}, fmt.Errorf("read guest %s/%d on its host: %w", host, vmid, err)
	}
	var obs workflows.Observation
	if err := run.Get(octx, &obs); err != nil {
		if octx.Err() != nil && ctx.Err() == nil || errors.As(err, new(*temporal.TimeoutError)) {
			return obs, fmt.Errorf("read guest %s/%d: no worker answered within %s on task queue %s: is felhom-agent running for host %s? (%w)",
				host, vmid, c.queryTimeout, workflows.TaskQueue(host), host, err)
		}
		return obs, fmt.Errorf("read guest %s/%d on its host: %w", host, vmid, err)
	}
	return obs, nil
}

func (c *command) printPlanGuest(pg planGuest) {
	state := "not observed yet"
	switch {
	case !pg.WorkflowExists && pg.Observed != nil && !pg.Observed.Exists:
		state = "no workflow yet; observed: does not exist"
	case !pg.WorkflowExists && pg.Observed != nil:
		state = "no workflow yet; observed: " + pg.Observed.Status
	case !pg.WorkflowExists:
		state = "no workflow yet; planned against a guest not observed yet"
	case pg.Observed != nil && !pg.Observed.Exists:
		state = "observed: does not exist"
	case pg.Observed != nil:
		state = "observed: " + pg.Observed.Status
	}
	fmt.Fprintf(c.stdout, "%s (%s)\n", pg.WorkflowID, state)
	if len(pg.Actions) == 0 {
		fmt.Fprintln(c.stdout, "  no changes")
	}
	for _, a := range pg.Actions {
		mark := ""
		if a.NeedsSignature {
			mark = "  [destructive: needs signature]"
		}
		fmt.Fprintf(c.stdout, "  - %s %s: %s%s\n", a.Op, paramsText(a.Params), a.Reason, mark)
	}
	for _, n := range pg.Notes {
		fmt.Fprintf(c.stdout, "  note: %s\n", n)
	}
}

// conservativeClassifier is the gate's classifier without provenance: only
// the host's own ledger can make a data-destroying op benign.
func conservativeClassifier(host string, vmid int) desired.Classifier {
	guest := strconv.Itoa(vmid)
	return func(op string) bool {
		return gate.Classify(gate.Action{Op: op, HostID: host, GuestID: guest}, gate.Provenance{}, time.Time{}) == gate.Destructive
	}
}

// paramsText is params in canonical JSON, the form they are signed in.
func paramsText(params map[string]any) string {
	if params == nil {
		params = map[string]any{}
	}
	b, err := gate.CanonicalJSON(params)
	if err != nil {
		return fmt.Sprint(params)
	}
	return string(b)
}

// newNonce is a random id that keeps one read of a guest apart from others.
func newNonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
