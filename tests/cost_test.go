package tests

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// maxCallsPerGuest is what converging a new guest (create with its
// configuration, start, and knowing it converged) may cost in Proxmox calls,
// reads included, with tasks that end at once: the first read asks whether
// the VMID is free, the create posts, polls its task and reads the
// configuration it records in the ledger, the start posts and polls, and
// the workflow plans against what the steps reported instead of reading
// again (workflows.versionGuestCost). Before, it was 20: four listings of
// the whole node among them.
const maxCallsPerGuest = 6

// maxWorkflowTasksPerGuest bounds the guest workflow's tasks to converge a
// new guest from its Update-With-Start: the start with the update, the read
// (a local activity, in that same task) and the scheduling of the create,
// whose step starts the guest too; then the step's completion. It was 6,
// then 4 while the read was an activity of its own, then 3 while the start
// was a step of its own.
const maxWorkflowTasksPerGuest = 2

// maxHeartbeatsPerGuest bounds the heartbeats the worker sends to converge
// a new guest: one per Proxmox task, its UPID, which a retry resumes (the
// create's and the start's). Each is a write of the guest's workflow on the
// server. It was 3 while every attempt also heartbeat as it started, which
// a first attempt, with no details to keep, does not need.
const maxHeartbeatsPerGuest = 2

// callShape names a recorded call by what it does: the method and the path
// with the node, VMIDs and UPIDs taken out.
func callShape(r pvesim.Request) string {
	segs := strings.Split(strings.Trim(r.Path, "/"), "/")
	for i, s := range segs {
		if _, err := strconv.Atoi(s); err == nil || strings.HasPrefix(s, "UPID:") {
			segs[i] = "*"
		}
		if i == 1 && segs[0] == "nodes" {
			segs[i] = "{node}"
		}
	}
	return r.Method + " /" + strings.Join(segs, "/")
}

// callGuest is the guest a recorded call is about: from its path or
// parameters, else from the UPID it polls.
func callGuest(r pvesim.Request) int {
	if r.VMID != 0 {
		return r.VMID
	}
	for _, s := range strings.Split(r.Path, "/") {
		if f := strings.Split(s, ":"); len(f) >= 8 && f[0] == "UPID" {
			n, _ := strconv.Atoi(f[6])
			return n
		}
	}
	return 0
}

// Converging new guests costs each at most maxCallsPerGuest Proxmox calls,
// and no per-guest step lists the node (/cluster/resources grows with the
// node: read per guest, converging is quadratic). The test logs the calls
// by shape and the workflow tasks per guest, the figures of issue 12.
func TestConvergeCostsAFewProxmoxCallsPerGuest(t *testing.T) {
	const guests = 6
	host := uniqueHost("pve-cost")
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, RecordReads: true})
	must(t, err)
	t.Cleanup(func() { sim.Close() })
	a := startAgentWith(t, host, sim, func(c *worker.Config) {
		c.DriftCheckInterval = time.Hour
		c.Metrics.Address = "127.0.0.1:0"
	}, newOperatorKey(t, "ed25519").Pub)
	// The host workflow's first pass lists the node; wait for it so that
	// what follows is the guests' own cost.
	waitFor(t, "the host workflow's first pass", func() bool {
		st, err := a.tryHostStatus()
		return err == nil && !st.LastPass.IsZero()
	})
	sim.ResetRequests()
	requests := func(op string) float64 {
		return metricSum(a.scrape(t), "temporal_request_total", `operation="`+op+`"`)
	}
	heartbeatsBefore, completionsBefore := requests("RecordActivityTaskHeartbeat"), requests("RespondActivityTaskCompleted")
	signalsBefore := requests("SignalWorkflowExecution")

	for i := range guests {
		a.applySpec(t, desired.Spec{Host: host, VMID: 200 + i, Kind: desired.QEMU, Name: fmt.Sprintf("g%d", i),
			State: desired.Running, Memory: "1GiB", Cores: 2, Disks: map[string]string{"scsi0": "local-lvm:4"}, Tags: []string{"bench"}})
	}
	for i := range guests {
		a.waitPhase(t, 200+i, workflows.PhaseConverged)
	}

	calls := append(sim.Reads(), sim.Requests()...)
	shapes := map[string]int{}
	perGuest := map[int]int{}
	listings := 0
	for _, r := range calls {
		shapes[callShape(r)]++
		if r.Path == "/cluster/resources" {
			listings++
			continue
		}
		perGuest[callGuest(r)]++
	}
	for _, s := range slices.Sorted(maps.Keys(shapes)) {
		t.Logf("%5.2f per guest  %s", float64(shapes[s])/guests, s)
	}
	tasks := 0
	for i := range guests {
		id := workflows.GuestWorkflowID(host, 200+i)
		evs := runEvents(t, a.client, id, "")
		n := countEvents(evs, ofType(enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED))
		if n > maxWorkflowTasksPerGuest {
			t.Errorf("guest %d took %d workflow tasks to converge, want at most %d", 200+i, n, maxWorkflowTasksPerGuest)
		}
		// One step creates and starts it; the read is a local activity.
		if n := countEvents(evs, ofType(enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)); n != 1 {
			t.Errorf("guest %d scheduled %d activities to converge, want 1 (the create that starts it)", 200+i, n)
		}
		tasks += n
	}
	it := a.client.GetWorkflowHistory(context.Background(), workflows.GuestWorkflowID(host, 200), "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var seq []string
	for it.HasNext() {
		ev, err := it.Next()
		must(t, err)
		seq = append(seq, strings.TrimPrefix(ev.GetEventType().String(), "EVENT_TYPE_"))
	}
	t.Logf("guest 200's history: %s", strings.Join(seq, " "))
	// The SDK's counters reach /metrics at the scope's next report (a
	// second): wait until the steps' completions show there.
	waitFor(t, "the steps' completions in the worker's metrics", func() bool {
		return requests("RespondActivityTaskCompleted")-completionsBefore >= guests
	})
	beats := requests("RecordActivityTaskHeartbeat") - heartbeatsBefore
	t.Logf("%d calls for %d guests (%d listings); %.2f workflow tasks and %.2f heartbeats per guest",
		len(calls), guests, listings, float64(tasks)/guests, beats/guests)
	if beats > maxHeartbeatsPerGuest*guests {
		t.Errorf("%.0f heartbeats for %d guests, want at most %d per guest (one per task: its UPID)", beats, guests, maxHeartbeatsPerGuest)
	}
	// The host workflow reads the desired states from the guest workflows'
	// memos at its pass: no guest signals it (one signal, and a workflow
	// task of the host workflow, per guest before versionGuestDesiredMemo).
	if n := requests("SignalWorkflowExecution") - signalsBefore; n > 0 {
		t.Errorf("the worker sent %.0f signals while %d guests converged, want none", n, guests)
	}

	// The host workflow may list the node once meanwhile; a guest's steps
	// never do.
	if listings > 1 {
		t.Errorf("the node was listed %d times (/cluster/resources) while %d guests converged: a guest reads itself, not the node", listings, guests)
	}
	if n := perGuest[0]; n > 0 {
		t.Errorf("%d calls name no guest", n)
	}
	for i := range guests {
		if n := perGuest[200+i]; n > maxCallsPerGuest {
			t.Errorf("guest %d took %d Proxmox calls to converge, want at most %d", 200+i, n, maxCallsPerGuest)
		}
	}
}

// An idle host costs two Proxmox calls per host pass, whatever its number
// of guests: the listing and one guest's configuration in turn; no guest
// reads itself on a timer. A change the host workflow's comparison does not
// look at (tags set behind the agent's back) still wakes the guest, which
// sets them back.
func TestIdleHostCostsTwoCallsPerPass(t *testing.T) {
	const guests = 8
	host := uniqueHost("pve-idle")
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, RecordReads: true})
	must(t, err)
	t.Cleanup(func() { sim.Close() })
	a := startAgentWith(t, host, sim, func(c *worker.Config) { c.DriftCheckInterval = time.Second }, newOperatorKey(t, "ed25519").Pub)
	for i := range guests {
		a.applySpec(t, desired.Spec{Host: host, VMID: 300 + i, Kind: desired.QEMU, Name: fmt.Sprintf("idle%d", i),
			State: desired.Running, Memory: "512", Cores: 1, Tags: []string{"bench"}})
	}
	for i := range guests {
		a.waitPhase(t, 300+i, workflows.PhaseConverged)
	}
	// pvestatd's next cycle lists the new guests as they are; the host
	// workflow reads each once more, then knows them.
	sim.RefreshStats()
	waitHostPasses(t, a, 3)

	sim.ResetRequests()
	const passes = 5
	waitHostPasses(t, a, passes)
	calls := append(sim.Reads(), sim.Requests()...)
	shapes := map[string]int{}
	for _, r := range calls {
		shapes[callShape(r)]++
	}
	t.Logf("%d calls over %d host passes with %d guests: %v", len(calls), passes, guests, shapes)
	// The window starts and ends inside a pass: at most one more pass.
	if len(calls) > 2*(passes+1) {
		t.Errorf("%d Proxmox calls over %d idle host passes, want at most 2 per pass", len(calls), passes)
	}
	for s, n := range shapes {
		if s != "GET /cluster/resources" && s != "GET /nodes/{node}/qemu/*/config" {
			t.Errorf("%d idle calls %s: want only the listing and the configuration read in turn", n, s)
		}
	}

	// Tags changed behind the agent's back: the listing shows them, the
	// read finds the configuration changed, the guest is woken and sets its
	// own tags back.
	req, err := http.NewRequest("PUT", sim.URL()+"/nodes/"+host+"/qemu/303/config", strings.NewReader("tags=hand-made"))
	must(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "PVEAPIToken="+sim.TokenID()+"="+sim.TokenSecret())
	resp, err := sim.HTTPClient().Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("set tags behind the agent's back: %s", resp.Status)
	}
	sim.RefreshStats()
	waitFor(t, "guest 303's tags set back", func() bool {
		g, _ := sim.Guest(303)
		return g.Tags == "bench"
	})
}
