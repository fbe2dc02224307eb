package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows"
)

// fleet is everything the soak runs and what it did to it.
type fleet struct {
	o      options
	stderr io.Writer
	dir    string
	rng    *rand.Rand // the main loop's; goroutines get their own, seeded from it
	keys   *keys
	server *serverProc
	hub    *proxy // the soak's own link to the server; never cut
	tc     client.Client
	hosts  []*host
	guests []*guest
	ap     *applier

	mu        sync.Mutex
	fig       figures
	approvals []approvalRecord
	serverUp  bool
}

// figures are the counts of what the soak did.
type figures struct {
	Changes        map[string]int `json:"desired_changes"`
	Faults         map[string]int `json:"faults_injected"`
	WorkerKills    int            `json:"worker_kills"`
	WorkerCrashes  int            `json:"worker_exits_on_their_own"`
	ServerRestarts int            `json:"server_restarts"`
	NetworkCuts    int            `json:"network_cuts"`
	LongestCut     string         `json:"longest_network_cut"`
	longestCut     time.Duration
	CutsOverHB     int `json:"network_cuts_longer_than_heartbeat_timeout"`
	// RootPurges counts remnants of creates and destroys lost in node
	// reboots (locked "create" or "destroyed") that the soak, playing root,
	// purged when it healed.
	RootPurges int `json:"remnants_purged_by_root"`
}

func newFleet(ctx context.Context, o options, stderr io.Writer) (*fleet, error) {
	f := &fleet{o: o, stderr: stderr, rng: rand.New(rand.NewPCG(uint64(o.seed), 0x50a4)),
		fig: figures{Changes: map[string]int{}, Faults: map[string]int{}}}
	f.dir = o.dir
	if f.dir == "" {
		d, err := os.MkdirTemp("", "felhom-soak-")
		if err != nil {
			return nil, err
		}
		f.dir = d
	} else if err := os.MkdirAll(f.dir, 0o755); err != nil {
		return nil, err
	}
	for _, sub := range []string{"bin", "keys", "specs", "hosts"} {
		if err := os.MkdirAll(filepath.Join(f.dir, sub), 0o755); err != nil {
			return f, err
		}
	}
	var err error
	if f.keys, err = newKeys(filepath.Join(f.dir, "keys")); err != nil {
		return f, err
	}
	f.logf("building felhom-agent and felhomctl")
	if err := buildBinaries(ctx, filepath.Join(f.dir, "bin")); err != nil {
		return f, err
	}
	f.server = &serverProc{dbPath: filepath.Join(f.dir, "temporal.db"), logPath: filepath.Join(f.dir, "temporal.log")}
	f.logf("starting the Temporal server")
	if err := f.server.start(ctx); err != nil {
		return f, err
	}
	f.serverUp = true
	target := f.server.frontend
	if f.hub, err = newProxy(target); err != nil {
		return f, err
	}
	f.tc, err = client.Dial(client.Options{HostPort: f.hub.addr(), Namespace: "default",
		Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	if err != nil {
		return f, fmt.Errorf("dial Temporal: %w", err)
	}
	f.ap = &applier{ctl: filepath.Join(f.dir, "bin", "felhomctl"), address: f.hub.addr(), dir: filepath.Join(f.dir, "specs")}
	for i := range o.hosts {
		h, err := f.newHost(fmt.Sprintf("soak%d", i+1), target)
		if err != nil {
			return f, err
		}
		f.hosts = append(f.hosts, h)
	}
	if f.guests, err = newGuests(f.rng, f.hosts, o.guests); err != nil {
		return f, err
	}
	for _, g := range f.guests {
		g.host.vmids = append(g.host.vmids, g.vmid)
		g.host.guests = append(g.host.guests, g)
	}
	for _, h := range f.hosts {
		if err := h.start(); err != nil {
			return f, err
		}
	}
	return f, nil
}

// buildBinaries builds the worker and felhomctl from this module.
func buildBinaries(ctx context.Context, dir string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(os.PathSeparator), "./cmd/felhom-agent", "./cmd/felhomctl")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build (run the soak from the module's directory): %w\n%s", err, out)
	}
	return nil
}

func (f *fleet) newHost(id string, target func() string) (*host, error) {
	rng := rand.New(rand.NewPCG(f.rng.Uint64(), 1))
	// Tasks of random short lengths: per host, and per task type.
	durations := map[string]time.Duration{}
	for _, typ := range []string{"qmstart", "qmstop", "qmshutdown", "qmcreate", "qmdestroy", "qmconfig", "resize",
		"vzstart", "vzstop", "vzshutdown", "vzcreate", "vzdestroy"} {
		durations[typ] = time.Duration(50+rng.IntN(1500)) * time.Millisecond
	}
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: id,
		TaskDuration: time.Duration(100+rng.IntN(700)) * time.Millisecond, TaskDurations: durations})
	if err != nil {
		return nil, fmt.Errorf("simulator %s: %w", id, err)
	}
	if err := sim.AddVolume(lxcTemplate, 200<<20); err != nil {
		return nil, err
	}
	link, err := newProxy(target)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(f.dir, "hosts", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "pve-ca.pem")
	if err := os.WriteFile(caFile, sim.CertificatePEM(), 0o644); err != nil {
		return nil, err
	}
	h := &host{id: id, sim: sim, dir: dir, link: link, agent: filepath.Join(f.dir, "bin", "felhom-agent"),
		log: filepath.Join(dir, "worker.log"), done: make(chan struct{}),
		chaos: hostChaos{locks: map[int]string{}, hidden: map[int]bool{}}}
	h.env = workerEnv(h, caFile, f.keys)
	// Every privilege the token holds before any is taken away.
	if h.chaos.privileges, err = tokenPrivileges(h); err != nil {
		return nil, err
	}
	return h, nil
}

// tokenPrivileges asks the host's simulator for its API token's privileges
// on "/", as a client would (GET /access/permissions).
func tokenPrivileges(h *host) ([]string, error) {
	var perms struct {
		Data map[string]map[string]int `json:"data"`
	}
	if err := simGet(h, "/access/permissions?path=%2F", &perms); err != nil {
		return nil, fmt.Errorf("privileges of the API token: %w", err)
	}
	var out []string
	for priv := range perms.Data["/"] {
		out = append(out, priv)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("simulator %s lists no privileges for its API token", h.id)
	}
	sort.Strings(out)
	return out, nil
}

func (f *fleet) logf(format string, args ...any) {
	fmt.Fprintf(f.stderr, "soak: %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (f *fleet) event(format string, args ...any) {
	if f.o.verbose {
		f.logf(format, args...)
	}
}

// soak runs the chaos for the duration, heals, settles, collects the
// evidence and checks it.
func (f *fleet) soak(ctx context.Context) (*report, error) {
	start := time.Now()
	chaosCtx, stopChaos := context.WithTimeout(ctx, f.o.duration)
	defer stopChaos()
	applyCtx, stopApply := context.WithCancel(ctx)
	defer stopApply()

	var applying sync.WaitGroup
	for _, h := range f.hosts {
		applying.Add(1)
		go func() {
			defer applying.Done()
			f.applyLoop(applyCtx, h)
		}()
	}
	var chaos sync.WaitGroup
	loops := []func(context.Context, *rand.Rand){f.changeLoop, f.approvalLoop}
	if f.o.faultRate > 0 {
		loops = append(loops, f.faultLoop, f.killLoop, f.serverLoop, f.cutLoop)
	}
	for _, loop := range loops {
		rng := rand.New(rand.NewPCG(f.rng.Uint64(), 2))
		chaos.Add(1)
		go func() {
			defer chaos.Done()
			loop(chaosCtx, rng)
		}()
	}
	f.logf("chaos for %s", f.o.duration)
	ticker := time.NewTicker(30 * time.Second)
	for done := false; !done; {
		select {
		case <-chaosCtx.Done():
			done = true
		case <-ticker.C:
			f.progress()
		}
	}
	ticker.Stop()
	chaos.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	f.logf("healing: faults cleared, locks and ACLs undone, links healed, every process up")
	purged := map[*host][]int{}
	for _, h := range f.hosts {
		if vmids := h.heal(); len(vmids) > 0 {
			f.logf("%s: root purged %d remnant(s) of creates and destroys lost in node reboots: %v", h.id, len(vmids), vmids)
			purged[h] = vmids
			f.mu.Lock()
			f.fig.RootPurges += len(vmids)
			f.mu.Unlock()
		}
	}
	if err := f.ensureServer(ctx); err != nil {
		return nil, err
	}
	for _, h := range f.hosts {
		if err := h.ensureRunning(); err != nil {
			return nil, err
		}
	}
	f.wakePurged(ctx, purged)
	settleStart := time.Now()
	deadline := settleStart.Add(f.o.settle)
	// Every desired state is sent once more: a guest whose last pass failed
	// waits minutes before it retries on its own, and a new desired state
	// starts a pass at once.
	for _, g := range f.guests {
		g.mu.Lock()
		g.confirmed = 0
		g.mu.Unlock()
	}
	f.logf("settling (at most %s)", f.o.settle)
	var finals []guestFinal
	for {
		finals = f.guestFinals(ctx)
		open := unsettled(finals)
		if open == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			f.logf("settle: %d of %d guests not settled after %s", open, len(finals), time.Since(settleStart).Round(time.Second))
			break
		}
		f.event("settle: %d guests not settled yet", open)
		f.wakeFailed(ctx, finals)
		time.Sleep(3 * time.Second)
	}
	stopApply()
	applying.Wait()

	f.logf("collecting evidence")
	ev := evidence{Hosts: map[string]*hostEvidence{}, Guests: finals}
	var err error
	if ev.Workflows, ev.Closed, err = f.workflowFacts(ctx); err != nil {
		return nil, err
	}
	for _, h := range f.hosts {
		h.stop()
		close(h.done)
	}
	for _, h := range f.hosts {
		he, err := f.hostFacts(h)
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", h.id, err)
		}
		ev.Hosts[h.id] = he
	}
	f.mu.Lock()
	ev.Approvals = append([]approvalRecord(nil), f.approvals...)
	f.mu.Unlock()

	rep := &report{Seed: f.o.seed, Hosts: len(f.hosts), Guests: len(f.guests),
		Chaos: f.o.duration.String(), Settled: time.Since(settleStart).Round(time.Second).String(),
		Total: time.Since(start).Round(time.Second).String(), Invariants: checkInvariants(ev)}
	f.fillFigures(rep, ev)
	f.saveEvidence(ev)
	return rep, nil
}

// wakeFailed asks every guest whose last pass failed to read its guest
// again now, as an operator would with the reconcile signal once a fault
// is fixed: a failed guest otherwise retries on its own only after
// RetryEvery (five minutes), and a desired state equal to the last one
// does not start a pass.
func (f *fleet) wakeFailed(ctx context.Context, finals []guestFinal) {
	for _, g := range finals {
		if g.Phase != workflows.PhaseFailed {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := f.tc.SignalWorkflow(sctx, workflows.GuestWorkflowID(g.Host, g.VMID), "", workflows.SignalReconcile, "soak: settling")
		cancel()
		if err != nil {
			f.event("reconcile %s/%d: %v", g.Host, g.VMID, err)
		}
	}
}

// wakePurged sends the reconcile signal to each guest whose remnant root
// purged, as root does after clearing one by hand: the workflow reads the
// guest again, also one that waits for the signature of a destroy the
// remnant made it plan (a guest that is gone needs none).
func (f *fleet) wakePurged(ctx context.Context, purged map[*host][]int) {
	for h, vmids := range purged {
		for _, vmid := range vmids {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := f.tc.SignalWorkflow(sctx, workflows.GuestWorkflowID(h.id, vmid), "", workflows.SignalReconcile, "soak: root purged a remnant")
			cancel()
			if err != nil {
				f.event("reconcile %s/%d: %v", h.id, vmid, err)
			}
		}
	}
}

// saveEvidence writes what the soak sent and found at the end into the
// work directory, for a look after a run that found something.
func (f *fleet) saveEvidence(ev evidence) {
	for name, v := range map[string]any{"approvals.json": ev.Approvals, "guests.json": ev.Guests,
		"workflows.json": ev.Workflows, "closed-workflows.json": ev.Closed} {
		data, err := json.MarshalIndent(v, "", "  ")
		if err == nil {
			err = os.WriteFile(filepath.Join(f.dir, name), data, 0o644)
		}
		if err != nil {
			f.logf("save %s: %v", name, err)
		}
	}
}

func (f *fleet) progress() {
	f.mu.Lock()
	changes, approvals := 0, len(f.approvals)
	for _, n := range f.fig.Changes {
		changes += n
	}
	faults := 0
	for _, n := range f.fig.Faults {
		faults += n
	}
	kills, restarts, cuts := f.fig.WorkerKills, f.fig.ServerRestarts, f.fig.NetworkCuts
	f.mu.Unlock()
	f.logf("%d changes, %d faults, %d worker kills, %d server restarts, %d cuts, %d approvals", changes, faults, kills, restarts, cuts, approvals)
}

// applyLoop sends the host's unconfirmed desired states every two seconds.
func (f *fleet) applyLoop(ctx context.Context, h *host) {
	for ctx.Err() == nil {
		if err := f.ap.apply(ctx, h.id, h.guests, 40*time.Second); err != nil && ctx.Err() == nil {
			f.event("apply %s: %v", h.id, firstLine(err.Error()))
		}
		sleep(ctx, 2*time.Second)
	}
}

// changeLoop changes random guests' desired states, about one guest in
// 60 per second (at least one a second).
func (f *fleet) changeLoop(ctx context.Context, rng *rand.Rand) {
	every := time.Duration(float64(time.Second) * 60 / float64(len(f.guests)))
	every = min(every, time.Second)
	for sleep(ctx, jitter(rng, every)) {
		g := f.guests[rng.IntN(len(f.guests))]
		what := g.change(rng)
		f.mu.Lock()
		f.fig.Changes[what]++
		f.mu.Unlock()
		f.event("desired %s/%d: %s", g.host.id, g.vmid, what)
	}
}

// faultLoop injects a simulator fault on a random host every 1.5s / rate.
func (f *fleet) faultLoop(ctx context.Context, rng *rand.Rand) {
	kinds := slices.DeleteFunc(slices.Clone(faultWeights), func(w weighted) bool { return f.o.skipFaults[w.name] })
	for sleep(ctx, jitter(rng, time.Duration(float64(1500*time.Millisecond)/f.o.faultRate))) {
		h := f.hosts[rng.IntN(len(f.hosts))]
		kind := pick(rng, kinds)
		if what := h.inject(rng, kind, h.randomGuest(rng)); what != "" {
			f.mu.Lock()
			f.fig.Faults[kind]++
			f.mu.Unlock()
			f.event("fault %s: %s", h.id, what)
		}
	}
}

// killLoop kills a random host's worker with SIGKILL every 40s / rate and
// starts it again 1-8s later.
func (f *fleet) killLoop(ctx context.Context, rng *rand.Rand) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for sleep(ctx, jitter(rng, time.Duration(float64(40*time.Second)/f.o.faultRate))) {
		h := f.hosts[rng.IntN(len(f.hosts))]
		down := time.Duration(1+rng.IntN(8)) * time.Second
		f.mu.Lock()
		f.fig.WorkerKills++
		f.mu.Unlock()
		f.event("kill worker %s (down %s)", h.id, down)
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.kill(down)
		}()
	}
}

// serverLoop kills the Temporal server with SIGKILL every 75s / rate and
// starts it again on the same database 1-5s later.
func (f *fleet) serverLoop(ctx context.Context, rng *rand.Rand) {
	for sleep(ctx, jitter(rng, time.Duration(float64(75*time.Second)/f.o.faultRate))) {
		down := time.Duration(1+rng.IntN(5)) * time.Second
		f.event("kill Temporal server (down %s)", down)
		f.mu.Lock()
		f.serverUp = false
		f.fig.ServerRestarts++
		f.mu.Unlock()
		f.server.kill()
		time.Sleep(down)
		if err := f.ensureServer(context.WithoutCancel(ctx)); err != nil {
			f.logf("restart Temporal server: %v", err)
		}
	}
}

func (f *fleet) ensureServer(ctx context.Context) error {
	f.mu.Lock()
	up := f.serverUp
	f.mu.Unlock()
	if up {
		return nil
	}
	var err error
	for try := range 3 {
		if try > 0 {
			// The port may have been taken meanwhile: the proxies follow
			// the server to another one.
			f.server.forgetAddr()
		}
		if err = f.server.start(ctx); err == nil {
			f.mu.Lock()
			f.serverUp = true
			f.mu.Unlock()
			return nil
		}
		f.logf("Temporal server did not start: %v", err)
		time.Sleep(2 * time.Second)
	}
	return err
}

// cutLoop cuts a random host's link to the server every 45s / rate, for
// 3-40s, and one cut in five for longer than the activities' heartbeat
// timeout.
func (f *fleet) cutLoop(ctx context.Context, rng *rand.Rand) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for sleep(ctx, jitter(rng, time.Duration(float64(45*time.Second)/f.o.faultRate))) {
		h := f.hosts[rng.IntN(len(f.hosts))]
		d := time.Duration(3+rng.IntN(38)) * time.Second
		if rng.IntN(5) == 0 {
			d = workflows.HeartbeatTimeout + time.Duration(5+rng.IntN(20))*time.Second
		}
		f.mu.Lock()
		f.fig.NetworkCuts++
		if d > f.fig.longestCut {
			f.fig.longestCut = d
		}
		if d > workflows.HeartbeatTimeout {
			f.fig.CutsOverHB++
		}
		f.mu.Unlock()
		f.event("cut %s from the server for %s", h.id, d)
		h.link.setCut(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// No cut outlives the chaos phase.
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			h.link.setCut(false)
		}()
	}
}

// approvalLoop finds guests waiting for a signature and sends each a few
// approvals of random kinds.
func (f *fleet) approvalLoop(ctx context.Context, rng *rand.Rand) {
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	defer wg.Wait()
	for sleep(ctx, jitter(rng, 2*time.Second)) {
		for _, h := range f.hosts {
			for _, p := range f.pendingGuests(ctx, rng, h, 4) {
				kind := pick(rng, approvalKinds)
				f.mu.Lock()
				accepted := acceptedApprovals(f.approvals)
				f.mu.Unlock()
				rec, err := f.approvalFor(rng, kind, h, p.VMID, p.Pending.OpTemplate, accepted)
				if err != nil {
					f.logf("approval: %v", err)
					continue
				}
				if rec == nil {
					continue
				}
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					f.sendApproval(context.WithoutCancel(ctx), rec)
					f.event("approval %s to %s/%d: %s (want %s)", rec.Kind, rec.Host, rec.VMID, rec.Outcome, rec.Expected)
					f.mu.Lock()
					f.approvals = append(f.approvals, *rec)
					f.mu.Unlock()
				}()
			}
		}
	}
}

func acceptedApprovals(all []approvalRecord) []approvalRecord {
	var out []approvalRecord
	for _, a := range all {
		if a.Kind == apValid && (a.Outcome == apAccepted || a.Outcome == apActionFail) {
			out = append(out, a)
		}
	}
	return out
}

// pendingGuests are up to n of the host's guests whose workflow waits for a
// signature, as the Temporal server's visibility and then the workflows'
// status say.
func (f *fleet) pendingGuests(ctx context.Context, rng *rand.Rand, h *host, n int) []workflows.GuestStatus {
	execs, err := f.list(ctx, visibility.PendingApprovalsQuery+" AND "+visibility.Host+" = '"+h.id+"'")
	if err != nil {
		return nil
	}
	rng.Shuffle(len(execs), func(i, j int) { execs[i], execs[j] = execs[j], execs[i] })
	var out []workflows.GuestStatus
	for _, e := range execs {
		if len(out) == n {
			break
		}
		var vmid int
		if _, err := fmt.Sscanf(strings.TrimPrefix(e.GetExecution().GetWorkflowId(), "guest/"+h.id+"/"), "%d", &vmid); err != nil {
			continue
		}
		st, err := f.queryStatus(ctx, h.id, vmid, 5*time.Second)
		if err == nil && st.Phase == workflows.PhasePending && st.Pending != nil {
			out = append(out, st)
		}
	}
	return out
}

func (f *fleet) queryStatus(ctx context.Context, hostID string, vmid int, timeout time.Duration) (workflows.GuestStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var st workflows.GuestStatus
	v, err := f.tc.QueryWorkflow(ctx, workflows.GuestWorkflowID(hostID, vmid), "", workflows.QueryStatus)
	if err == nil {
		err = v.Get(&st)
	}
	return st, err
}

// close stops every process the soak started.
func (f *fleet) close() {
	for _, h := range f.hosts {
		h.stop()
		h.link.close()
		h.sim.Close()
	}
	if f.tc != nil {
		f.tc.Close()
	}
	if f.hub != nil {
		f.hub.close()
	}
	if f.server != nil {
		f.server.stop()
	}
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// jitter is an exponentially distributed wait of mean d, at least 50ms:
// the events of a Poisson process.
func jitter(rng *rand.Rand, d time.Duration) time.Duration {
	return max(50*time.Millisecond, time.Duration(rng.ExpFloat64()*float64(d)))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
