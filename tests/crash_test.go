package tests

import (
	"context"
	"slices"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/felhom/felhom-agent/activities"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// taskStatusPolls matches every task-status poll of the simulator.
const taskStatusPolls = "/nodes/*/tasks/*/status"

// holdFirstPoll makes the simulator hold the first task-status poll until the
// returned hook is released (or the poller dies): a worker stopped at Hit has
// POSTed its request and not yet looked at the task.
func holdFirstPoll(sim *pvesim.Server) *pvesim.Hook {
	hook := pvesim.NewHook()
	sim.Inject(pvesim.Fault{Method: "GET", Path: taskStatusPolls, Kind: pvesim.FaultHold, Hook: hook})
	return hook
}

// waitHit waits for the hook's request to arrive, failing the test after a
// minute so a worker that never gets there does not hang the run.
func waitHit(t *testing.T, what string, hook *pvesim.Hook) {
	t.Helper()
	select {
	case <-hook.Hit():
	case <-time.After(60 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// recordedProgress is the heartbeat the Temporal server holds for the
// workflow's pending activity of one of types, as its next attempt will
// receive it.
func recordedProgress(t *testing.T, c client.Client, workflowID string, types ...string) (activities.Progress, bool) {
	t.Helper()
	desc, err := c.DescribeWorkflowExecution(context.Background(), workflowID, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, pa := range desc.GetPendingActivities() {
		if !slices.Contains(types, pa.GetActivityType().GetName()) || pa.GetHeartbeatDetails() == nil {
			continue
		}
		var p activities.Progress
		if err := converter.GetDefaultDataConverter().FromPayloads(pa.GetHeartbeatDetails(), &p); err != nil {
			t.Fatalf("heartbeat details of %s: %v", workflowID, err)
		}
		return p, true
	}
	return activities.Progress{}, false
}

// A worker killed right after Proxmox answered the start with a UPID, before
// the worker polled that task: the Temporal server holds the UPID as the
// activity's heartbeat, the next worker process resumes waiting on that task
// instead of POSTing again, and the guest workflow converges.
func TestWorkerKilledMidMutationResumesWithoutSecondPost(t *testing.T) {
	host := uniqueHost("pve-crash1")
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, TaskDuration: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	if err := sim.AddVM(pvesim.Guest{VMID: 101, Name: "db", Status: "stopped", MemoryMiB: 2048, Cores: 2}); err != nil {
		t.Fatal(err)
	}
	cfg := agentConfig(t, host, sim, t.TempDir(), newOperatorKey(t, "ed25519").Pub)
	env := childEnviron(cfg, simCAFile(t, sim))
	firstPoll := holdFirstPoll(sim)

	first := startChild(t, env, "worker-1.log")
	c := clientFor(t)
	spec := desired.Spec{Host: host, VMID: 101, Kind: desired.QEMU, Name: "db", State: desired.Running, Memory: "2GiB", Cores: 2}
	_, err = c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(host, 101), TaskQueue: workflows.TaskQueue(host),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 101, Desired: &spec})
	if err != nil {
		t.Fatal(err)
	}

	waitHit(t, "the first status poll of the start task", firstPoll)
	first.kill()
	if g, _ := sim.Guest(101); g.Status == "running" {
		t.Fatal("the start task finished before the worker was killed: the test proves nothing")
	}
	posts := sim.RequestsMatching("POST", "/nodes/*/qemu/101/status/start")
	if len(posts) != 1 || posts[0].UPID == "" {
		t.Fatalf("start requests before the kill: %+v, want one that started a task", posts)
	}
	want := activities.Progress{Phase: "start", UPID: posts[0].UPID}
	if got, ok := recordedProgress(t, c, workflows.GuestWorkflowID(host, 101), workflows.ActivityStartGuest); !ok || got != want {
		t.Fatalf("heartbeat on the server after the kill: %+v (recorded: %v), want %+v", got, ok, want)
	}

	startChild(t, env, "worker-2.log")
	a := &agent{host: host, sim: sim, client: c}
	st := a.waitPhaseWithin(t, 101, workflows.PhaseConverged, 90*time.Second)

	if n := countRequests(sim, "POST", "/qemu/101/status/start"); n != 1 {
		t.Errorf("start was POSTed %d times across the crash, want once", n)
	}
	if g, _ := sim.Guest(101); g.Status != "running" {
		t.Errorf("guest status = %s, want running", g.Status)
	}
	var resumed bool
	for _, r := range st.Recent {
		if r.Action.Op == desired.OpStart && r.Result == "done" && len(r.Detail) > 7 && r.Detail[:7] == "resumed" {
			resumed = true
		}
	}
	if !resumed {
		t.Errorf("recent actions = %+v, want a guest.start that resumed the recorded task", st.Recent)
	}
}

// SIGTERM while Proxmox runs a task: the worker stops within its shutdown
// timeout with exit status 0, and the next worker finishes the step from the
// recorded task, without a second POST.
func TestWorkerStoppedGracefullyMidMutationLosesNothing(t *testing.T) {
	host := uniqueHost("pve-term1")
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, TaskDuration: 8 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	must(t, sim.AddVM(pvesim.Guest{VMID: 102, Name: "app", Status: "stopped", MemoryMiB: 1024, Cores: 1}))
	cfg := agentConfig(t, host, sim, t.TempDir(), newOperatorKey(t, "ed25519").Pub)
	env := childEnviron(cfg, simCAFile(t, sim))
	firstPoll := holdFirstPoll(sim)

	first := startChild(t, env, "worker-1.log")
	c := clientFor(t)
	spec := desired.Spec{Host: host, VMID: 102, Kind: desired.QEMU, Name: "app", State: desired.Running, Memory: "1024", Cores: 1}
	_, err = c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(host, 102), TaskQueue: workflows.TaskQueue(host),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 102, Desired: &spec})
	must(t, err)
	// The start is POSTed and its UPID recorded; the worker is told to stop
	// while it waits on the task.
	waitHit(t, "the first status poll of the start task", firstPoll)

	stopped := time.Now()
	first.signal(t, syscall.SIGTERM)
	firstPoll.Release()
	if err := first.wait(); err != nil {
		t.Fatalf("worker exited with %v after SIGTERM, want status 0", err)
	}
	if took := time.Since(stopped); took > cfg.ShutdownTimeout+10*time.Second {
		t.Errorf("worker took %s to stop, its shutdown timeout is %s", took, cfg.ShutdownTimeout)
	}
	if g, _ := sim.Guest(102); g.Status == "running" {
		t.Fatal("the task finished before the worker stopped: the test proves nothing")
	}

	startChild(t, env, "worker-2.log")
	a := &agent{host: host, sim: sim, client: c}
	a.waitPhaseWithin(t, 102, workflows.PhaseConverged, 90*time.Second)
	if n := countRequests(sim, "POST", "/qemu/102/status/start"); n != 1 {
		t.Errorf("start was POSTed %d times across the restart, want once", n)
	}
	if g, _ := sim.Guest(102); g.Status != "running" {
		t.Errorf("guest status = %s, want running", g.Status)
	}
}
