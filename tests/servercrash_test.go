package tests

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/temporalclient"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// The Temporal server process itself is killed with SIGKILL while the
// worker's mutations are in flight (their Proxmox tasks held running), and
// restarted on the same database and address: every workflow resumes, each
// mutation reaches Proxmox once, and a signed job's nonce is spent once.
// Once on the SQLite file of the embedded default, once on PostgreSQL (the
// production store; skipped without PostgreSQL, failed under CI=true).
func TestTemporalServerKilledMidMutation(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		serverCrash(t, childServerConfig{SQLite: filepath.Join(t.TempDir(), "temporal.db")})
	})
	t.Run("postgresql", func(t *testing.T) {
		pg := devservertest.StartPostgres(t)
		t.Cleanup(func() { _ = pg.Stop() })
		serverCrash(t, pgConfig(pg))
	})
}

func serverCrash(t *testing.T, cfg childServerConfig) {
	srv := startServer(t, "temporal-1", cfg)
	host := uniqueHost("pve-srvkill")
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, TaskDuration: 300 * time.Millisecond})
	must(t, err)
	t.Cleanup(func() { sim.Close() })
	vm := func(vmid int, status string) pvesim.Guest {
		return pvesim.Guest{VMID: vmid, Name: fmt.Sprintf("vm%d", vmid), Status: status, MemoryMiB: 512, Cores: 1}
	}
	must(t, sim.AddVM(vm(151, "stopped")))
	must(t, sim.AddVM(vm(152, "running")))
	must(t, sim.AddVM(vm(153, "stopped")))
	const volume = "local-lvm:vm-155-disk-1"
	must(t, sim.AddVolume(volume, 1<<30))
	spec := func(vmid int, state desired.State, cores int) desired.Spec {
		return desired.Spec{Host: host, VMID: vmid, Kind: desired.QEMU, Name: fmt.Sprintf("vm%d", vmid), State: state, Memory: "512", Cores: cores}
	}
	steps := []struct {
		spec         desired.Spec
		method, path string
	}{
		{spec(151, desired.Running, 1), "POST", "/nodes/*/qemu/151/status/start"},
		{spec(152, desired.Stopped, 1), "POST", "/nodes/*/qemu/152/status/shutdown"},
		{spec(153, desired.Stopped, 3), "POST", "/nodes/*/qemu/153/config"},
		{spec(154, desired.Stopped, 1), "POST", "/nodes/*/qemu"},
	}
	hooks := map[string]*pvesim.Hook{}
	hold := func(method, path string) {
		h := pvesim.NewHook()
		t.Cleanup(h.Release)
		sim.Inject(pvesim.Fault{Method: method, Path: path, Kind: pvesim.FaultHoldTask, Hook: h})
		hooks[method+" "+path] = h
	}
	for _, s := range steps {
		hold(s.method, s.path)
	}
	const wipePath = "/nodes/*/storage/local-lvm/content/**"
	hold("DELETE", wipePath)

	ops := newOperatorKey(t, "ed25519")
	wcfg := hostConfig(t, host, sim, srv.frontend, t.TempDir(), ops.Pub)
	worker := startChild(t, childEnviron(wcfg, simCAFile(t, sim)), "worker.log")
	ctx := context.Background()
	c, err := temporalclient.Dial(ctx, temporalclient.Config{Address: srv.frontend, Namespace: "default"}, slog.New(slog.DiscardHandler), nil)
	must(t, err)
	t.Cleanup(c.Close)
	a := &agent{host: host, sim: sim, client: c}

	for _, s := range steps {
		a.applySpec(t, s.spec)
	}
	// A signed wipe, run by guest 155's workflow.
	wipe := desired.Action{Op: gate.OpVolumeWipe, Host: host, Guest: "155", Params: map[string]any{"volume": volume}}
	op := opFor(workflows.OpTemplate{Op: wipe.Op, HostID: host, GuestID: wipe.Guest, Params: wipe.Params})
	job, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.JobWorkflowID(op.Nonce), TaskQueue: workflows.TaskQueue(host)},
		workflows.SignedJobWorkflow, workflows.SignedJobInput{Host: host, Action: wipe, Approval: signWithSSHKeygen(t, ops, op)})
	must(t, err)

	// Every mutation's Proxmox task runs; the server dies under them.
	for req, h := range hooks {
		waitHit(t, req+"'s task to run", h)
	}
	srv.kill()
	t.Logf("killed the server with %d Proxmox tasks running", len(hooks))
	// Some tasks end while the server is down, the others after it is back.
	released := 0
	for _, h := range hooks {
		if released%2 == 0 {
			h.Release()
		}
		released++
	}
	next := cfg
	next.Frontend = srv.frontend
	startServer(t, "temporal-2", next)
	for _, h := range hooks {
		h.Release()
	}

	for _, s := range steps {
		a.waitPhaseWithin(t, s.spec.VMID, workflows.PhaseConverged, 4*time.Minute)
	}
	jctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	if err := job.Get(jctx, nil); err != nil {
		t.Fatalf("wipe job after the server restart: %v (gate code %q)", err, jobRejection(err))
	}
	worker.stop(t)

	for _, s := range steps {
		g, ok := sim.Guest(s.spec.VMID)
		want := map[desired.State]string{desired.Running: "running", desired.Stopped: "stopped"}[s.spec.State]
		if !ok || g.Status != want || g.Cores != s.spec.Cores {
			t.Errorf("guest %d: %+v (exists %v), want %s with %d cores", s.spec.VMID, g, ok, want, s.spec.Cores)
		}
	}
	if slices.Contains(sim.Volumes(), volume) {
		t.Errorf("volume %s was not wiped", volume)
	}
	// Nothing twice: each mutating request once, one run per workflow, the
	// nonce spent once.
	for _, s := range steps {
		if n := len(sim.RequestsMatching(s.method, s.path)); n != 1 {
			t.Errorf("%s %s reached the simulator %d times, want once", s.method, s.path, n)
		}
	}
	if n := len(sim.RequestsMatching("DELETE", wipePath)); n != 1 {
		t.Errorf("the wipe reached the simulator %d times, want once", n)
	}
	seen := map[string]int{}
	for _, r := range sim.Requests() {
		if seen[r.Method+" "+r.Path]++; seen[r.Method+" "+r.Path] == 2 {
			t.Errorf("%s %s reached the simulator more than once", r.Method, r.Path)
		}
	}
	for _, vmid := range []int{151, 152, 153, 154, 155} {
		id := workflows.GuestWorkflowID(host, vmid)
		resp, err := c.WorkflowService().CountWorkflowExecutions(ctx, &workflowservice.CountWorkflowExecutionsRequest{
			Namespace: "default", Query: fmt.Sprintf("WorkflowId = '%s'", id),
		})
		must(t, err)
		if resp.GetCount() != 1 {
			t.Errorf("%s has %d runs, want 1", id, resp.GetCount())
		}
	}
	nonces, err := gate.OpenFileNonceStore(wcfg.NonceStore)
	must(t, err)
	defer nonces.Close()
	if n := nonces.Len(); n != 1 {
		t.Errorf("nonce store holds %d nonces, want the wipe's one", n)
	}
}
