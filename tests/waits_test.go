package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"

	"github.com/felhom/felhom-agent/internal/historyfacts"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// countEvents counts the events that match.
func countEvents(evs []*historypb.HistoryEvent, match func(*historypb.HistoryEvent) bool) int {
	n := 0
	for _, e := range evs {
		if match(e) {
			n++
		}
	}
	return n
}

// A guest with a two-hourly resync, woken four times before it: each wake-up
// reads the guest and waits again, and the timer of the wait it ended is
// cancelled, not left to fire an hour later into an empty workflow task.
func TestWokenGuestCancelsItsWaitTimer(t *testing.T) {
	host := uniqueHost("pve-gwait")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 211, Name: "web", Status: "running", MemoryMiB: 512, Cores: 1}))
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)
	id := workflows.GuestWorkflowID(host, 211)
	spec := desired.Spec{Host: host, VMID: 211, Kind: desired.QEMU, Name: "web", State: desired.Running, Memory: "512", Cores: 1}
	startGuestWorkflow(t, a, workflows.GuestInput{Host: host, VMID: 211, Desired: &spec, ResyncEvery: 2 * time.Hour})
	a.waitPhase(t, 211, workflows.PhaseConverged)
	for i := range 4 {
		reads := countEvents(runEvents(t, a.client, id, ""), stepDone)
		must(t, a.client.SignalWorkflow(context.Background(), id, "", workflows.SignalReconcile, fmt.Sprintf("wake %d", i)))
		waitFor(t, "the read after the wake-up", func() bool {
			evs := runEvents(t, a.client, id, "")
			return countEvents(evs, stepDone) > reads && historyfacts.OpenTimers(evs) > 0
		})
	}
	evs := runEvents(t, a.client, id, "")
	if n := historyfacts.OpenTimers(evs); n != 1 {
		t.Errorf("%d timers open after four wake-ups, want the current wait's one", n)
	}
	if n := countEvents(evs, ofType(enumspb.EVENT_TYPE_TIMER_CANCELED)); n != 4 {
		t.Errorf("%d timers cancelled, want one per wake-up (4)", n)
	}
	recordHistory(t, a.client, id, "", "guest-desired-memo-woken")
}

// A host workflow on an hourly interval takes the desired-state notices of
// five guests between two passes, as guest workflows recorded before
// versionGuestDesiredMemo still send them: each ends its wait, and the
// wait's timer is cancelled rather than left to fire.
func TestNotifiedHostCancelsItsWaitTimer(t *testing.T) {
	host := uniqueHost("pve-hwait")
	sim := startSim(t, host)
	a := startAgentWith(t, host, sim, func(c *worker.Config) { c.DriftCheckInterval = time.Hour }, newOperatorKey(t, "ed25519").Pub)
	waitFor(t, "the first host pass", func() bool { return !a.hostStatus(t).LastPass.IsZero() })
	for vmid := 221; vmid < 226; vmid++ {
		spec := desired.Spec{Host: host, VMID: vmid, Kind: desired.QEMU, Name: fmt.Sprintf("g%d", vmid), State: desired.Running, MemoryMiB: 512, Cores: 1}
		must(t, a.client.SignalWorkflow(context.Background(), workflows.HostWorkflowID(host), "", workflows.SignalDesiredChanged,
			workflows.DesiredNotice{VMID: vmid, Spec: &spec}))
	}
	id := workflows.HostWorkflowID(host)
	waitFor(t, "the five notices", func() bool {
		return countEvents(runEvents(t, a.client, id, ""), ofType(enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)) >= 5
	})
	waitFor(t, "the host waiting again", func() bool {
		evs := runEvents(t, a.client, id, "")
		return len(evs) > 0 && evs[len(evs)-1].GetEventType() == enumspb.EVENT_TYPE_TIMER_STARTED
	})
	evs := runEvents(t, a.client, id, "")
	if n := countEvents(evs, ofType(enumspb.EVENT_TYPE_TIMER_CANCELED)); n == 0 {
		t.Errorf("no timer cancelled after %d notices", countEvents(evs, ofType(enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)))
	}
	if n := historyfacts.OpenTimers(evs); n != 1 {
		t.Errorf("%d timers open, want the current wait's one", n)
	}
	recordHistory(t, a.client, id, "", "host-from-guests-notified")
}
