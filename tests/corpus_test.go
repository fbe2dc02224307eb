package tests

import (
	"context"
	"slices"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// The tests in this file drive the workflows down the branches that the
// other end-to-end tests do not take, on a real server, and record them
// for TestRecordedHistoriesReplay (go test ./tests -record): fired timers,
// signals, refused and repeated desired states, superseded and carried
// waits, retries, a conflict, a cancellation.

// runEvents returns the events of a workflow run ("" is the latest).
func runEvents(t *testing.T, c client.Client, workflowID, runID string) []*historypb.HistoryEvent {
	t.Helper()
	var out []*historypb.HistoryEvent
	it := c.GetWorkflowHistory(context.Background(), workflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		must(t, err)
		out = append(out, ev)
	}
	return out
}

// followedBy reports whether an event of type first is followed, later,
// by one of type then.
func followedBy(evs []*historypb.HistoryEvent, first, then enumspb.EventType) bool {
	return eventFollowedBy(evs, ofType(first), ofType(then))
}

// eventFollowedBy reports whether an event that first matches is followed,
// later, by one that then matches.
func eventFollowedBy(evs []*historypb.HistoryEvent, first, then func(*historypb.HistoryEvent) bool) bool {
	seen := false
	for _, e := range evs {
		if first(e) {
			seen = true
		} else if seen && then(e) {
			return true
		}
	}
	return false
}

func ofType(typ enumspb.EventType) func(*historypb.HistoryEvent) bool {
	return func(e *historypb.HistoryEvent) bool { return e.GetEventType() == typ }
}

// stepDone matches the end of a step: a completed activity, or the marker
// of a completed local activity (the guest's read at
// versionGuestLocalRead).
func stepDone(e *historypb.HistoryEvent) bool {
	return e.GetEventType() == enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED ||
		e.GetMarkerRecordedEventAttributes().GetMarkerName() == "LocalActivity" && e.GetMarkerRecordedEventAttributes().GetFailure() == nil
}

func startGuestWorkflow(t *testing.T, a *agent, in workflows.GuestInput) client.WorkflowRun {
	t.Helper()
	run, err := a.client.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(in.Host, in.VMID), TaskQueue: workflows.TaskQueue(in.Host),
	}, workflows.GuestReconcileWorkflow, in)
	must(t, err)
	return run
}

// A converged guest read again when its resync timer fires; an approval
// with nothing pending, a wake-up, a refused desired state and the same one
// again by signal and by update; then a new one.
func TestGuestLoopSignalsAndTimers(t *testing.T) {
	host := uniqueHost("pve-lsig")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 201, Name: "web", Status: "running", MemoryMiB: 512, Cores: 1}))
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)
	id := workflows.GuestWorkflowID(host, 201)
	spec := desired.Spec{Host: host, VMID: 201, Kind: desired.QEMU, Name: "web", State: desired.Running, Memory: "512", Cores: 1}
	startGuestWorkflow(t, a, workflows.GuestInput{Host: host, VMID: 201, Desired: &spec, ResyncEvery: 2 * time.Second})
	a.waitPhase(t, 201, workflows.PhaseConverged)
	waitFor(t, "a fired resync timer and the read after it", func() bool {
		return eventFollowedBy(runEvents(t, a.client, id, ""), ofType(enumspb.EVENT_TYPE_TIMER_FIRED), stepDone)
	})
	ctx := context.Background()
	must(t, a.client.SignalWorkflow(ctx, id, "", workflows.SignalApprove, workflows.Approval{Blob: "x", Signature: "y"}))
	reads := countEvents(runEvents(t, a.client, id, ""), stepDone)
	must(t, a.client.SignalWorkflow(ctx, id, "", workflows.SignalReconcile, "test"))
	// The wake-up's pass ends before the refused desired state is sent: a
	// pass that finds the guest converged clears the last error.
	waitFor(t, "the wake-up's read", func() bool { return countEvents(runEvents(t, a.client, id, ""), stepDone) > reads })
	a.waitPhase(t, 201, workflows.PhaseConverged)
	bad := spec
	bad.Memory = "lots"
	must(t, a.client.SignalWorkflow(ctx, id, "", workflows.SignalSetDesired, bad))
	a.waitStatus(t, 201, "the refusal shown", func(st workflows.GuestStatus) bool { return st.LastError != "" })
	must(t, a.client.SignalWorkflow(ctx, id, "", workflows.SignalSetDesired, spec))
	if res := a.applySpec(t, spec); res.Generation != 1 {
		t.Errorf("the same desired state again: generation %d, want 1", res.Generation)
	}
	spec.Cores = 2
	must(t, a.client.SignalWorkflow(ctx, id, "", workflows.SignalSetDesired, spec))
	st := a.waitStatus(t, 201, "2 cores", func(st workflows.GuestStatus) bool {
		return st.Phase == workflows.PhaseConverged && st.Observed != nil && st.Observed.Cores == 2
	})
	if st.Generation != 2 {
		t.Errorf("generation %d, want 2: only the changed desired state counts", st.Generation)
	}
	recordHistory(t, a.client, id, "", "guest-desired-memo-signals")
}

// A wait for a signature, a refused approval, then a new desired state
// that supersedes the wait.
func TestGuestLoopSupersededWait(t *testing.T) {
	host := uniqueHost("pve-lsup")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 202, Name: "db", Status: "running", MemoryMiB: 512, Cores: 1}))
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)
	a.applySpec(t, desired.Spec{Host: host, VMID: 202, State: desired.Absent})
	a.waitPhase(t, 202, workflows.PhasePending)
	if v := a.approve(t, 202, workflows.Approval{Blob: "{}", Signature: "not a signature"}); v.Accepted {
		t.Fatalf("garbage approval accepted: %+v", v)
	}
	a.applySpec(t, desired.Spec{Host: host, VMID: 202, Kind: desired.QEMU, Name: "db", State: desired.Running, Memory: "512", Cores: 1})
	a.waitStatus(t, 202, "converged at generation 2", func(st workflows.GuestStatus) bool {
		return st.Phase == workflows.PhaseConverged && st.Generation == 2 && st.Pending == nil
	})
	if _, ok := sim.Guest(202); !ok {
		t.Fatal("the guest was destroyed")
	}
	recordHistory(t, a.client, workflows.GuestWorkflowID(host, 202), "", "guest-desired-memo-superseded")
}

// A start that fails twice: the first time a wake-up came during the failed
// pass, so the guest is read again at once; the second time it waits for
// its retry time; the third start works.
func TestGuestLoopFailureAndRetryTime(t *testing.T) {
	host := uniqueHost("pve-lfail")
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, TaskDuration: time.Second})
	must(t, err)
	t.Cleanup(func() { sim.Close() })
	must(t, sim.AddVM(pvesim.Guest{VMID: 203, Name: "app", Status: "stopped", MemoryMiB: 512, Cores: 1}))
	sim.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/*/status/start", VMID: 203, Kind: pvesim.FaultTaskError,
		Message: "start failed: no bootable device", Times: 2})
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)
	id := workflows.GuestWorkflowID(host, 203)
	spec := desired.Spec{Host: host, VMID: 203, Kind: desired.QEMU, Name: "app", State: desired.Running, Memory: "512", Cores: 1}
	startGuestWorkflow(t, a, workflows.GuestInput{Host: host, VMID: 203, Desired: &spec, RetryEvery: 2 * time.Second})
	waitFor(t, "the first start", func() bool { return countRequests(sim, "POST", "/qemu/203/status/start") > 0 })
	must(t, a.client.SignalWorkflow(context.Background(), id, "", workflows.SignalReconcile, "test"))
	st := a.waitPhase(t, 203, workflows.PhaseConverged)
	if n := countRequests(sim, "POST", "/qemu/203/status/start"); n != 3 {
		t.Errorf("%d starts, want 3 (recent %+v)", n, st.Recent)
	}
	if !eventFollowedBy(runEvents(t, a.client, id, ""), ofType(enumspb.EVENT_TYPE_TIMER_FIRED), stepDone) {
		t.Error("no retry timer fired")
	}
	recordHistory(t, a.client, id, "", "guest-desired-memo-failure-retry")
}

// A disk larger than the spec: the other steps run, the guest ends in
// conflict, with the note.
func TestGuestLoopConflict(t *testing.T) {
	host := uniqueHost("pve-lconf")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 206, Name: "big", Status: "stopped", MemoryMiB: 512, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:vm-206-disk-0,size=32G"}}))
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)
	a.applySpec(t, desired.Spec{Host: host, VMID: 206, Kind: desired.QEMU, Name: "big", State: desired.Running, Memory: "512", Cores: 2,
		Disks: map[string]string{"scsi0": "local-lvm:16"}})
	st := a.waitPhase(t, 206, workflows.PhaseConflict)
	if g, _ := sim.Guest(206); g.Status != "running" || g.Cores != 2 {
		t.Errorf("guest %+v, want running with 2 cores: the steps beside the disk run", g)
	}
	if st.Pending != nil {
		t.Errorf("pending %+v: nothing can shrink a disk, nothing should wait for it", st.Pending)
	}
	recordHistory(t, a.client, workflows.GuestWorkflowID(host, 206), "", "guest-desired-memo-conflict")
}

// A guest waiting for a signature continues as new when its history is
// long, and the next run goes on waiting for the same action, which the
// approval then runs.
func TestGuestLoopContinuesAsNewWhilePending(t *testing.T) {
	host := uniqueHost("pve-lpcan")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 207, Name: "old", Status: "running", MemoryMiB: 512, Cores: 1}))
	ops := newOperatorKey(t, "ed25519")
	a := startAgent(t, host, sim, ops.Pub)
	id := workflows.GuestWorkflowID(host, 207)
	spec := desired.Spec{Host: host, VMID: 207, State: desired.Absent}
	first := startGuestWorkflow(t, a, workflows.GuestInput{Host: host, VMID: 207, Desired: &spec, MaxHistoryEvents: 60})
	since := a.waitPhase(t, 207, workflows.PhasePending).Pending.Since
	// Wake-ups, as the host workflow sent them, grow the history.
	waitFor(t, "the pending run to continue as new", func() bool {
		evs := runEvents(t, a.client, id, first.GetRunID())
		if evs[len(evs)-1].GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW {
			return true
		}
		_ = a.client.SignalWorkflow(context.Background(), id, first.GetRunID(), workflows.SignalReconcile, "test")
		return false
	})
	st := a.waitStatus(t, 207, "the next run pending on the same action", func(st workflows.GuestStatus) bool {
		return st.Phase == workflows.PhasePending && st.Pending != nil
	})
	if !st.Pending.Since.Equal(since) || st.Generation != 1 {
		t.Errorf("pending since %s at generation %d, want since %s at generation 1", st.Pending.Since, st.Generation, since)
	}
	if v := a.approve(t, 207, signWithSSHKeygen(t, ops, opFor(st.Pending.OpTemplate))); !v.Accepted {
		t.Fatalf("approval in the next run: %+v", v)
	}
	a.waitPhase(t, 207, workflows.PhaseConverged)
	if _, ok := sim.Guest(207); ok {
		t.Fatal("guest 207 still exists")
	}
	recordHistory(t, a.client, id, first.GetRunID(), "guest-desired-memo-pending-continue-as-new")
	recordHistory(t, a.client, id, "", "guest-desired-memo-pending-carried")
}

// A cancelled guest workflow ends, cancelled, where it was.
func TestGuestLoopCancelled(t *testing.T) {
	host := uniqueHost("pve-lcancel")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 208, Name: "keep", Status: "running", MemoryMiB: 512, Cores: 1}))
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)
	a.applySpec(t, desired.Spec{Host: host, VMID: 208, State: desired.Absent})
	a.waitPhase(t, 208, workflows.PhasePending)
	id := workflows.GuestWorkflowID(host, 208)
	must(t, a.client.CancelWorkflow(context.Background(), id, ""))
	err := a.client.GetWorkflow(context.Background(), id, "").Get(context.Background(), nil)
	if !temporal.IsCanceledError(err) {
		t.Fatalf("workflow ended with %v, want cancelled", err)
	}
	if _, ok := sim.Guest(208); !ok {
		t.Fatal("guest 208 was destroyed")
	}
	recordHistory(t, a.client, id, "", "guest-desired-memo-cancelled")
}

// A host workflow that continues as new by history length, with notices
// and wake-ups on the way.
func TestHostLoopContinuesAsNew(t *testing.T) {
	host := uniqueHost("pve-lhcan")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 204, Name: "one", Status: "running", MemoryMiB: 512, Cores: 1}))
	c := clientFor(t)
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: workflows.HostWorkflowID(host), TaskQueue: workflows.TaskQueue(host)},
		workflows.HostWorkflow, workflows.HostInput{Host: host, Interval: time.Second, MaxHistoryEvents: 80})
	must(t, err)
	// The worker hands the host workflow its own interval: the same here.
	a := startAgentWith(t, host, sim, func(c *worker.Config) { c.DriftCheckInterval = time.Second }, newOperatorKey(t, "ed25519").Pub)
	a.applySpec(t, desired.Spec{Host: host, VMID: 204, Kind: desired.QEMU, Name: "one", State: desired.Running, Memory: "512", Cores: 1})
	a.waitPhase(t, 204, workflows.PhaseConverged)
	must(t, sim.SetStatus(204, "stopped"))
	waitFor(t, "the host run to continue as new", func() bool {
		evs := runEvents(t, c, workflows.HostWorkflowID(host), run.GetRunID())
		return evs[len(evs)-1].GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
	})
	hs := a.hostStatus(t)
	if hs.Interval != time.Second || !slices.Contains(hs.Managed, 204) {
		t.Errorf("after continue-as-new: %+v, want interval 1s and guest 204 managed", hs)
	}
	recordHistory(t, c, workflows.HostWorkflowID(host), run.GetRunID(), "host-from-guests-continue-as-new")
}
