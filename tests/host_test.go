package tests

import (
	"context"
	"slices"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// reconcileSignals counts the wake-ups a workflow's current run received.
func reconcileSignals(t *testing.T, a *agent, workflowID string) int {
	t.Helper()
	n := 0
	it := a.client.GetWorkflowHistory(context.Background(), workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		must(t, err)
		if s := ev.GetWorkflowExecutionSignaledEventAttributes(); s != nil && s.GetSignalName() == workflows.SignalReconcile {
			n++
		}
	}
	return n
}

// waitHostPasses waits until the host workflow has listed the node n more
// times.
func waitHostPasses(t *testing.T, a *agent, n int) workflows.HostStatus {
	t.Helper()
	last := a.hostStatus(t).LastPass
	var hs workflows.HostStatus
	for range n {
		waitFor(t, "a host pass", func() bool {
			hs = a.hostStatus(t)
			return hs.LastPass.After(last)
		})
		last = hs.LastPass
	}
	return hs
}

// A guest waiting for a signature always looks drifted to the host (it is
// absent in its desired state, present on the node), and waking it changes
// nothing. Once its phase is visible, the host workflow stops waking it.
func TestHostDoesNotWakeAGuestWaitingForASignature(t *testing.T) {
	host := uniqueHost("pve-hold")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 192, Name: "data", Status: "running", MemoryMiB: 512, Cores: 1}))
	a := startAgentWith(t, host, sim, func(c *worker.Config) { c.DriftCheckInterval = time.Second }, newOperatorKey(t, "ed25519").Pub)
	a.applySpec(t, desired.Spec{Host: host, VMID: 192, State: desired.Absent})
	a.waitPhase(t, 192, workflows.PhasePending)
	waitFor(t, "the host workflow to see guest 192 hold", func() bool {
		hs := a.hostStatus(t)
		return slices.Contains(hs.Holding, 192) && slices.Contains(hs.Drifted, 192)
	})
	id := workflows.GuestWorkflowID(host, 192)
	before := reconcileSignals(t, a, id)
	hs := waitHostPasses(t, a, 3)
	if after := reconcileSignals(t, a, id); after != before {
		t.Errorf("the guest was woken %d times in three passes while it waited for a signature", after-before)
	}
	if !slices.Contains(hs.Drifted, 192) || !slices.Contains(hs.Holding, 192) {
		t.Errorf("host status %+v, want 192 drifted and holding", hs)
	}
	recordHistory(t, a.client, workflows.HostWorkflowID(host), "", "host-from-guests-holding")
}

// A worker that starts with a changed drift_check_interval hands it to the
// host workflow that runs already: the same run takes it, no restart.
func TestHostWorkflowTakesAChangedIntervalWithoutARestart(t *testing.T) {
	host := uniqueHost("pve-interval")
	sim := startSim(t, host)
	a := startAgentWith(t, host, sim, func(c *worker.Config) { c.DriftCheckInterval = time.Hour }, newOperatorKey(t, "ed25519").Pub)
	waitFor(t, "the first host pass", func() bool { return !a.hostStatus(t).LastPass.IsZero() })
	if hs := a.hostStatus(t); hs.Interval != time.Hour {
		t.Fatalf("interval %s, want 1h", hs.Interval)
	}
	desc, err := a.client.DescribeWorkflowExecution(context.Background(), workflows.HostWorkflowID(host), "")
	must(t, err)
	run := desc.GetWorkflowExecutionInfo().GetExecution().GetRunId()
	a.stop()

	a = startAgentWith(t, host, sim, func(c *worker.Config) { c.DriftCheckInterval = time.Second }, newOperatorKey(t, "ed25519").Pub)
	waitFor(t, "the new interval", func() bool {
		hs, err := a.tryHostStatus()
		return err == nil && hs.Interval == time.Second
	})
	waitHostPasses(t, a, 2)
	desc, err = a.client.DescribeWorkflowExecution(context.Background(), workflows.HostWorkflowID(host), "")
	must(t, err)
	if got := desc.GetWorkflowExecutionInfo().GetExecution().GetRunId(); got != run {
		t.Errorf("host workflow run %s, want the one that ran before (%s)", got, run)
	}
	recordHistory(t, a.client, workflows.HostWorkflowID(host), "", "host-from-guests-configure")
}
