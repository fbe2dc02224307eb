package tests

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
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

// An approved destroy that keeps meeting "VM is locked (backup)" on its
// first request is retried with the same approval until the lock goes, and
// completes although its op expired meanwhile: the host admitted the
// approval and the act started before the op's window closed, and the
// workflow bounds the step by time, not by a count of attempts.
func TestApprovedDestroyOutlivesItsOpThroughLockRetries(t *testing.T) {
	host := uniqueHost("pve-lockretry")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 193, Name: "locked", Status: "running", MemoryMiB: 512, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:vm-193-disk-0,size=4G"}}))
	ops := newOperatorKey(t, "ed25519")
	a := startAgent(t, host, sim, ops.Pub)
	a.applySpec(t, desired.Spec{Host: host, VMID: 193, State: desired.Absent})
	st := a.waitPhase(t, 193, workflows.PhasePending)

	sim.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/193/status/stop", Kind: pvesim.FaultHTTPError,
		Status: 500, Message: "VM 193 is locked (backup)", Times: -1})
	op := opFor(st.Pending.OpTemplate)
	op.ExpiresAt = time.Now().UTC().Truncate(time.Second).Add(10 * time.Second)
	must(t, a.client.SignalWorkflow(context.Background(), workflows.GuestWorkflowID(host, 193), "", workflows.SignalApprove, signWithSSHKeygen(t, ops, op)))

	waitFor(t, "a stop attempt after the op expired", func() bool {
		for _, r := range sim.RequestsMatching("POST", "/nodes/*/qemu/193/status/stop") {
			if r.Time.After(op.ExpiresAt) {
				return true
			}
		}
		return false
	})
	sim.ClearFaults()
	st = a.waitStatusWithin(t, 193, "the guest destroyed", 2*time.Minute, func(st workflows.GuestStatus) bool {
		return st.Phase == workflows.PhaseConverged
	})
	if _, ok := sim.Guest(193); ok || len(sim.RequestsMatching("DELETE", "/nodes/*/qemu/193")) != 1 {
		t.Fatalf("guest 193 not destroyed exactly once (recent %+v)", st.Recent)
	}
	if tries := len(sim.RequestsMatching("POST", "/nodes/*/qemu/193/status/stop")); tries < 5 {
		t.Errorf("%d stop attempts, want the locked ones and the last", tries)
	}
}
