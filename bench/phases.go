package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	sdkworker "go.temporal.io/sdk/worker"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// steady converges a second fleet of the same size with shortened
// intervals, then counts what the idle fleet costs over a window that
// holds every guest's resync.
func (e *env) steady(ctx context.Context, r *report) error {
	o := e.opts
	hosts, err := e.startHosts(ctx, "idle", o.hosts, hostSetup{drift: o.steadyDrift})
	if err != nil {
		return err
	}
	defer closeHosts(hosts)
	specs := fleetSpecs(hosts, o.guests)
	if err := e.submit(ctx, specs, workflows.GuestInput{ResyncEvery: o.steadyResync}); err != nil {
		return err
	}
	if err := e.waitGuests(ctx, hosts, workflows.PhaseConverged, len(specs)); err != nil {
		return err
	}
	settleMetrics(ctx)
	before, err := scrapeAll(ctx, hosts)
	if err != nil {
		return err
	}
	calls0 := simCalls(hosts)
	start := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.steadyWindow):
	}
	calls := simCalls(hosts) - calls0
	window := time.Since(start)
	settleMetrics(ctx)
	after, err := scrapeAll(ctx, hosts)
	if err != nil {
		return err
	}
	d := after.sub(before)
	mins := window.Minutes()
	note := fmt.Sprintf("window %s, drift_check_interval %s, resync %s", window.Round(time.Second), o.steadyDrift, o.steadyResync)
	r.add("steady", "proxmox calls per host per minute", float64(calls)/float64(len(hosts))/mins, "", note)
	r.add("steady", "workflow tasks per minute", d.workflowTasks/mins, "", "all hosts, the host workflows' included")
	r.add("steady", "activities per minute", d.activities/mins, "", "")
	r.add("steady", "worker requests per minute", d.requests/mins, "", "long polls included")
	return nil
}

// approval measures the time from sending a signed approval to the
// destructive request reaching the simulator, one approval after another,
// on its own host: each guest exists, the desired state says absent, so
// its destroy waits for a signature.
func (e *env) approval(ctx context.Context, r *report) error {
	o := e.opts
	hosts, err := e.startHosts(ctx, "appr", 1, hostSetup{})
	if err != nil {
		return err
	}
	defer closeHosts(hosts)
	h := hosts[0]
	var specs []desired.Spec
	for i := range o.approvals {
		vmid := firstVMID + i
		if err := h.sim.AddVM(pvesim.Guest{VMID: vmid, Name: "g" + strconv.Itoa(vmid), MemoryMiB: 512, Cores: 1}); err != nil {
			return err
		}
		specs = append(specs, desired.Spec{Host: h.id, VMID: vmid, Kind: desired.QEMU, State: desired.Absent})
	}
	if err := e.submit(ctx, specs, workflows.GuestInput{}); err != nil {
		return err
	}
	if err := e.waitGuests(ctx, hosts, workflows.PhasePending, len(specs)); err != nil {
		return err
	}
	h.sim.ResetRequests()
	var latencies []time.Duration
	for _, s := range specs {
		id := workflows.GuestWorkflowID(s.Host, s.VMID)
		v, err := e.client.QueryWorkflow(ctx, id, "", workflows.QueryPending)
		if err != nil {
			return fmt.Errorf("query pending of %s: %w", id, err)
		}
		var pending *workflows.PendingAction
		if err := v.Get(&pending); err != nil || pending == nil {
			return fmt.Errorf("pending action of %s: %v", id, err)
		}
		ap, err := e.key.sign(e.dir, pending.OpTemplate)
		if err != nil {
			return err
		}
		sent := time.Now()
		uh, err := e.client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
			WorkflowID: id, UpdateName: workflows.UpdateApprove, Args: []any{ap}, WaitForStage: client.WorkflowUpdateStageCompleted,
		})
		if err != nil {
			return fmt.Errorf("approve %s: %w", id, err)
		}
		var verdict workflows.ApprovalVerdict
		if err := uh.Get(ctx, &verdict); err != nil {
			return fmt.Errorf("approve %s: %w", id, err)
		}
		if !verdict.Accepted {
			return fmt.Errorf("approval of %s refused: %s %s", id, verdict.Code, verdict.Detail)
		}
		at, err := waitRequest(ctx, h.sim, "DELETE", fmt.Sprintf("/nodes/%s/qemu/%d", h.id, s.VMID))
		if err != nil {
			return err
		}
		latencies = append(latencies, at.Sub(sent))
	}
	slices.Sort(latencies)
	note := fmt.Sprintf("%d approvals, one at a time, signed by ssh-keygen", len(latencies))
	r.add("approval", "approval to DELETE p50", ms(percentile(latencies, 50)), "ms", note)
	r.add("approval", "approval to DELETE p99", ms(percentile(latencies, 99)), "ms", "")
	r.add("approval", "approval to DELETE max", ms(latencies[len(latencies)-1]), "ms", "")
	return nil
}

// waitRequest waits until the simulator received a request and returns
// when it arrived.
func waitRequest(ctx context.Context, sim *pvesim.Server, method, path string) (time.Time, error) {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if reqs := sim.RequestsMatching(method, path); len(reqs) > 0 {
			return reqs[0].Time, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for %s %s: %w", method, path, ctx.Err())
		case <-tick.C:
		}
	}
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[max(0, min(len(sorted)-1, i-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// crash starts a host whose worker runs in a child process, sends it
// crashGuests new guests whose tasks take crashTask, kills the worker
// with SIGKILL once every create task runs, starts a new worker process and
// measures until every guest converged, counting requests the simulator
// received twice.
func (e *env) crash(ctx context.Context, r *report) error {
	o := e.opts
	hosts, err := e.startHosts(ctx, "crash", 1, hostSetup{taskMin: o.crashTask, taskMax: o.crashTask})
	if err != nil {
		return err
	}
	defer closeHosts(hosts)
	h := hosts[0]
	specs := fleetSpecs(hosts, o.crashGuests)
	go func() { _ = e.submit(ctx, specs, workflows.GuestInput{}) }()
	// Every guest's create task is running: M mutations in flight.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for len(tasksStarted(h.sim, "POST", fmt.Sprintf("/nodes/%s/qemu", h.id))) < len(specs) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	killed := time.Now()
	if err := h.kill(); err != nil {
		return err
	}
	if err := e.startChild(ctx, h, e.hostDir(h.id)); err != nil {
		return err
	}
	if err := e.waitGuests(ctx, hosts, workflows.PhaseConverged, len(specs)); err != nil {
		return err
	}
	recovered := time.Since(killed)
	dups := duplicates(h.sim.Requests())
	note := fmt.Sprintf("%d creates in flight, tasks of %s, worker process killed with SIGKILL and started again", len(specs), o.crashTask)
	r.add("crash", "kill to all converged", recovered.Seconds(), "s", note)
	r.add("crash", "duplicate proxmox requests", float64(dups), "", "a mutating request acted on twice for one guest")
	return nil
}

// tasksStarted lists the requests matching method and path that started
// a task.
func tasksStarted(sim *pvesim.Server, method, path string) []pvesim.Request {
	var out []pvesim.Request
	for _, r := range sim.RequestsMatching(method, path) {
		if r.UPID != "" {
			out = append(out, r)
		}
	}
	return out
}

// duplicates counts the mutating requests that a guest received more than
// once with the same method and path and an answer that acted on it.
func duplicates(reqs []pvesim.Request) int {
	type key struct {
		vmid         int
		method, path string
	}
	seen := map[key]int{}
	n := 0
	for _, r := range reqs {
		if r.Status < 200 || r.Status >= 300 {
			continue
		}
		path := r.Path
		if r.Method == "POST" && path == "/nodes/"+nodeOf(path)+"/qemu" {
			path += "/" + strconv.Itoa(r.VMID) // the create names its guest in the form
		}
		k := key{r.VMID, r.Method, path}
		if seen[k]++; seen[k] > 1 {
			n++
		}
	}
	return n
}

func nodeOf(path string) string {
	var node string
	_, _ = fmt.Sscanf(path, "/nodes/%s", &node)
	if i := slices.Index([]byte(node), '/'); i >= 0 {
		node = node[:i]
	}
	return node
}

// memory measures the resident set of a worker process holding n open,
// converged guest workflows: the guests exist as desired, so converging
// them only reads.
func (e *env) memory(ctx context.Context, r *report, n int) error {
	hosts, err := e.startHosts(ctx, "mem"+strconv.Itoa(n)+"-", 1, hostSetup{})
	if err != nil {
		return err
	}
	defer closeHosts(hosts)
	h := hosts[0]
	idle, err := h.rss()
	if err != nil {
		return err
	}
	specs := fleetSpecs(hosts, n)
	for _, s := range specs {
		if err := h.sim.AddVM(pvesim.Guest{
			VMID: s.VMID, Name: s.Name, Status: "running", MemoryMiB: 512, Cores: 1, Tags: "bench",
			Disks: map[string]string{"scsi0": fmt.Sprintf("local-lvm:vm-%d-disk-0,size=4G", s.VMID)},
		}); err != nil {
			return err
		}
	}
	start := time.Now()
	if err := e.submit(ctx, specs, workflows.GuestInput{}); err != nil {
		return err
	}
	if err := e.waitGuests(ctx, hosts, workflows.PhaseConverged, len(specs)); err != nil {
		return err
	}
	took := time.Since(start)
	select { // idle: the last passes' activities and caches settle
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
	}
	rss, err := h.rss()
	if err != nil {
		return err
	}
	phase := fmt.Sprintf("memory %d", n)
	r.add(phase, "worker RSS with no guest", mib(idle), "MiB", "worker process, /proc/PID/status VmRSS")
	r.add(phase, "worker RSS idle converged", mib(rss), "MiB", fmt.Sprintf("%d open guest workflows, 10s after the last converged", n))
	r.add(phase, "time to converge (no mutation)", took.Seconds(), "s", "each guest read, found as desired")
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// replay runs one guest workflow with a very short resync until its run
// continues as new at the history bound, then replays that run's history
// with the SDK's replayer.
func (e *env) replay(ctx context.Context, r *report) error {
	hosts, err := e.startHosts(ctx, "replay", 1, hostSetup{})
	if err != nil {
		return err
	}
	defer closeHosts(hosts)
	h := hosts[0]
	vmid := firstVMID
	if err := h.sim.AddVM(pvesim.Guest{VMID: vmid, Name: "g1000", Status: "running", MemoryMiB: 512, Cores: 1}); err != nil {
		return err
	}
	spec := desired.Spec{Host: h.id, VMID: vmid, Kind: desired.QEMU, Name: "g1000", State: desired.Running, Memory: "512", Cores: 1}
	id := workflows.GuestWorkflowID(h.id, vmid)
	if _, err := workflows.SendDesired(ctx, e.client, spec, workflows.GuestInput{ResyncEvery: 10 * time.Millisecond}); err != nil {
		return err
	}
	defer func() { _ = e.client.TerminateWorkflow(context.WithoutCancel(ctx), id, "", "benchmark done") }()
	desc, err := e.client.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		return err
	}
	first := desc.GetWorkflowExecutionInfo().GetExecution().GetRunId()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		desc, err := e.client.DescribeWorkflowExecution(ctx, id, first)
		if err != nil {
			return err
		}
		if desc.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	hist := &historypb.History{}
	it := e.client.GetWorkflowHistory(ctx, id, first, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			return err
		}
		hist.Events = append(hist.Events, ev)
	}
	var times []time.Duration
	for range 5 {
		rp := sdkworker.NewWorkflowReplayer()
		rp.RegisterWorkflow(workflows.GuestReconcileWorkflow)
		rp.RegisterWorkflow(workflows.HostWorkflow)
		rp.RegisterWorkflow(workflows.SignedJobWorkflow)
		rp.RegisterWorkflow(workflows.ObserveGuestWorkflow)
		start := time.Now()
		if err := rp.ReplayWorkflowHistory(nil, hist); err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		times = append(times, time.Since(start))
	}
	slices.Sort(times)
	r.add("replay", "history events", float64(len(hist.Events)), "", "one guest run, closed by continue-as-new")
	r.add("replay", "replay time", ms(times[len(times)/2]), "ms", "median of 5, worker.NewWorkflowReplayer")
	return nil
}
