package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// A worker killed while Proxmox runs the start task it POSTed: the next
// worker process resumes waiting on the recorded task instead of POSTing
// again, and the guest workflow converges.
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

	first := startChild(t, env, "worker-1.log")
	c := clientFor(t)
	spec := desired.Spec{Host: host, VMID: 101, Kind: desired.QEMU, Name: "db", State: desired.Running, Memory: "2GiB", Cores: 2}
	_, err = c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(host, 101), TaskQueue: workflows.TaskQueue(host),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 101, Desired: &spec})
	if err != nil {
		t.Fatal(err)
	}

	// Kill the worker once the start task runs on the node.
	deadline := time.Now().Add(30 * time.Second)
	for countRequests(sim, "POST", "/qemu/101/status/start") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("start was never POSTed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitRecordedTask(t, c, workflows.GuestWorkflowID(host, 101))
	first.kill(t)
	if g, _ := sim.Guest(101); g.Status == "running" {
		t.Fatal("the start task finished before the worker was killed: the test proves nothing")
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

	first := startChild(t, env, "worker-1.log")
	c := clientFor(t)
	spec := desired.Spec{Host: host, VMID: 102, Kind: desired.QEMU, Name: "app", State: desired.Running, Memory: "1024", Cores: 1}
	_, err = c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(host, 102), TaskQueue: workflows.TaskQueue(host),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 102, Desired: &spec})
	must(t, err)
	waitFor(t, "the start to be POSTed", func() bool { return countRequests(sim, "POST", "/qemu/102/status/start") > 0 })
	waitRecordedTask(t, c, workflows.GuestWorkflowID(host, 102))

	stopped := time.Now()
	if err := first.terminate(t); err != nil {
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

// waitRecordedTask waits until the server holds, as heartbeat details of
// one of the workflow's running activities, the UPID of a Proxmox task.
func waitRecordedTask(t *testing.T, c client.Client, workflowID string) {
	t.Helper()
	waitFor(t, "the UPID heartbeat to reach the server", func() bool {
		desc, err := c.DescribeWorkflowExecution(context.Background(), workflowID, "")
		if err != nil {
			return false
		}
		for _, pa := range desc.GetPendingActivities() {
			for _, p := range pa.GetHeartbeatDetails().GetPayloads() {
				if strings.Contains(string(p.GetData()), `"upid":"UPID:`) {
					return true
				}
			}
		}
		return false
	})
}
