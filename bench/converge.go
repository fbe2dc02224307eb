package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/luthermonson/go-proxmox"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	sdkworker "go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/grpc"

	"github.com/felhom/felhom-agent/activities"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// convergeResult is what the converge phase measured; the test checks its
// counts.
type convergeResult struct {
	guests    int
	elapsed   time.Duration
	requests  float64
	calls     int64 // Proxmox API calls, reads included
	polls     int64 // of which task status reads and active-task listings
	mutations int   // mutating Proxmox requests answered 2xx
	critical  time.Duration
	submitted time.Duration      // until the last desired state was accepted
	hist      historyStats       // workflow tasks, activities and times, from the guest histories
	ops       map[string]float64 // worker requests by operation
	// CPU time used while converging: the worker processes', and this
	// process's (the server, the simulators, the driver).
	workerCPU, serverCPU time.Duration

	loopElapsed   time.Duration
	loopCalls     int64
	loopPolls     int64
	loopMutations int

	floorElapsed  time.Duration
	floorRequests int64
}

// converge creates, configures and starts every guest of a fresh fleet,
// then measures the direct loop and the bare-Temporal floor.
func (e *env) converge(ctx context.Context, r *report) (*convergeResult, error) {
	o := e.opts
	hosts, err := e.startHosts(ctx, "pve", o.hosts, hostSetup{taskMin: o.taskMin, taskMax: o.taskMax})
	if err != nil {
		return nil, err
	}
	defer closeHosts(hosts)
	specs := fleetSpecs(hosts, o.guests)
	res := &convergeResult{guests: len(specs)}

	settleMetrics(ctx)
	before, err := scrapeAll(ctx, hosts)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		h.sim.ResetRequests()
		h.tasks.reset()
	}
	calls0, polls0 := simCalls(hosts), simPolls(hosts)
	workerCPU0, err := workersCPU(hosts)
	if err != nil {
		return nil, err
	}
	serverCPU0 := selfCPU()
	start := time.Now()
	if err := e.submit(ctx, specs, workflows.GuestInput{}); err != nil {
		return nil, err
	}
	res.submitted = time.Since(start)
	if err := e.waitGuests(ctx, hosts, workflows.PhaseConverged, len(specs)); err != nil {
		return nil, err
	}
	detected := time.Since(start)
	res.serverCPU = selfCPU() - serverCPU0
	workerCPU1, err := workersCPU(hosts)
	if err != nil {
		return nil, err
	}
	res.workerCPU = workerCPU1 - workerCPU0
	res.calls, res.polls = simCalls(hosts)-calls0, simPolls(hosts)-polls0
	hist, err := e.historyStats(ctx, specs)
	if err != nil {
		return nil, err
	}
	res.elapsed = detected
	if !hist.lastConverged.IsZero() {
		res.elapsed = hist.lastConverged.Sub(start)
	}
	res.hist = hist
	settleMetrics(ctx)
	after, err := scrapeAll(ctx, hosts)
	if err != nil {
		return nil, err
	}
	used := after.sub(before)
	res.requests, res.ops = used.requests, used.ops
	for _, h := range hosts {
		res.critical = max(res.critical, h.tasks.criticalPath())
	}

	// The reference figures, from the same run.
	plan := map[string]map[int][]pvesim.Request{}
	for _, h := range hosts {
		plan[h.id] = mutationsByGuest(h.sim.Requests())
		for _, reqs := range plan[h.id] {
			res.mutations += len(reqs)
		}
	}
	if err := e.directLoop(ctx, hosts, plan, res); err != nil {
		return nil, fmt.Errorf("direct loop: %w", err)
	}
	if err := e.floor(ctx, hosts, res); err != nil {
		return nil, fmt.Errorf("bare-Temporal floor: %w", err)
	}

	n := float64(res.guests)
	secs := res.elapsed.Seconds()
	r.add("converge", "guests", n, "", "hosts × guests per host")
	r.add("converge", "time", secs, "s", "submit of the first desired state to the last guest converged")
	r.add("converge", "rate", n/secs, "guests/s", "")
	r.add("converge", "workflow tasks per guest", float64(res.hist.workflowTasks)/n, "", "WorkflowTaskCompleted in the guest histories")
	r.add("converge", "activities per guest", float64(res.hist.activities)/n, "", "scheduled, local ones included")
	r.add("converge", "worker requests per guest", res.requests/n, "", "every RPC of the workers to the server")
	for _, op := range slices.Sorted(maps.Keys(res.ops)) {
		if v := res.ops[op] / n; v >= 0.01 {
			r.add("converge", "… "+op, v, "", "")
		}
	}
	r.add("converge", "worker CPU per guest", ms(res.workerCPU)/n, "ms", "user and system time of the worker processes while converging")
	r.add("converge", "server and simulators CPU per guest", ms(res.serverCPU)/n, "ms", "this process: the embedded server, the simulators, the benchmark's driver")
	r.add("converge", "last desired state accepted", res.submitted.Seconds(), "s", "when the last Update-With-Start returned; the rest of the time is the last guests' own work")
	for _, st := range []struct {
		name  string
		times []time.Duration
		note  string
	}{
		{"guest start to first step", res.hist.toFirstStep, "desired state accepted, guest read, plan: workflow tasks and the server's queues"},
		{"guest in steps", res.hist.inSteps, "its step activities, started to completed: Proxmox requests and task waits"},
		{"guest last step to converged", res.hist.toConverged, "the workflow task that records it"},
	} {
		slices.Sort(st.times)
		r.add("converge", st.name+" p50", ms(percentile(st.times, 50)), "ms", st.note)
		r.add("converge", st.name+" p99", ms(percentile(st.times, 99)), "ms", "")
	}
	r.add("converge", "proxmox calls per guest", float64(res.calls)/n, "", "every API request, reads and task polls included")
	r.add("converge", "proxmox task polls per guest", float64(res.polls)/n, "", "of the calls, reads of a task's status and listings of active tasks")
	r.add("converge", "proxmox mutations per guest", float64(res.mutations)/n, "", "POST/PUT/DELETE answered 2xx")
	r.add("reference", "direct loop time", res.loopElapsed.Seconds(), "s", "the same mutations with go-proxmox, no Temporal, --concurrency guests at a time per host")
	r.add("reference", "direct loop proxmox calls per guest", float64(res.loopCalls)/n, "", "")
	r.add("reference", "direct loop task polls per guest", float64(res.loopPolls)/n, "", "")
	r.add("reference", "critical path", res.critical.Seconds(), "s", "longest sum of one guest's simulated task durations")
	r.add("reference", "bare-Temporal floor time", res.floorElapsed.Seconds(), "s", "as many Update-With-Start of a minimal workflow with one no-op activity")
	r.add("reference", "bare-Temporal floor rate", n/res.floorElapsed.Seconds(), "workflows/s", "")
	r.add("reference", "bare-Temporal floor requests per workflow", float64(res.floorRequests)/n, "", "RPCs of the floor's workers")
	r.add("ratio", "agent / direct loop", secs/res.loopElapsed.Seconds(), "×", "")
	if res.critical > 0 {
		r.add("ratio", "agent / critical path", secs/res.critical.Seconds(), "×", "")
		r.add("ratio", "direct loop / critical path", res.loopElapsed.Seconds()/res.critical.Seconds(), "×", "")
	}
	r.add("ratio", "agent rate / floor rate", res.floorElapsed.Seconds()/secs, "×", "")
	r.add("ratio", "proxmox calls agent / direct loop", float64(res.calls)/float64(max(res.loopCalls, 1)), "×", "")
	return res, nil
}

// mutationsByGuest groups the mutating requests answered 2xx by guest,
// in the order they arrived.
func mutationsByGuest(reqs []pvesim.Request) map[int][]pvesim.Request {
	out := map[int][]pvesim.Request{}
	for _, r := range reqs {
		if r.VMID != 0 && r.Status >= 200 && r.Status < 300 {
			out[r.VMID] = append(out[r.VMID], r)
		}
	}
	return out
}

// historyStats sums the guest workflows' histories.
type historyStats struct {
	workflowTasks, activities int
	lastConverged             time.Time // latest upsert of FelhomPhase=converged
	// Where each guest's time went, one entry per guest that converged:
	// from its run's start to its first step scheduled (the desired state
	// accepted, the guest read, the plan), in its steps (activities
	// started to completed: Proxmox requests and task waits), and from its
	// last step to converged.
	toFirstStep, inSteps, toConverged []time.Duration
}

// guestTimes is one guest history's share of historyStats' durations.
type guestTimes struct {
	started, firstScheduled, lastCompleted, converged time.Time
	inSteps                                           time.Duration
	stepStarted                                       map[int64]time.Time // ActivityTaskStarted by event ID
}

func (e *env) historyStats(ctx context.Context, specs []desired.Spec) (historyStats, error) {
	var (
		mu  sync.Mutex
		sum historyStats
	)
	converged := `"` + workflows.PhaseConverged + `"`
	err := forEach(ctx, len(specs), e.opts.concurrency, func(ctx context.Context, i int) error {
		var st historyStats
		gt := guestTimes{stepStarted: map[int64]time.Time{}}
		it := e.client.GetWorkflowHistory(ctx, workflows.GuestWorkflowID(specs[i].Host, specs[i].VMID), "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				return err
			}
			at := ev.GetEventTime().AsTime()
			switch ev.GetEventType() {
			case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
				gt.started = at
			case enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
				st.workflowTasks++
			case enumspb.EVENT_TYPE_ACTIVITY_TASK_STARTED:
				gt.stepStarted[ev.GetEventId()] = at
			case enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
				if s, ok := gt.stepStarted[ev.GetActivityTaskCompletedEventAttributes().GetStartedEventId()]; ok {
					gt.inSteps += at.Sub(s)
				}
				gt.lastCompleted = at
			case enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
				st.activities++
				if gt.firstScheduled.IsZero() {
					gt.firstScheduled = at
				}
			case enumspb.EVENT_TYPE_MARKER_RECORDED:
				if ev.GetMarkerRecordedEventAttributes().GetMarkerName() == "LocalActivity" {
					st.activities++
				}
			case enumspb.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
				p := ev.GetUpsertWorkflowSearchAttributesEventAttributes().GetSearchAttributes().GetIndexedFields()[visibility.Phase]
				if p != nil && string(p.GetData()) == converged {
					st.lastConverged = at
					gt.converged = at
				}
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if !gt.started.IsZero() && !gt.firstScheduled.IsZero() && !gt.lastCompleted.IsZero() && gt.converged.After(gt.lastCompleted) {
			sum.toFirstStep = append(sum.toFirstStep, gt.firstScheduled.Sub(gt.started))
			sum.inSteps = append(sum.inSteps, gt.inSteps)
			sum.toConverged = append(sum.toConverged, gt.converged.Sub(gt.lastCompleted))
		}
		sum.workflowTasks += st.workflowTasks
		sum.activities += st.activities
		if st.lastConverged.After(sum.lastConverged) {
			sum.lastConverged = st.lastConverged
		}
		return nil
	})
	return sum, err
}

// directLoop sends each guest's mutations of the agent's run to fresh
// simulators of the same names, straight with go-proxmox, waiting on each
// task the way the agent does (waitTask). Each host runs its own loop, as each
// host runs its own worker: --concurrency guests at a time per host, the
// hosts at once.
func (e *env) directLoop(ctx context.Context, hosts []*host, plan map[string]map[int][]pvesim.Request, res *convergeResult) error {
	type loop struct {
		client *proxmox.Client
		node   string
		watch  *activities.TaskWatch
		guests [][]pvesim.Request // each guest's requests, by VMID
	}
	var loops []loop
	var sims []*host
	defer closeHosts(sims)
	for _, h := range hosts {
		sim, tc, err := e.startSim(h.id, hostSetup{taskMin: e.opts.taskMin, taskMax: e.opts.taskMax})
		if err != nil {
			return err
		}
		sims = append(sims, &host{id: h.id, sim: sim, tasks: tc})
		l := loop{
			client: proxmox.NewClient(sim.URL(), proxmox.WithHTTPClient(sim.HTTPClient()), proxmox.WithAPIToken(sim.TokenID(), sim.TokenSecret())),
			node:   h.id,
		}
		l.watch = activities.NewTaskWatch(l.client, l.node, activities.DefaultPollInterval)
		vmids := make([]int, 0, len(plan[h.id]))
		for vmid := range plan[h.id] {
			vmids = append(vmids, vmid)
		}
		slices.Sort(vmids)
		for _, vmid := range vmids {
			l.guests = append(l.guests, plan[h.id][vmid])
		}
		loops = append(loops, l)
	}
	calls0, polls0 := simCalls(sims), simPolls(sims)
	var mutations atomic.Int64
	start := time.Now()
	err := forEach(ctx, len(loops), len(loops), func(ctx context.Context, li int) error {
		l := loops[li]
		return forEach(ctx, len(l.guests), e.opts.concurrency, func(ctx context.Context, i int) error {
			for _, r := range l.guests[i] {
				upid, err := send(ctx, l.client, r)
				if err != nil {
					return fmt.Errorf("%s %s: %w", r.Method, r.Path, err)
				}
				mutations.Add(1)
				if upid != "" {
					if err := waitTask(ctx, l.client, l.watch, l.node, upid); err != nil {
						return err
					}
				}
			}
			return nil
		})
	})
	res.loopElapsed = time.Since(start)
	res.loopCalls, res.loopPolls = simCalls(sims)-calls0, simPolls(sims)-polls0
	res.loopMutations = int(mutations.Load())
	return err
}

// send sends one recorded request again and returns the task it started.
func send(ctx context.Context, c *proxmox.Client, r pvesim.Request) (string, error) {
	var out any
	var err error
	switch r.Method {
	case "DELETE":
		path := r.Path
		if len(r.Form) > 0 {
			path += "?" + r.Form.Encode()
		}
		err = c.Req(ctx, r.Method, path, nil, &out)
	default:
		body := map[string]string{}
		for k := range r.Form {
			body[k] = r.Form.Get(k)
		}
		data, jerr := json.Marshal(body)
		if jerr != nil {
			return "", jerr
		}
		err = c.Req(ctx, r.Method, r.Path, data, &out)
	}
	if err != nil {
		return "", err
	}
	if upid, ok := out.(string); ok && strings.HasPrefix(upid, "UPID:") {
		return upid, nil
	}
	return "", nil
}

// waitTask reads a task's status as the agent's activities do: at once,
// then each time the host's TaskWatch says the task no longer runs.
func waitTask(ctx context.Context, c *proxmox.Client, watch *activities.TaskWatch, node, upid string) error {
	path := fmt.Sprintf("/nodes/%s/tasks/%s/status", url.PathEscape(node), url.PathEscape(upid))
	started := time.Now()
	for {
		var st struct {
			Status     string `json:"status"`
			ExitStatus string `json:"exitstatus"`
		}
		if err := c.Get(ctx, path, &st); err != nil {
			return err
		}
		if st.Status != "running" && st.Status != "" {
			if st.ExitStatus != "OK" {
				return fmt.Errorf("task %s ended %q", upid, st.ExitStatus)
			}
			return nil
		}
		check, stop := watch.Await(upid, started)
		select {
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case <-check:
		}
	}
}

// The bare-Temporal floor: a workflow that takes one update, runs one
// no-op activity and completes.
const (
	floorWorkflowName = "BenchFloorWorkflow"
	floorActivityName = "BenchNoop"
	floorUpdate       = "set"
)

func floorWorkflow(ctx workflow.Context) error {
	accepted := false
	if err := workflow.SetUpdateHandler(ctx, floorUpdate, func(ctx workflow.Context, v int) (int, error) {
		accepted = true
		return v, nil
	}); err != nil {
		return err
	}
	if err := workflow.Await(ctx, func() bool { return accepted }); err != nil {
		return err
	}
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute})
	return workflow.ExecuteActivity(ctx, floorActivityName).Get(ctx, nil)
}

func floorActivity(context.Context) error { return nil }

// floor runs as many floor workflows as the fleet has guests, one worker
// (with its own connection) per host, started by Update-With-Start with
// the same concurrency, and measures until the last one completed.
func (e *env) floor(ctx context.Context, hosts []*host, res *convergeResult) error {
	var requests atomic.Int64
	count := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		requests.Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	var workers []sdkworker.Worker
	defer func() {
		for _, w := range workers {
			w.Stop()
		}
	}()
	for _, h := range hosts {
		c, err := client.DialContext(ctx, client.Options{
			HostPort: e.server.FrontendAddr(), Namespace: e.server.Namespace(), Logger: e.log,
			ConnectionOptions: client.ConnectionOptions{DialOptions: []grpc.DialOption{count}},
		})
		if err != nil {
			return err
		}
		defer c.Close()
		w := sdkworker.New(c, floorQueue(h.id), sdkworker.Options{})
		w.RegisterWorkflowWithOptions(floorWorkflow, workflow.RegisterOptions{Name: floorWorkflowName})
		w.RegisterActivityWithOptions(floorActivity, activity.RegisterOptions{Name: floorActivityName})
		if err := w.Start(); err != nil {
			return err
		}
		workers = append(workers, w)
	}
	n := res.guests
	run := fmt.Sprintf("%d", time.Now().UnixNano())
	id := func(i int) string { return fmt.Sprintf("bench-floor/%s/%d", run, i) }
	requests.Store(0)
	start := time.Now()
	err := forEach(ctx, n, e.opts.concurrency, func(ctx context.Context, i int) error {
		op := e.client.NewWithStartWorkflowOperation(client.StartWorkflowOptions{
			ID: id(i), TaskQueue: floorQueue(hosts[i%len(hosts)].id),
			WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
		}, floorWorkflowName)
		h, err := e.client.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{
			StartWorkflowOperation: op,
			UpdateOptions:          client.UpdateWorkflowOptions{UpdateName: floorUpdate, Args: []any{i}, WaitForStage: client.WorkflowUpdateStageCompleted},
		})
		if err != nil {
			return err
		}
		var v int
		return h.Get(ctx, &v)
	})
	if err != nil {
		return err
	}
	err = forEach(ctx, n, e.opts.concurrency, func(ctx context.Context, i int) error {
		return e.client.GetWorkflow(ctx, id(i), "").Get(ctx, nil)
	})
	res.floorElapsed = time.Since(start)
	res.floorRequests = requests.Load()
	return err
}

func floorQueue(host string) string { return "bench-floor-" + host }
