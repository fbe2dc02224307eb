package tests

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// The host's signers.max_validity reaches its gate: a signed job valid for
// longer than the configured cap is refused with validity_too_long and
// changes nothing; the same job within the cap runs.
func TestHostRefusesOpsValidLongerThanItsCap(t *testing.T) {
	host := uniqueHost("pve-validity")
	sim := startSim(t, host)
	const vol = "local-lvm:vm-911-disk-0"
	must(t, sim.AddVolume(vol, 1<<30))
	ops := newOperatorKey(t, "ed25519")
	a := startAgentWith(t, host, sim, func(c *worker.Config) { c.Signers.MaxValidity = 30 * time.Minute }, ops.Pub)
	wipe := desired.Action{Op: gate.OpVolumeWipe, Host: host, Guest: "911", Params: map[string]any{"volume": vol}}

	// runFor signs the wipe valid from a minute ago for window, and runs it.
	runFor := func(window time.Duration) string {
		op := opFor(workflows.OpTemplate{Op: wipe.Op, HostID: host, GuestID: wipe.Guest, Params: wipe.Params})
		op.ExpiresAt = op.NotBefore.Add(window)
		run, err := a.client.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
			ID: workflows.JobWorkflowID(op.Nonce), TaskQueue: workflows.TaskQueue(host),
		}, workflows.SignedJobWorkflow, workflows.SignedJobInput{Host: host, Action: wipe, Approval: signWithSSHKeygen(t, ops, op)})
		must(t, err)
		err = run.Get(context.Background(), nil)
		if err == nil {
			return ""
		}
		if code := jobRejection(err); code != "" {
			return code
		}
		t.Fatalf("job failed: %v", err)
		return ""
	}
	if code := runFor(31 * time.Minute); code != "validity_too_long" {
		t.Fatalf("op valid for 31m on a host capped at 30m: %q, want validity_too_long", code)
	}
	if !slices.Contains(sim.Volumes(), vol) {
		t.Fatal("volume wiped by an op valid for longer than the cap")
	}
	if code := runFor(30 * time.Minute); code != "" {
		t.Fatalf("op valid for 30m refused: %s", code)
	}
	if slices.Contains(sim.Volumes(), vol) {
		t.Fatal("volume still there after its approved wipe")
	}
}
