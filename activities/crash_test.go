package activities

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/testsuite"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pveclient"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

// The crash tests run an activity in a child process (this test binary,
// re-executed) against a simulator that lives in the parent, SIGKILL the
// child at a chosen point, and run the retry in the parent with what the
// Temporal server would hand it: the last heartbeat the child recorded
// (persisted by the child to a file, standing in for the server's copy).

const crashChildEnv = "FELHOM_ACTIVITIES_CRASH_CHILD"

type crashSpec struct {
	URL, TokenID, TokenSecret, CAFile string
	Ledger, Nonces, OperatorKey       string
	Heartbeats                        string
	Op                                string
	Approval                          *gate.Approval
}

type crashOp struct {
	name   string
	method string
	path   string
	setup  func(h *harness)
	invoke func(a *Proxmox, approval *gate.Approval) (any, any)
	sign   func(h *harness) *gate.Approval
	check  func(t *testing.T, h *harness)
}

func crashOps() map[string]crashOp {
	ops := []crashOp{
		{name: "start", method: "POST", path: "/nodes/pve1/qemu/101/status/start",
			setup:  func(h *harness) { h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "stopped", MemoryMiB: 512}) },
			invoke: func(a *Proxmox, _ *gate.Approval) (any, any) { return a.StartGuest, GuestInput{VMID: 101} },
			check: func(t *testing.T, h *harness) {
				if g, _ := h.guest(101); g.Status != "running" {
					t.Fatalf("guest %s after the retry, want running", g.Status)
				}
			}},
		{name: "create", method: "POST", path: "/nodes/pve1/qemu",
			setup: func(*harness) {},
			invoke: func(a *Proxmox, _ *gate.Approval) (any, any) {
				return a.CreateVM, CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512, Disks: map[string]string{"scsi0": "local-lvm:4"}, Scratch: true}
			},
			check: func(t *testing.T, h *harness) {
				if g, ok := h.guest(150); !ok || g.Name != "app" || g.Lock != "" {
					t.Fatalf("guest 150 after the retry: %+v, %v", g, ok)
				}
				if p := h.prov(150); !p.AgentCreated || !p.Scratch {
					t.Fatalf("ledger after the retry: %+v", p)
				}
			}},
		{name: "config", method: "POST", path: "/nodes/pve1/qemu/101/config",
			setup: func(h *harness) { h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "stopped", MemoryMiB: 512}) },
			invoke: func(a *Proxmox, _ *gate.Approval) (any, any) {
				return a.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"memory": 1536, "cores": 2}}
			},
			check: func(t *testing.T, h *harness) {
				if g, _ := h.guest(101); g.MemoryMiB != 1536 || g.Cores != 2 {
					t.Fatalf("guest after the retry: memory %d cores %d", g.MemoryMiB, g.Cores)
				}
			}},
		{name: "destroy", method: "DELETE", path: "/nodes/pve1/qemu/101",
			setup: func(h *harness) { h.addVM(customerVM(101, "stopped")) },
			sign: func(h *harness) *gate.Approval {
				return h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
			},
			invoke: func(a *Proxmox, ap *gate.Approval) (any, any) {
				return a.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: ap}
			},
			check: func(t *testing.T, h *harness) {
				if _, ok := h.guest(101); ok {
					t.Fatal("guest 101 still exists after the retry")
				}
			}},
	}
	m := map[string]crashOp{}
	for _, op := range ops {
		m[op.name] = op
	}
	return m
}

// TestCrashChild is the child process; it does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	raw := os.Getenv(crashChildEnv)
	if raw == "" {
		t.Skip("child process of the crash tests")
	}
	var spec crashSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatal(err)
	}
	client, err := pveclient.New(pveclient.Config{URL: spec.URL, TokenID: spec.TokenID, TokenSecret: spec.TokenSecret, CAFile: spec.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	led, err := ledger.Open(spec.Ledger)
	if err != nil {
		t.Fatal(err)
	}
	nonces, err := gate.OpenFileNonceStore(spec.Nonces)
	if err != nil {
		t.Fatal(err)
	}
	signers, err := gate.ParseSigners([]string{spec.OperatorKey}, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := gate.NewVerifier(gate.VerifierConfig{HostID: hostID, Signers: signers, Nonces: nonces})
	if err != nil {
		t.Fatal(err)
	}
	act := &Proxmox{Client: client, Node: "pve1", HostID: hostID, Ledger: led, Gate: gate.New(v, quietLogger()),
		Log: quietLogger(), PollInterval: 5 * time.Millisecond}

	hb, err := os.OpenFile(spec.Heartbeats, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var suite testsuite.WorkflowTestSuite
	suite.SetLogger(log.NewStructuredLogger(quietLogger()))
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(act)
	// What the server would keep: every heartbeat that left the worker.
	env.SetOnActivityHeartbeatListener(func(_ *activity.Info, details converter.EncodedValues) {
		var p Progress
		if details.Get(&p) != nil {
			return
		}
		line, _ := json.Marshal(p)
		hb.Write(append(line, '\n'))
		hb.Sync()
	})
	fn, in := crashOps()[spec.Op].invoke(act, spec.Approval)
	_, err = env.ExecuteActivity(fn, in)
	t.Logf("child activity returned: %v", err)
}

func lastHeartbeat(t *testing.T, path string) (Progress, bool) {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return Progress{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var last Progress
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var p Progress
		if json.Unmarshal(sc.Bytes(), &p) == nil && p.UPID != "" {
			last, found = p, true
		}
	}
	return last, found
}

// TestCrashAroundHeartbeat kills the activity's process after its request
// took effect on Proxmox: once before the process could see the answer (so
// no UPID could be recorded), and once right after the UPID heartbeat,
// before the first task-status poll. The simulator holds the request's reply,
// or that first poll, until the process is dead, so the kill lands exactly
// there. The retry neither sends the request again nor loses the outcome
// (ledger included); after the second kill it resumes the recorded task.
func TestCrashAroundHeartbeat(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	for _, opName := range []string{"start", "create", "config", "destroy"} {
		for _, point := range []string{"before-heartbeat", "before-first-poll"} {
			t.Run(opName+"/"+point, func(t *testing.T) {
				op := crashOps()[opName]
				h := newHarness(t, pvesim.Config{TaskDuration: 100 * time.Millisecond})
				op.setup(h)
				dir := t.TempDir()
				caFile := filepath.Join(dir, "ca.pem")
				if err := os.WriteFile(caFile, h.srv.CertificatePEM(), 0o600); err != nil {
					t.Fatal(err)
				}
				spec := crashSpec{URL: h.srv.URL(), TokenID: h.srv.TokenID(), TokenSecret: h.srv.TokenSecret(), CAFile: caFile,
					Ledger: filepath.Join(dir, "provenance.log"), Nonces: filepath.Join(dir, "nonces.log"),
					OperatorKey: h.operatorKey(), Heartbeats: filepath.Join(dir, "heartbeats"), Op: opName}
				if op.sign != nil {
					spec.Approval = op.sign(h)
				}
				hook := pvesim.NewHook()
				if point == "before-heartbeat" {
					// Served, the answer held: the process never sees the UPID.
					h.srv.Inject(pvesim.Fault{Method: op.method, Path: op.path, Kind: pvesim.FaultHoldAfter, Hook: hook})
				} else {
					// The first status poll held, unserved.
					h.srv.Inject(pvesim.Fault{Method: "GET", Path: taskStatusPath, Kind: pvesim.FaultHold, Hook: hook})
				}
				raw, _ := json.Marshal(spec)
				cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.v")
				cmd.Env = append(os.Environ(), crashChildEnv+"="+string(raw))
				out, _ := os.Create(filepath.Join(dir, "child.log"))
				cmd.Stdout, cmd.Stderr = out, out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				exited := make(chan struct{})
				go func() { cmd.Wait(); close(exited) }()
				childLog := func() string { b, _ := os.ReadFile(filepath.Join(dir, "child.log")); return string(b) }
				select {
				case <-hook.Hit():
				case <-exited:
					t.Fatalf("the child ended before the simulator held its request:\n%s", childLog())
				}
				cmd.Process.Signal(syscall.SIGKILL)
				<-exited
				out.Close()
				<-hook.Done() // the simulator saw the connection go and completed its record
				sent := func() []pvesim.Request { return h.srv.RequestsMatching(op.method, op.path) }
				if r := sent(); len(r) != 1 || r[0].UPID == "" {
					t.Fatalf("before the retry: requests %+v, want one that started a task", r)
				}

				progress, hasProgress := lastHeartbeat(t, spec.Heartbeats)
				if point == "before-heartbeat" && hasProgress {
					t.Fatalf("the child recorded %+v without ever seeing the answer", progress)
				}
				if point == "before-first-poll" {
					if want := (Progress{Phase: opName, UPID: sent()[0].UPID}); !hasProgress || progress != want {
						t.Fatalf("heartbeat when killed before the first poll: %+v (recorded: %v), want %+v", progress, hasProgress, want)
					}
				}

				// The retry, in this process, on the same host files.
				h.act = h.newActivities(spec.Ledger, spec.Nonces)
				e := h.env()
				if hasProgress {
					e.SetHeartbeatDetails(progress)
				}
				fn, in := op.invoke(h.act, spec.Approval)
				res, err := runIn[TaskResult](e, fn, in)
				if err != nil {
					t.Fatalf("retry: %v\nchild output:\n%s", err, childLog())
				}
				if r := sent(); len(r) != 1 {
					t.Fatalf("%s %s sent %d times: %+v", op.method, op.path, len(r), r)
				}
				if res.UPID != sent()[0].UPID && !res.AlreadyDone {
					t.Errorf("retry result %+v is not the task the crashed attempt started (%s)", res, sent()[0].UPID)
				}
				if point == "before-first-poll" && !res.Resumed {
					t.Errorf("retry result %+v, want the recorded task resumed", res)
				}
				op.check(t, h)
			})
		}
	}
}
