package tests

import (
	"context"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// The walking skeleton: a guest workflow on the host's task queue reads a
// stopped guest through the real worker and the simulator, and starts it.
func TestGuestWorkflowReadsAndStartsAGuest(t *testing.T) {
	host := uniqueHost("pve-e2e1")
	sim := startSim(t, host)
	if err := sim.AddVM(pvesim.Guest{VMID: 101, Name: "web", Status: "stopped", MemoryMiB: 1024, Cores: 2}); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)

	spec := desired.Spec{Host: host, VMID: 101, Kind: desired.QEMU, Name: "web", State: desired.Running, Memory: "1024", Cores: 2}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := a.client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(host, 101), TaskQueue: workflows.TaskQueue(host),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 101, Desired: &spec})
	if err != nil {
		t.Fatalf("start guest workflow: %v", err)
	}

	st := a.waitPhase(t, 101, workflows.PhaseConverged)
	g, ok := sim.Guest(101)
	if !ok || g.Status != "running" {
		t.Fatalf("simulator guest 101 = %+v, want running", g)
	}
	if n := countRequests(sim, "POST", "/qemu/101/status/start"); n != 1 {
		t.Errorf("start was POSTed %d times, want once", n)
	}
	if st.Observed == nil || st.Observed.Status != "running" || st.Observed.MemoryMiB != 1024 {
		t.Errorf("observed = %+v, want running with 1024 MiB", st.Observed)
	}
	if len(st.Recent) != 1 || st.Recent[0].Action.Op != desired.OpStart || st.Recent[0].Result != "done" {
		t.Errorf("recent actions = %+v, want one done guest.start", st.Recent)
	}
	recordHistory(t, a.client, workflows.GuestWorkflowID(host, 101), "", "guest-desired-memo-converge")
}
