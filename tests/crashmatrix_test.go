package tests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/killpoint"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// The crash matrix kills the worker process (the real felhom-agent binary,
// built with -tags killpoints) with SIGKILL at each kill point of each kind
// of mutation, restarts it without the kill point, and checks from the
// simulator's request log and the host's own files that the mutation
// happened once and the guest reached its desired state: each mutating
// request reached Proxmox exactly once, an approval's nonce was spent once
// and the approval was never asked for again.
//
// Every case waits for Temporal's heartbeat timeout (a minute) before the
// restarted worker gets the killed attempt's retry, so the cases run side by
// side (crashMatrixParallel at a time) rather than one after another.

// crashMatrixParallel is how many cases run at once: they mostly wait.
const crashMatrixParallel = 48

// crashKind is one kind of mutation the matrix crashes.
type crashKind struct {
	name string
	// phase is the activity phase of the mutating request, the label of
	// every kill point but NonceSpent and GateAccepted; op is the gated op,
	// if any, the label of those two; activity is the step's activity type, the
	// label of ActivityDone.
	phase, op, activity string
	// request is the mutating request the step sends (pvesim pattern).
	method, path string
	// setup prepares the simulator.
	setup func(t *testing.T, sim *pvesim.Server)
	// begin starts the mutation; for a signed one it returns the op it
	// signed.
	begin func(t *testing.T, m *matrixCase) *gate.Op
	// await waits until the mutation is done, after the restart.
	await func(t *testing.T, m *matrixCase)
	// check checks the final state in the simulator.
	check func(t *testing.T, sim *pvesim.Server)
}

// matrixCase is one cell of the matrix while it runs.
type matrixCase struct {
	host string
	sim  *pvesim.Server
	ops  operatorKey
	a    *agent
	job  client.WorkflowRun // a signed job's run
}

const (
	matrixVMID   = 150
	matrixVolume = "local-lvm:vm-150-disk-1"
)

var matrixVM = pvesim.Guest{VMID: matrixVMID, Name: "customer", MemoryMiB: 1024, Cores: 1,
	Disks: map[string]string{"scsi0": "local-lvm:vm-150-disk-0,size=4G"}}

func matrixSpec(host string, state desired.State, cores int) desired.Spec {
	return desired.Spec{Host: host, VMID: matrixVMID, Kind: desired.QEMU, Name: "customer", State: state, Memory: "1024", Cores: cores,
		Disks: map[string]string{"scsi0": "local-lvm:4"}}
}

func addMatrixVM(status string) func(*testing.T, *pvesim.Server) {
	return func(t *testing.T, sim *pvesim.Server) {
		g := matrixVM
		g.Status = status
		must(t, sim.AddVM(g))
	}
}

// applyAndConverge is a benign mutation: send the desired state, wait
// until the guest converged.
func applyAndConverge(state desired.State, cores int) (func(*testing.T, *matrixCase) *gate.Op, func(*testing.T, *matrixCase)) {
	return func(t *testing.T, m *matrixCase) *gate.Op {
			m.a.applySpec(t, matrixSpec(m.host, state, cores))
			return nil
		}, func(t *testing.T, m *matrixCase) {
			m.a.waitPhaseWithin(t, matrixVMID, workflows.PhaseConverged, 4*time.Minute)
		}
}

func guestIs(status string, cores int) func(*testing.T, *pvesim.Server) {
	return func(t *testing.T, sim *pvesim.Server) {
		g, ok := sim.Guest(matrixVMID)
		if !ok || g.Status != status || g.Cores != cores {
			t.Errorf("guest after the crash: %+v (exists %v), want %s with %d cores", g, ok, status, cores)
		}
	}
}

// runMatrixJob starts a signed job for action, signed with ssh-keygen.
func runMatrixJob(t *testing.T, m *matrixCase, action desired.Action) *gate.Op {
	op := opFor(workflows.OpTemplate{Op: action.Op, HostID: m.host, GuestID: action.Guest, Params: action.Params})
	approval := signWithSSHKeygen(t, m.ops, op)
	run, err := m.a.client.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.JobWorkflowID(op.Nonce), TaskQueue: workflows.TaskQueue(m.host),
	}, workflows.SignedJobWorkflow, workflows.SignedJobInput{Host: m.host, Action: action, Approval: approval})
	must(t, err)
	m.job = run
	return &op
}

func awaitJob(t *testing.T, m *matrixCase) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := m.job.Get(ctx, nil); err != nil {
		t.Fatalf("job after the crash: %v (gate code %q)", err, jobRejection(err))
	}
}

var crashKinds = func() []crashKind {
	create, createDone := applyAndConverge(desired.Stopped, 1)
	start, startDone := applyAndConverge(desired.Running, 1)
	stop, stopDone := applyAndConverge(desired.Stopped, 1)
	config, configDone := applyAndConverge(desired.Stopped, 3)
	return []crashKind{
		{name: "create", activity: workflows.ActivityCreateGuest, phase: "create", method: "POST", path: "/nodes/*/qemu",
			setup: func(*testing.T, *pvesim.Server) {}, begin: create, await: createDone, check: guestIs("stopped", 1)},
		{name: "start", activity: workflows.ActivityStartGuest, phase: "start", method: "POST", path: "/nodes/*/qemu/150/status/start",
			setup: addMatrixVM("stopped"), begin: start, await: startDone, check: guestIs("running", 1)},
		{name: "stop", activity: workflows.ActivityShutdownGuest, phase: "shutdown", method: "POST", path: "/nodes/*/qemu/150/status/shutdown",
			setup: addMatrixVM("running"), begin: stop, await: stopDone, check: guestIs("stopped", 1)},
		{name: "config", activity: workflows.ActivitySetConfig, phase: "config", method: "POST", path: "/nodes/*/qemu/150/config",
			setup: addMatrixVM("stopped"), begin: config, await: configDone, check: guestIs("stopped", 3)},
		{name: "destroy", activity: workflows.ActivityDestroyGuest, phase: "destroy", op: gate.OpGuestDestroy, method: "DELETE", path: "/nodes/*/qemu/150",
			setup: addMatrixVM("running"),
			begin: func(t *testing.T, m *matrixCase) *gate.Op {
				// Desired absent: the guest workflow waits for a signature,
				// which comes as the approve signal.
				m.a.applySpec(t, desired.Spec{Host: m.host, VMID: matrixVMID, State: desired.Absent})
				st := m.a.waitPhase(t, matrixVMID, workflows.PhasePending)
				op := opFor(st.Pending.OpTemplate)
				must(t, m.a.client.SignalWorkflow(context.Background(), workflows.GuestWorkflowID(m.host, matrixVMID), "",
					workflows.SignalApprove, signWithSSHKeygen(t, m.ops, op)))
				return &op
			},
			await: func(t *testing.T, m *matrixCase) {
				m.a.waitPhaseWithin(t, matrixVMID, workflows.PhaseConverged, 4*time.Minute)
			},
			check: func(t *testing.T, sim *pvesim.Server) {
				if g, ok := sim.Guest(matrixVMID); ok {
					t.Errorf("guest after the crash: %+v, want it destroyed", g)
				}
			}},
		{name: "restore", activity: workflows.ActivityRestoreBackup, phase: "restore", op: gate.OpGuestRestore, method: "POST", path: "/nodes/*/qemu",
			setup: func(t *testing.T, sim *pvesim.Server) {
				addMatrixVM("stopped")(t, sim)
				// The backup holds 512 MiB: a restored guest shows it.
				backup := matrixVM
				backup.MemoryMiB = 512
				_, err := sim.AddBackup(pvesim.KindQEMU, backup)
				must(t, err)
			},
			begin: func(t *testing.T, m *matrixCase) *gate.Op {
				return runMatrixJob(t, m, desired.Action{Op: gate.OpGuestRestore, Host: m.host, Guest: "150",
					Params: map[string]any{"archive": matrixBackup(t, m.sim)}})
			},
			await: awaitJob,
			check: func(t *testing.T, sim *pvesim.Server) {
				if g, ok := sim.Guest(matrixVMID); !ok || g.MemoryMiB != 512 {
					t.Errorf("guest after the crash: %+v (exists %v), want the backup's 512 MiB", g, ok)
				}
			}},
		{name: "wipe", activity: workflows.ActivityWipeVolume, phase: "wipe", op: gate.OpVolumeWipe, method: "DELETE", path: "/nodes/*/storage/local-lvm/content/**",
			setup: func(t *testing.T, sim *pvesim.Server) {
				// A volume left behind by a guest that is gone.
				must(t, sim.AddVolume(matrixVolume, 4<<30))
			},
			begin: func(t *testing.T, m *matrixCase) *gate.Op {
				return runMatrixJob(t, m, desired.Action{Op: gate.OpVolumeWipe, Host: m.host, Guest: "150",
					Params: map[string]any{"volume": matrixVolume}})
			},
			await: awaitJob,
			check: func(t *testing.T, sim *pvesim.Server) {
				if slices.Contains(sim.Volumes(), matrixVolume) {
					t.Errorf("volume %s still exists after the crash", matrixVolume)
				}
			}},
	}
}()

// matrixBackup is the volume id of the simulator's one backup.
func matrixBackup(t *testing.T, sim *pvesim.Server) string {
	t.Helper()
	for _, v := range sim.Volumes() {
		if strings.Contains(v, "backup/vzdump-qemu-150-") {
			return v
		}
	}
	t.Fatalf("no backup of guest 150 in %v", sim.Volumes())
	return ""
}

func TestCrashMatrix(t *testing.T) {
	agentBinary(t) // built once, before the cases start their clocks
	sem := make(chan struct{}, crashMatrixParallel)
	var wg sync.WaitGroup
	for _, k := range crashKinds {
		for _, point := range killpoint.Points {
			if (point == killpoint.NonceSpent || point == killpoint.GateAccepted) && k.op == "" {
				continue // a benign step passes no gate
			}
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				// t.Run from several goroutines: the cases run side by side
				// whatever -test.parallel says.
				t.Run(point+"/"+k.name, func(t *testing.T) { runCrashCase(t, point, k) })
			})
		}
	}
	wg.Wait()
}

func runCrashCase(t *testing.T, point string, k crashKind) {
	started := time.Now()
	host := uniqueHost("pve-cm")
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, TaskDuration: 300 * time.Millisecond})
	must(t, err)
	t.Cleanup(func() { sim.Close() })
	k.setup(t, sim)
	m := &matrixCase{host: host, sim: sim, ops: newOperatorKey(t, "ed25519")}
	cfg := agentConfig(t, host, sim, t.TempDir(), m.ops.Pub)
	env := childEnviron(cfg, simCAFile(t, sim))
	m.a = &agent{host: host, sim: sim, client: clientFor(t)}

	label := k.phase
	switch point {
	case killpoint.NonceSpent, killpoint.GateAccepted:
		label = k.op
	case killpoint.ActivityDone:
		label = k.activity
	}
	var held *pvesim.Hook
	if point == killpoint.TaskWait {
		// The task runs until the worker died polling it.
		held = pvesim.NewHook()
		sim.Inject(pvesim.Fault{Method: k.method, Path: k.path, Kind: pvesim.FaultHoldTask, Hook: held})
		defer held.Release()
	}
	first := startChild(t, append(slices.Clone(env), killpoint.Env+"="+point+":"+label), "worker-1.log")
	op := k.begin(t, m)
	first.waitKilled(t, 3*time.Minute)
	if want := "killpoint: " + point + " " + label; !strings.Contains(first.output(), want) {
		t.Fatalf("worker-1 was killed, but not at %q", want)
	}
	if held != nil {
		held.Release()
	}
	// The kill fell where it says: before the step's request, or after it;
	// after the POST, before or after its task id reached the server.
	reqs := sim.RequestsMatching(k.method, k.path)
	sent := len(reqs)
	if want := map[bool]int{true: 0, false: 1}[point == killpoint.NonceSpent || point == killpoint.GateAccepted || point == killpoint.BeforePost]; sent != want {
		t.Fatalf("%s %s reached the simulator %d times before the kill at %s, want %d", k.method, k.path, sent, point, want)
	}
	if sent == 1 {
		p, _ := recordedProgress(t, m.a.client, workflows.GuestWorkflowID(host, matrixVMID), k.activity)
		if recorded := p.UPID == reqs[0].UPID; recorded != (point != killpoint.AfterPost) {
			t.Fatalf("after the kill at %s the server holds progress %+v for task %s; want it recorded: %v", point, p, reqs[0].UPID, !recorded)
		}
	}

	second := startChild(t, env, "worker-2.log")
	k.await(t, m)
	second.stop(t) // the host's files are locked while a worker runs
	k.check(t, sim)

	// Each mutating request reached Proxmox exactly once: the one the
	// killed worker sent, or, killed before it, the restarted worker's.
	if n := len(sim.RequestsMatching(k.method, k.path)); n != 1 {
		t.Errorf("%s %s reached the simulator %d times (%d before the restart), want once", k.method, k.path, n, sent)
	}
	seen := map[string]int{}
	for _, r := range sim.Requests() {
		seen[r.Method+" "+r.Path]++
	}
	for req, n := range seen {
		if n > 1 {
			t.Errorf("%s reached the simulator %d times, want once", req, n)
		}
	}
	if op != nil {
		checkApprovalSpentOnce(t, m, cfg.NonceStore, cfg.ProvenanceLedger, *op)
	}
	if k.name == "create" {
		checkCreateRecorded(t, cfg.ProvenanceLedger, sim)
	}
	t.Logf("%s/%s: %d requests, %s", point, k.name, len(sim.Requests()), time.Since(started).Round(time.Second))
}

// checkApprovalSpentOnce checks the host's files after a signed step: the
// op's nonce is the one nonce spent, the admission of its approval is done,
// and the guest workflow did not ask for a signature a second time.
func checkApprovalSpentOnce(t *testing.T, m *matrixCase, nonceStore, ledgerPath string, op gate.Op) {
	t.Helper()
	nonces, err := gate.OpenFileNonceStore(nonceStore)
	must(t, err)
	defer nonces.Close()
	if n := nonces.Len(); n != 1 {
		t.Errorf("nonce store holds %d nonces, want the approval's one", n)
	}
	if err := nonces.Use(context.Background(), op.Nonce, op.ExpiresAt); !errors.Is(err, gate.ErrReplay) {
		t.Errorf("the approval's nonce is not spent in the nonce store (Use: %v)", err)
	}

	led, err := ledger.Open(ledgerPath)
	must(t, err)
	defer led.Close()
	blob, err := gate.Canonicalize(op)
	must(t, err)
	sum := sha256.Sum256(blob)
	if ad, ok := led.Admission(hex.EncodeToString(sum[:])); !ok || ad.State != ledger.Done {
		t.Errorf("admission of the approval: %+v (recorded %v), want done", ad, ok)
	}

	// The guest workflow showed a pending signature at most once: the
	// approval it got was enough, across the crash.
	if n := pendingEpisodes(t, m.a.client, workflows.GuestWorkflowID(m.host, matrixVMID)); n > 1 {
		t.Errorf("the guest workflow asked for a signature %d times, want at most once", n)
	}
}

// pendingEpisodes counts the search-attribute upserts of a workflow that set
// FelhomPendingSignature to true.
func pendingEpisodes(t *testing.T, c client.Client, workflowID string) int {
	t.Helper()
	n := 0
	it := c.GetWorkflowHistory(context.Background(), workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		must(t, err)
		if p := e.GetUpsertWorkflowSearchAttributesEventAttributes().GetSearchAttributes().GetIndexedFields()[visibility.PendingSignature]; p != nil && string(p.GetData()) == "true" {
			n++
		}
	}
	return n
}

// checkCreateRecorded checks that the ledger records the created guest as
// the agent's, bound to the instance marker the guest carries.
func checkCreateRecorded(t *testing.T, ledgerPath string, sim *pvesim.Server) {
	t.Helper()
	led, err := ledger.Open(ledgerPath)
	must(t, err)
	defer led.Close()
	e, ok := led.Entry(matrixVMID)
	g, _ := sim.Guest(matrixVMID)
	if !ok || e.State != ledger.StateCreated || e.Instance == "" || !strings.Contains(g.Description, e.Instance) {
		t.Errorf("ledger entry of the created guest: %+v (recorded %v), guest description %q; want created, bound to the guest's marker", e, ok, g.Description)
	}
}
