package tests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// applySpec sends a desired state the way the hub does: Update-With-Start,
// waiting for the workflow to accept it.
func (a *agent) applySpec(t *testing.T, spec desired.Spec) workflows.SetDesiredResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := a.client.NewWithStartWorkflowOperation(client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(spec.Host, spec.VMID), TaskQueue: workflows.TaskQueue(spec.Host),
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: spec.Host, VMID: spec.VMID})
	h, err := a.client.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{
		StartWorkflowOperation: start,
		UpdateOptions: client.UpdateWorkflowOptions{
			UpdateName: workflows.UpdateSetDesired, Args: []any{spec}, WaitForStage: client.WorkflowUpdateStageCompleted,
		},
	})
	if err != nil {
		t.Fatalf("apply %s/%d: %v", spec.Host, spec.VMID, err)
	}
	var res workflows.SetDesiredResult
	if err := h.Get(ctx, &res); err != nil {
		t.Fatalf("apply %s/%d: %v", spec.Host, spec.VMID, err)
	}
	return res
}

// approve sends an approval through the Update and returns the verdict.
func (a *agent) approve(t *testing.T, vmid int, ap workflows.Approval) workflows.ApprovalVerdict {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h, err := a.client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID: workflows.GuestWorkflowID(a.host, vmid), UpdateName: workflows.UpdateApprove,
		Args: []any{ap}, WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err != nil {
		t.Fatalf("approve: %v", err)
	}
	var v workflows.ApprovalVerdict
	if err := h.Get(ctx, &v); err != nil {
		t.Fatalf("approve: %v", err)
	}
	return v
}

// signWithSSHKeygen canonicalises op and signs it with `ssh-keygen -Y sign`,
// exactly as an operator without any project tool would.
func signWithSSHKeygen(t *testing.T, key operatorKey, op gate.Op) workflows.Approval {
	t.Helper()
	blob, err := gate.Canonicalize(op)
	if err != nil {
		t.Fatalf("canonicalise: %v", err)
	}
	path := filepath.Join(t.TempDir(), "op.json")
	if err := os.WriteFile(path, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ssh-keygen", "-Y", "sign", "-n", gate.Namespace, "-f", key.Path, path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -Y sign: %v\n%s", err, out)
	}
	sig, err := os.ReadFile(path + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	return workflows.Approval{Blob: string(blob), Signature: string(sig)}
}

// opFor fills the op template of a pending action with a fresh nonce and a
// ten-minute window.
func opFor(tpl workflows.OpTemplate) gate.Op {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	now := time.Now().UTC().Truncate(time.Second)
	return gate.Op{
		Op: tpl.Op, HostID: tpl.HostID, GuestID: tpl.GuestID, Params: tpl.Params,
		Nonce: hex.EncodeToString(b), NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(10 * time.Minute), KeyID: "ops",
	}
}

// pendingByVisibility lists the workflow IDs of host waiting for a signature.
func (a *agent) pendingByVisibility(t *testing.T) []string {
	t.Helper()
	resp, err := a.client.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{
		Query: visibility.PendingApprovalsQuery + " AND " + visibility.Host + " = '" + a.host + "'",
	})
	if err != nil {
		t.Fatalf("list workflows: %v", err)
	}
	var ids []string
	for _, e := range resp.GetExecutions() {
		ids = append(ids, e.GetExecution().GetWorkflowId())
	}
	return ids
}

func TestConvergeCreateConfigAndStartSeveralGuests(t *testing.T) {
	host := uniqueHost("pve-conv")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 101, Name: "app", Status: "running", MemoryMiB: 1024, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=16G"}}))
	must(t, sim.AddVM(pvesim.Guest{VMID: 102, Name: "batch", Status: "stopped", MemoryMiB: 512, Cores: 1}))
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)

	specs := []desired.Spec{
		// create a VM that does not exist, and start it
		{Host: host, VMID: 120, Kind: desired.QEMU, Name: "new-vm", State: desired.Running, Memory: "2GiB", Cores: 2,
			Disks: map[string]string{"scsi0": "local-lvm:8"}, Tags: []string{"web", "prod"}},
		// change the configuration of a running VM: a byte size that is not
		// whole MiB converges in one pass
		{Host: host, VMID: 101, Kind: desired.QEMU, Name: "app", State: desired.Running, Memory: "3221225473B", Cores: 4,
			Disks: map[string]string{"scsi0": "local-lvm:16"}},
		// start a stopped VM
		{Host: host, VMID: 102, Kind: desired.QEMU, Name: "batch", State: desired.Running, Memory: "512", Cores: 1},
		// create a container, left stopped
		{Host: host, VMID: 130, Kind: desired.LXC, Name: "dns", State: desired.Stopped, Memory: "256MiB", Cores: 1,
			Disks: map[string]string{"rootfs": "local-lvm:4"}, OSTemplate: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"},
	}
	for _, s := range specs {
		if res := a.applySpec(t, s); res.Generation != 1 {
			t.Errorf("guest %d: accepted at generation %d, want 1", s.VMID, res.Generation)
		}
	}
	for _, s := range specs {
		st := a.waitPhase(t, s.VMID, workflows.PhaseConverged)
		g, ok := sim.Guest(s.VMID)
		if !ok {
			t.Fatalf("guest %d missing from the simulator", s.VMID)
		}
		if s.VMID == 101 {
			continue // checked below: its change is pending
		}
		norm, _ := desired.Normalise(s)
		wantStatus := map[desired.State]string{desired.Running: "running", desired.Stopped: "stopped"}[s.State]
		if g.Status != wantStatus || g.MemoryMiB != norm.MemoryMiB || g.Cores != norm.Cores || g.Name != s.Name {
			t.Errorf("guest %d = %s %d MiB %d cores %q, want %s %d MiB %d cores %q (recent %+v)",
				s.VMID, g.Status, g.MemoryMiB, g.Cores, g.Name, wantStatus, norm.MemoryMiB, norm.Cores, s.Name, st.Recent)
		}
	}
	// Memory and cores of a running VM are not hot-plugged: Proxmox keeps
	// them pending until the next start, and that counts as converged.
	if g, _ := sim.Guest(101); g.Pending["memory"] != "3073" || g.Pending["cores"] != "4" {
		t.Errorf("guest 101 pending = %v, want memory 3073 (3 GiB + 1 byte, rounded up once) and cores 4", g.Pending)
	}
	if n := countRequests(sim, "POST", "/qemu/101/config") + countRequests(sim, "PUT", "/qemu/101/config"); n != 1 {
		t.Errorf("guest 101 config was written %d times, want once", n)
	}
	if g, _ := sim.Guest(120); g.Tags != "prod;web" {
		t.Errorf("guest 120 tags = %q, want prod;web", g.Tags)
	}
}

func TestDestroyWaitsForAMatchingSSHKeygenSignature(t *testing.T) {
	host := uniqueHost("pve-destroy")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 140, Name: "customer", Status: "running", MemoryMiB: 1024, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:vm-140-disk-0,size=32G"}}))
	ops := newOperatorKey(t, "ed25519")
	stranger := newOperatorKey(t, "ed25519")
	a := startAgent(t, host, sim, ops.Pub)

	a.applySpec(t, desired.Spec{Host: host, VMID: 140, State: desired.Absent})
	st := a.waitPhase(t, 140, workflows.PhasePending)
	if st.Pending == nil || st.Pending.Action.Op != gate.OpGuestDestroy || st.Pending.OpTemplate.GuestID != "140" {
		t.Fatalf("pending = %+v, want guest.destroy of 140", st.Pending)
	}
	waitFor(t, "FelhomPendingSignature = true to list the guest", func() bool {
		return slices.Equal(a.pendingByVisibility(t), []string{workflows.GuestWorkflowID(host, 140)})
	})

	tpl := st.Pending.OpTemplate
	refusals := []struct {
		name     string
		approval workflows.Approval
		code     string
	}{
		{"unsigned", workflows.Approval{Blob: `{"op":"guest.destroy"}`, Signature: "not a signature"}, "armor"},
		{"unknown signer", signWithSSHKeygen(t, stranger, opFor(tpl)), "unknown_signer"},
		{"another guest", signWithSSHKeygen(t, ops, func() gate.Op { o := opFor(tpl); o.GuestID = "141"; return o }()), "binding_mismatch"},
		{"another op", signWithSSHKeygen(t, ops, func() gate.Op { o := opFor(tpl); o.Op = gate.OpGuestRestore; return o }()), "binding_mismatch"},
		{"other params", signWithSSHKeygen(t, ops, func() gate.Op { o := opFor(tpl); o.Params = map[string]any{"kind": "lxc"}; return o }()), "binding_mismatch"},
		{"another host", signWithSSHKeygen(t, ops, func() gate.Op { o := opFor(tpl); o.HostID = "pve-other"; return o }()), "wrong_host"},
		{"expired", signWithSSHKeygen(t, ops, func() gate.Op {
			o := opFor(tpl)
			o.NotBefore, o.ExpiresAt = o.NotBefore.Add(-time.Hour), o.NotBefore.Add(-30*time.Minute)
			return o
		}()), "expired"},
	}
	for _, r := range refusals {
		v := a.approve(t, 140, r.approval)
		if v.Accepted || v.Code != r.code {
			t.Errorf("%s approval: verdict %+v, want refused with %s", r.name, v, r.code)
		}
	}
	if _, ok := sim.Guest(140); !ok || countRequests(sim, "DELETE", "/qemu/140") != 0 {
		t.Fatal("guest 140 was touched by a refused approval")
	}
	if st := a.guestStatus(t, 140); st.Phase != workflows.PhasePending {
		t.Fatalf("phase after refusals = %s, want still pending", st.Phase)
	}
	recordHistory(t, a.client, workflows.GuestWorkflowID(host, 140), "", "guest-desired-memo-rejected-approvals")

	// The right signature, sent as a plain signal as the temporal CLI would.
	good := signWithSSHKeygen(t, ops, opFor(tpl))
	must(t, a.client.SignalWorkflow(context.Background(), workflows.GuestWorkflowID(host, 140), "", workflows.SignalApprove, good))
	st = a.waitPhase(t, 140, workflows.PhaseConverged)
	if _, ok := sim.Guest(140); ok {
		t.Fatal("guest 140 still exists after an accepted approval")
	}
	if n := countRequests(sim, "DELETE", "/qemu/140"); n != 1 {
		t.Errorf("destroy was sent %d times, want once", n)
	}
	recordHistory(t, a.client, workflows.GuestWorkflowID(host, 140), "", "guest-desired-memo-destroy-approved")
	if ids := a.pendingByVisibility(t); len(ids) != 0 {
		waitFor(t, "the pending flag to clear", func() bool { return len(a.pendingByVisibility(t)) == 0 })
	}

	// The guest comes back (someone restored it by hand): the same signed op
	// presented again is a replay and is refused by the host's nonce store.
	must(t, sim.AddVM(pvesim.Guest{VMID: 140, Name: "customer", Status: "stopped", MemoryMiB: 1024, Cores: 1}))
	must(t, a.client.SignalWorkflow(context.Background(), workflows.GuestWorkflowID(host, 140), "", workflows.SignalReconcile, "test"))
	a.waitPhase(t, 140, workflows.PhasePending)
	if v := a.approve(t, 140, good); v.Accepted || v.Code != "replay" {
		t.Errorf("replayed approval: verdict %+v, want refused as replay", v)
	}
	if _, ok := sim.Guest(140); !ok {
		t.Error("a replayed approval destroyed the guest")
	}
}

func TestFailedCreateIsRolledBackWithoutASignature(t *testing.T) {
	host := uniqueHost("pve-comp")
	sim := startSim(t, host)
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)
	// The start after the create fails on the node.
	sim.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/*/status/start", VMID: 150, Kind: pvesim.FaultTaskError, Message: "start failed: no bootable device"})

	a.applySpec(t, desired.Spec{Host: host, VMID: 150, Kind: desired.QEMU, Name: "scratch", State: desired.Running, Memory: "512", Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:4"}})
	st := a.waitPhase(t, 150, workflows.PhaseFailed)
	if _, ok := sim.Guest(150); ok {
		t.Fatalf("guest 150 still exists: the failed create was not rolled back (recent %+v)", st.Recent)
	}
	var results []string
	for _, r := range st.Recent {
		results = append(results, r.Action.Op+":"+r.Result)
	}
	want := []string{"guest.create:done", "guest.start:failed", "guest.destroy:compensated"}
	if !slices.Equal(results, want) {
		t.Errorf("recent = %v, want %v", results, want)
	}
	if st.Pending != nil {
		t.Errorf("the rollback waited for a signature: %+v", st.Pending)
	}
	recordHistory(t, a.client, workflows.GuestWorkflowID(host, 150), "", "guest-desired-memo-compensation")
}

// TestAbsentAfterConvergeNeedsASignatureInTheCreatingRun: the run that
// created a guest has no exemption once the guest reached its desired state:
// only the compensating rollback of a fresh create is benign.
func TestAbsentAfterConvergeNeedsASignatureInTheCreatingRun(t *testing.T) {
	host := uniqueHost("pve-same-run")
	sim := startSim(t, host)
	ops := newOperatorKey(t, "ed25519")
	a := startAgent(t, host, sim, ops.Pub)
	id := workflows.GuestWorkflowID(host, 160)

	a.applySpec(t, desired.Spec{Host: host, VMID: 160, Kind: desired.QEMU, Name: "app", State: desired.Running, Memory: "512", Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:4"}})
	a.waitPhase(t, 160, workflows.PhaseConverged)
	desc, err := a.client.DescribeWorkflowExecution(context.Background(), id, "")
	must(t, err)
	run := desc.WorkflowExecutionInfo.Execution.RunId

	a.applySpec(t, desired.Spec{Host: host, VMID: 160, State: desired.Absent})
	st := a.waitPhase(t, 160, workflows.PhasePending)
	if st.Pending == nil || st.Pending.Action.Op != gate.OpGuestDestroy {
		t.Fatalf("pending = %+v, want guest.destroy", st.Pending)
	}
	desc, err = a.client.DescribeWorkflowExecution(context.Background(), id, "")
	must(t, err)
	if desc.WorkflowExecutionInfo.Execution.RunId != run {
		t.Fatal("the workflow continued as new: this test needs the creating run")
	}
	if _, ok := sim.Guest(160); !ok || countRequests(sim, "DELETE", "/qemu/160") != 0 {
		t.Fatal("the guest its own run created was destroyed without a signature")
	}

	if v := a.approve(t, 160, signWithSSHKeygen(t, ops, opFor(st.Pending.OpTemplate))); !v.Accepted {
		t.Fatalf("signed destroy refused: %+v", v)
	}
	a.waitPhase(t, 160, workflows.PhaseConverged)
	if _, ok := sim.Guest(160); ok || countRequests(sim, "DELETE", "/qemu/160") != 1 {
		t.Fatal("the signed destroy did not run exactly once")
	}
}

func TestHostWorkflowWakesOnlyDriftedGuestsAndReportsUnmanaged(t *testing.T) {
	host := uniqueHost("pve-drift")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 160, Name: "one", Status: "running", MemoryMiB: 512, Cores: 1}))
	must(t, sim.AddVM(pvesim.Guest{VMID: 161, Name: "two", Status: "running", MemoryMiB: 512, Cores: 1}))
	must(t, sim.AddVM(pvesim.Guest{VMID: 162, Name: "three", Status: "running", MemoryMiB: 512, Cores: 1}))
	must(t, sim.AddVM(pvesim.Guest{VMID: 199, Name: "nobodys", Status: "running", MemoryMiB: 512, Cores: 1}))
	a := startAgentWith(t, host, sim, func(c *worker.Config) { c.DriftCheckInterval = time.Second }, newOperatorKey(t, "ed25519").Pub)
	for _, vmid := range []int{160, 161} {
		a.applySpec(t, desired.Spec{Host: host, VMID: vmid, Kind: desired.QEMU, State: desired.Running, Memory: "512", Cores: 1})
		a.waitPhase(t, vmid, workflows.PhaseConverged)
	}
	// A guest workflow started with its desired state in the input tells
	// the host workflow too.
	spec162 := desired.Spec{Host: host, VMID: 162, Kind: desired.QEMU, State: desired.Running, Memory: "512", Cores: 1}
	_, err := a.client.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(host, 162), TaskQueue: workflows.TaskQueue(host),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 162, Desired: &spec162})
	must(t, err)
	a.waitPhase(t, 162, workflows.PhaseConverged)
	waitFor(t, "the host workflow to know guest 162", func() bool { return slices.Contains(a.hostStatus(t).Managed, 162) })
	startsBefore := countRequests(sim, "POST", "/status/start")
	// The hub starts a workflow that passes for 199's guest workflow in
	// visibility and publishes guest 160's desired state, stopped: the host
	// refuses the record, so 199 stays unmanaged and 160 running.
	forged := desired.Spec{Host: host, VMID: 160, Kind: desired.QEMU, State: desired.Stopped}
	_, err = a.client.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(host, 199), TaskQueue: "nobody-polls-" + host,
		Memo:                  map[string]any{workflows.MemoDesired: forged},
		TypedSearchAttributes: temporal.NewSearchAttributes(visibility.HostKey.ValueSet(host), visibility.PhaseKey.ValueSet(workflows.PhaseConverged)),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 199})
	must(t, err)
	waitHostPasses(t, a, 2)

	// Somebody stops 160 behind the agent's back.
	must(t, sim.SetStatus(160, "stopped"))
	waitFor(t, "the host workflow to restart guest 160", func() bool {
		g, _ := sim.Guest(160)
		return g.Status == "running"
	})
	if n := countRequests(sim, "POST", "/qemu/160/status/start"); n != 1 {
		t.Errorf("guest 160 started %d times, want once", n)
	}
	if n := countRequests(sim, "POST", "/status/start") - startsBefore; n != 1 {
		t.Errorf("%d starts after the drift, want only guest 160's", n)
	}
	hs := a.hostStatus(t)
	if !slices.Equal(hs.Unmanaged, []int{199}) {
		t.Errorf("unmanaged = %v, want [199]", hs.Unmanaged)
	}
	if _, ok := sim.Guest(199); !ok || countRequests(sim, "DELETE", "/qemu/199") != 0 {
		t.Error("the unmanaged guest was touched")
	}
	recordHistory(t, a.client, workflows.HostWorkflowID(host), "", "host-from-guests-drift")
}

func TestGuestWorkflowContinuesAsNewWithItsState(t *testing.T) {
	host := uniqueHost("pve-can")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 170, Name: "long", Status: "stopped", MemoryMiB: 512, Cores: 1}))
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)
	spec := desired.Spec{Host: host, VMID: 170, Kind: desired.QEMU, Name: "long", State: desired.Stopped, Memory: "512", Cores: 1}
	run, err := a.client.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(host, 170), TaskQueue: workflows.TaskQueue(host),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 170, Desired: &spec, MaxHistoryEvents: 40})
	must(t, err)
	a.waitPhase(t, 170, workflows.PhaseConverged)
	// The first spec repeats the one the workflow started with: it changes
	// nothing, not even the generation. The five after it each change the
	// cores.
	for i := 0; i < 6; i++ {
		spec.Cores = 1 + i%2
		gen := a.applySpec(t, spec).Generation
		// Each change is acted on before the next arrives, so the history
		// grows by a whole pass each time.
		a.waitStatus(t, 170, fmt.Sprintf("generation %d converged with %d cores", gen, spec.Cores), func(st workflows.GuestStatus) bool {
			return st.Generation == gen && st.Phase == workflows.PhaseConverged && st.Observed != nil && st.Observed.Cores == spec.Cores
		})
	}
	st := a.guestStatus(t, 170)
	desc, err := a.client.DescribeWorkflowExecution(context.Background(), workflows.GuestWorkflowID(host, 170), "")
	must(t, err)
	if desc.GetWorkflowExecutionInfo().GetExecution().GetRunId() == run.GetRunID() {
		t.Fatal("the workflow never continued as new")
	}
	if st.Generation != 6 || st.Desired == nil || st.Desired.Cores != 2 {
		t.Errorf("after continue-as-new: generation %d, desired %+v; want generation 6 with 2 cores", st.Generation, st.Desired)
	}
	if g, _ := sim.Guest(170); g.Cores != 2 {
		t.Errorf("guest cores = %d, want 2", g.Cores)
	}
	if len(st.Recent) == 0 {
		t.Error("recent actions were not carried over")
	}
	recordHistory(t, a.client, workflows.GuestWorkflowID(host, 170), run.GetRunID(), "guest-desired-memo-continue-as-new")
}

func TestSignedJobRunsOnceAndItsNonceCannotBeReplayed(t *testing.T) {
	host := uniqueHost("pve-job")
	sim := startSim(t, host)
	// A volume left behind by a guest that is gone: Proxmox refuses to free
	// the volume of a guest that still exists.
	must(t, sim.AddVolume("local-lvm:vm-180-disk-1", 4<<30))
	ops := newOperatorKey(t, "ed25519")
	a := startAgent(t, host, sim, ops.Pub)

	action := desired.Action{Op: gate.OpVolumeWipe, Host: host, Guest: "180", Params: map[string]any{"volume": "local-lvm:vm-180-disk-1"}}
	op := opFor(workflows.OpTemplate{Op: action.Op, HostID: host, GuestID: action.Guest, Params: action.Params})
	approval := signWithSSHKeygen(t, ops, op)
	in := workflows.SignedJobInput{Host: host, Action: action, Approval: approval}
	opts := client.StartWorkflowOptions{ID: workflows.JobWorkflowID(op.Nonce), TaskQueue: workflows.TaskQueue(host)}

	run, err := a.client.ExecuteWorkflow(context.Background(), opts, workflows.SignedJobWorkflow, in)
	must(t, err)
	var res workflows.SignedJobResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatalf("job: %v", err)
	}
	if slices.Contains(sim.Volumes(), "local-lvm:vm-180-disk-1") {
		t.Fatal("the volume still exists after the job")
	}
	recordHistory(t, a.client, opts.ID, "", "job-through-guest-wipe")

	// Temporal refuses a second job with the same nonce ...
	_, err = a.client.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: opts.ID, TaskQueue: opts.TaskQueue, WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
	}, workflows.SignedJobWorkflow, in)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if !errors.As(err, &started) {
		t.Errorf("second job with the same nonce: err = %v, want WorkflowExecutionAlreadyStarted", err)
	}
	// ... and the host refuses it even under another workflow ID, as after
	// Temporal's history of the first is gone, once there is again a volume
	// of that name to wipe.
	must(t, sim.AddVolume("local-lvm:vm-180-disk-1", 4<<30))
	run, err = a.client.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: opts.ID + "-again", TaskQueue: opts.TaskQueue,
	}, workflows.SignedJobWorkflow, in)
	must(t, err)
	err = run.Get(context.Background(), nil)
	if code := jobRejection(err); code != "replay" {
		t.Errorf("replayed job: err = %v, want a replay rejection", err)
	}
	recordHistory(t, a.client, opts.ID+"-again", "", "job-through-guest-rejected")
	if !slices.Contains(sim.Volumes(), "local-lvm:vm-180-disk-1") {
		t.Error("the replayed job wiped the volume")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// jobRejection is the gate code a failed signed job carries, if any.
func jobRejection(err error) string {
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || appErr.Type() != workflows.ErrTypeGateRejection {
		return ""
	}
	var code string
	_ = appErr.Details(&code)
	return code
}

// hostStatus queries the host workflow.
func (a *agent) hostStatus(t *testing.T) workflows.HostStatus {
	t.Helper()
	hs, err := a.tryHostStatus()
	must(t, err)
	return hs
}

// tryHostStatus queries the host workflow. Right after a worker restart a
// query can time out while the server still offers the workflow to the
// stopped worker's sticky queue; waits use this and query again.
func (a *agent) tryHostStatus() (workflows.HostStatus, error) {
	var hs workflows.HostStatus
	v, err := a.client.QueryWorkflow(context.Background(), workflows.HostWorkflowID(a.host), "", workflows.QueryHostStatus)
	if err != nil {
		return hs, err
	}
	return hs, v.Get(&hs)
}

// A reconcile ends the wait for a signature: the guest is read and planned
// again. Nothing changed keeps the same action pending, with its Since and
// its last rejection; a guest that root removed by hand meanwhile needs no
// destroy any more, and the workflow converges without one.
func TestReconcileReplansAGuestWaitingForASignature(t *testing.T) {
	host := uniqueHost("pve-reread")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 142, Name: "customer", Status: "stopped", MemoryMiB: 512, Cores: 1}))
	ops := newOperatorKey(t, "ed25519")
	stranger := newOperatorKey(t, "ed25519")
	a := startAgent(t, host, sim, ops.Pub)
	id := workflows.GuestWorkflowID(host, 142)

	a.applySpec(t, desired.Spec{Host: host, VMID: 142, State: desired.Absent})
	held := a.waitPhase(t, 142, workflows.PhasePending)
	if v := a.approve(t, 142, signWithSSHKeygen(t, stranger, opFor(held.Pending.OpTemplate))); v.Code != "unknown_signer" {
		t.Fatalf("stranger's approval: verdict %+v, want unknown_signer", v)
	}

	reads := countEvents(runEvents(t, a.client, id, ""), stepDone)
	must(t, a.client.SignalWorkflow(context.Background(), id, "", workflows.SignalReconcile, "look again"))
	waitFor(t, "the read the reconcile asked for", func() bool {
		return countEvents(runEvents(t, a.client, id, ""), stepDone) > reads
	})
	st := a.waitPhase(t, 142, workflows.PhasePending)
	if st.Pending == nil || !st.Pending.Since.Equal(held.Pending.Since) || st.Pending.LastRejection != "unknown_signer" {
		t.Fatalf("pending after a reconcile that changed nothing = %+v, want the same as before (%+v, last rejection unknown_signer)", st.Pending, held.Pending)
	}

	must(t, sim.PurgeAsRoot(142))
	must(t, a.client.SignalWorkflow(context.Background(), id, "", workflows.SignalReconcile, "root removed it"))
	st = a.waitPhase(t, 142, workflows.PhaseConverged)
	if st.Pending != nil {
		t.Errorf("pending after the guest is gone = %+v, want none", st.Pending)
	}
	if n := countRequests(sim, "DELETE", "/qemu/142"); n != 0 {
		t.Errorf("%d DELETE requests for a guest root removed, want none", n)
	}
	waitFor(t, "the pending flag to clear", func() bool { return len(a.pendingByVisibility(t)) == 0 })
	recordHistory(t, a.client, id, "", "guest-desired-memo-reconciled")
}
