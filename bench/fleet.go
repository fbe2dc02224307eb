package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/pgcluster"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// env is what every phase shares: the Temporal server, the benchmark's own
// client, the operator key and a scratch directory.
type env struct {
	opts   options
	dir    string
	server *devserver.Server
	pg     *pgcluster.Cluster
	client client.Client
	key    operatorKey
	log    *slog.Logger // the agent's and the server's logs (discarded unless --verbose)
}

// startEnv starts the Temporal server on the chosen database and dials it.
func startEnv(ctx context.Context, opts options) (_ *env, err error) {
	e := &env{opts: opts, log: slog.New(slog.DiscardHandler)}
	if opts.verbose {
		e.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if e.dir, err = os.MkdirTemp("", "felhom-bench-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	cfg := devserver.Config{SearchAttributes: visibility.SearchAttributes(), Logger: e.log}
	switch opts.db {
	case "file":
		// The same durable settings as felhom-dev: WAL, synchronous=FULL.
		cfg.DBPath = filepath.Join(e.dir, "temporal.db")
	case "memory":
	case "postgresql":
		if e.pg, err = pgcluster.Start(ctx); err != nil {
			return nil, err
		}
		if err = e.pg.SetupTemporal(ctx); err != nil {
			return nil, err
		}
		cfg.Postgres = &devserver.Postgres{Default: e.pg.SQL(pgcluster.DB), Visibility: e.pg.SQL(pgcluster.VisibilityDB)}
	}
	if e.server, err = devserver.Start(ctx, cfg); err != nil {
		return nil, err
	}
	if e.client, err = e.server.Dial(ctx); err != nil {
		return nil, err
	}
	if e.key, err = newOperatorKey(e.dir); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	if e.client != nil {
		e.client.Close()
	}
	if e.server != nil {
		_ = e.server.Stop()
	}
	if e.pg != nil {
		_ = e.pg.Stop()
	}
	_ = os.RemoveAll(e.dir)
}

// host is one simulated Proxmox node with its worker.
type host struct {
	id      string
	sim     *pvesim.Server
	tasks   *taskClock
	cfg     worker.Config
	metrics string // the worker's /metrics URL

	child *exec.Cmd // the worker's process
}

// hostSetup says how a host's simulator and worker are set up.
type hostSetup struct {
	taskMin, taskMax time.Duration
	drift            time.Duration // drift_check_interval; zero: the default
}

// startSim starts a strict simulator for node id with the seeded task
// durations.
func (e *env) startSim(id string, s hostSetup) (*pvesim.Server, *taskClock, error) {
	tc := newTaskClock(e.opts.seed, id, s.taskMin, s.taskMax)
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: id, TaskDurationFunc: tc.duration})
	return sim, tc, err
}

// startHost starts a simulator and a worker for host id and returns once the
// worker polls its task queue.
func (e *env) startHost(ctx context.Context, id string, s hostSetup) (*host, error) {
	sim, tc, err := e.startSim(id, s)
	if err != nil {
		return nil, err
	}
	h := &host{id: id, sim: sim, tasks: tc}
	dir := e.hostDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		sim.Close()
		return nil, err
	}
	cfg := worker.Defaults()
	cfg.HostID = id
	cfg.Temporal.Address = e.server.FrontendAddr()
	cfg.Temporal.Namespace = e.server.Namespace()
	cfg.Proxmox.URL = sim.URL()
	cfg.Proxmox.Node = sim.Node()
	cfg.Proxmox.TokenID = sim.TokenID()
	cfg.Proxmox.TokenSecret = sim.TokenSecret()
	cfg.NonceStore = filepath.Join(dir, "nonces.log")
	cfg.ProvenanceLedger = filepath.Join(dir, "provenance.log")
	cfg.PinnedSigners = filepath.Join(dir, "signers.json")
	cfg.Metrics.Address = "127.0.0.1:0"
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Signers.Operational = []string{e.key.pub}
	// The direct loop's concurrency: --concurrency guests in flight per
	// host, each with at most one request to Proxmox.
	cfg.MaxConcurrentActivities = e.opts.concurrency
	cfg.Proxmox.MaxConcurrentRequests = e.opts.concurrency
	if s.drift > 0 {
		cfg.DriftCheckInterval = s.drift
	}
	if err := cfg.Validate(); err != nil {
		sim.Close()
		return nil, fmt.Errorf("worker config of %s: %w", id, err)
	}
	h.cfg = cfg
	if err := e.startChild(ctx, h, dir); err != nil {
		sim.Close()
		return nil, err
	}
	return h, nil
}

// close stops the worker and the simulator.
func (h *host) close() error {
	var errs []error
	if h.child != nil {
		errs = append(errs, h.terminate())
	}
	errs = append(errs, h.sim.Close())
	return errors.Join(errs...)
}

// startHosts starts n hosts named prefix01, prefix02... one after another.
func (e *env) startHosts(ctx context.Context, prefix string, n int, s hostSetup) ([]*host, error) {
	var hosts []*host
	for i := range n {
		h, err := e.startHost(ctx, fmt.Sprintf("%s%02d", prefix, i+1), s)
		if err != nil {
			closeHosts(hosts)
			return nil, err
		}
		hosts = append(hosts, h)
	}
	return hosts, nil
}

func closeHosts(hosts []*host) {
	for _, h := range hosts {
		_ = h.close()
	}
}

// firstVMID is the VMID of each host's first guest.
const firstVMID = 1000

// fleetSpecs are the desired states of guests guests on each host: a
// QEMU VM with a disk, created, configured and started.
func fleetSpecs(hosts []*host, guests int) []desired.Spec {
	var specs []desired.Spec
	for i := range guests {
		for _, h := range hosts {
			vmid := firstVMID + i
			specs = append(specs, desired.Spec{
				Host: h.id, VMID: vmid, Kind: desired.QEMU, Name: "g" + strconv.Itoa(vmid),
				State: desired.Running, Memory: "512", Cores: 1,
				Disks: map[string]string{"scsi0": "local-lvm:4"}, Tags: []string{"bench"},
			})
		}
	}
	return specs
}

// submit sends every spec with workflows.SendDesired, concurrency at a
// time, and returns the first failure.
func (e *env) submit(ctx context.Context, specs []desired.Spec, in workflows.GuestInput) error {
	return forEach(ctx, len(specs), e.opts.concurrency, func(ctx context.Context, i int) error {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		if _, err := workflows.SendDesired(sctx, e.client, specs[i], in); err != nil {
			return fmt.Errorf("send desired state of %s/%d: %w", specs[i].Host, specs[i].VMID, err)
		}
		return nil
	})
}

// forEach runs fn for 0..n-1, at most limit at once, and returns the first
// error (the others are cancelled).
func forEach(ctx context.Context, n, limit int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(limit, n) {
		wg.Go(func() {
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// countGuests counts the running guest workflows of hosts whose phase is
// phase, through visibility.
func (e *env) countGuests(ctx context.Context, hosts []*host, phase string) (int, error) {
	q := fmt.Sprintf("%s = '%s' AND ExecutionStatus = 'Running' AND WorkflowType = 'GuestReconcileWorkflow' AND %s IN (%s)",
		visibility.Phase, phase, visibility.Host, quotedIDs(hosts))
	resp, err := e.client.CountWorkflow(ctx, &workflowservice.CountWorkflowExecutionsRequest{Query: q})
	if err != nil {
		return 0, fmt.Errorf("count %s guests: %w", phase, err)
	}
	return int(resp.GetCount()), nil
}

func quotedIDs(hosts []*host) string {
	ids := make([]string, len(hosts))
	for i, h := range hosts {
		ids[i] = "'" + h.id + "'"
	}
	return strings.Join(ids, ", ")
}

// waitGuests waits until want guest workflows of hosts show phase, and
// fails early when one shows failed or conflict.
func (e *env) waitGuests(ctx context.Context, hosts []*host, phase string, want int) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		got, err := e.countGuests(ctx, hosts, phase)
		if err != nil {
			return err
		}
		if got >= want {
			return nil
		}
		if n%20 == 0 {
			for _, bad := range []string{workflows.PhaseFailed, workflows.PhaseConflict} {
				if nb, err := e.countGuests(ctx, hosts, bad); err == nil && nb > 0 {
					return fmt.Errorf("%d guest workflows are %s (waiting for %d %s, %d so far)", nb, bad, want, phase, got)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d guests %s (%d so far): %w", want, phase, got, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// simCalls sums the API calls the simulators of hosts received.
func simCalls(hosts []*host) int64 {
	var n int64
	for _, h := range hosts {
		n += h.sim.Calls()
	}
	return n
}

// simPolls sums the task status reads and active-task listings the
// simulators of hosts received.
func simPolls(hosts []*host) int64 {
	var n int64
	for _, h := range hosts {
		n += h.sim.TaskPolls()
	}
	return n
}

// workerCounts are the SDK's counters of a worker, from its /metrics.
type workerCounts struct {
	requests      float64            // temporal_request + temporal_long_request: every RPC to the server
	workflowTasks float64            // workflow tasks processed
	activities    float64            // activity attempts executed (local ones included)
	ops           map[string]float64 // requests by operation (RecordActivityTaskHeartbeat, ...)
}

func (a workerCounts) sub(b workerCounts) workerCounts {
	ops := map[string]float64{}
	for op, v := range a.ops {
		ops[op] = v - b.ops[op]
	}
	return workerCounts{a.requests - b.requests, a.workflowTasks - b.workflowTasks, a.activities - b.activities, ops}
}

// add adds b's counts to a's.
func (a *workerCounts) add(b workerCounts) {
	a.requests += b.requests
	a.workflowTasks += b.workflowTasks
	a.activities += b.activities
	for op, v := range b.ops {
		if a.ops == nil {
			a.ops = map[string]float64{}
		}
		a.ops[op] += v
	}
}

// scrapeAll sums the counters of every host's worker. The SDK reports to
// the scope every second, so a caller that wants the counts of work that
// just ended waits a report interval first (settleMetrics).
func scrapeAll(ctx context.Context, hosts []*host) (workerCounts, error) {
	var sum workerCounts
	for _, h := range hosts {
		c, err := scrape(ctx, h.metrics)
		if err != nil {
			return sum, fmt.Errorf("metrics of %s: %w", h.id, err)
		}
		sum.add(c)
	}
	return sum, nil
}

// settleMetrics waits for the worker's metrics scope to report what
// happened until now (it reports every second).
func settleMetrics(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(1500 * time.Millisecond):
	}
}

func scrape(ctx context.Context, url string) (workerCounts, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return workerCounts{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return workerCounts{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return workerCounts{}, err
	}
	var c workerCounts
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok := strings.Cut(line, "{")
		if !ok {
			name, rest, ok = strings.Cut(line, " ")
			if !ok {
				continue
			}
			rest = "} " + rest
		}
		_, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		switch name {
		case "temporal_request", "temporal_request_total", "temporal_long_request", "temporal_long_request_total":
			c.requests += v
			if op, ok := label(rest, "operation"); ok {
				if c.ops == nil {
					c.ops = map[string]float64{}
				}
				c.ops[op] += v
			}
		case "temporal_workflow_task_execution_latency_count", "temporal_workflow_task_execution_latency_seconds_count":
			c.workflowTasks += v
		case "temporal_activity_execution_latency_count", "temporal_activity_execution_latency_seconds_count",
			"temporal_local_activity_execution_latency_count", "temporal_local_activity_execution_latency_seconds_count":
			c.activities += v
		}
	}
	return c, nil
}

// label returns the value of label name in a Prometheus sample's label
// list (the text after "{").
func label(labels, name string) (string, bool) {
	for rest := labels; ; {
		_, after, ok := strings.Cut(rest, name+`="`)
		if !ok {
			return "", false
		}
		if i := len(rest) - len(after) - len(name) - 2; i == 0 || rest[i-1] == ',' {
			v, _, ok := strings.Cut(after, `"`)
			return v, ok
		}
		rest = after
	}
}

// hostDir is where host id keeps its stores.
func (e *env) hostDir(id string) string { return filepath.Join(e.dir, id) }
