package activities

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

// slowTasks makes every Proxmox task run long enough for a resumed attempt
// to find it still running.
var slowTasks = pvesim.Config{TaskDuration: 250 * time.Millisecond}

// resumeCase is one mutating activity, the request a previous attempt sent
// for it, and how to check the outcome.
type resumeCase struct {
	name   string
	phase  string
	setup  func(h *harness)
	method string
	path   string // API path of the previous attempt's request
	params map[string]any
	// prior runs before the previous attempt's request, e.g. its ledger
	// record.
	prior  func(h *harness)
	invoke func(h *harness) (any, any) // activity method and input
	check  func(t *testing.T, h *harness)
}

func vmCase(status string) func(h *harness) {
	return func(h *harness) { h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: status, MemoryMiB: 512}) }
}

func statusIs(want string) func(t *testing.T, h *harness) {
	return func(t *testing.T, h *harness) {
		if g, _ := h.guest(101); g.Status != want {
			t.Fatalf("guest status %q, want %q", g.Status, want)
		}
	}
}

func resumeCases() []resumeCase {
	return []resumeCase{
		{name: "start", phase: "start", setup: vmCase("stopped"), method: "POST", path: "/nodes/pve1/qemu/101/status/start",
			invoke: func(h *harness) (any, any) { return h.act.StartGuest, GuestInput{VMID: 101} }, check: statusIs("running")},
		{name: "stop", phase: "stop", setup: vmCase("running"), method: "POST", path: "/nodes/pve1/qemu/101/status/stop",
			invoke: func(h *harness) (any, any) { return h.act.StopGuest, GuestInput{VMID: 101} }, check: statusIs("stopped")},
		{name: "shutdown", phase: "shutdown", setup: vmCase("running"), method: "POST", path: "/nodes/pve1/qemu/101/status/shutdown",
			invoke: func(h *harness) (any, any) { return h.act.ShutdownGuest, ShutdownGuestInput{VMID: 101} }, check: statusIs("stopped")},
		{name: "reboot", phase: "reboot", setup: vmCase("running"), method: "POST", path: "/nodes/pve1/qemu/101/status/reboot",
			invoke: func(h *harness) (any, any) { return h.act.RebootGuest, GuestInput{VMID: 101} }, check: statusIs("running")},
		{name: "config", phase: "config", setup: vmCase("stopped"), method: "POST", path: "/nodes/pve1/qemu/101/config",
			params: map[string]any{"memory": "1536"},
			invoke: func(h *harness) (any, any) {
				return h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"memory": 1536}}
			},
			check: func(t *testing.T, h *harness) {
				if g, _ := h.guest(101); g.MemoryMiB != 1536 {
					t.Fatalf("memory %d", g.MemoryMiB)
				}
			}},
		{name: "create", phase: "create", setup: func(*harness) {}, method: "POST", path: "/nodes/pve1/qemu",
			params: map[string]any{"vmid": 150, "name": "app", "memory": 512, "description": markerLine + testMarker},
			prior: func(h *harness) {
				h.ledger.BeginCreate(ledger.Entry{VMID: 150, Kind: "qemu", Instance: testMarker})
			},
			invoke: func(h *harness) (any, any) {
				return h.act.CreateVM, CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512}
			},
			check: func(t *testing.T, h *harness) {
				if _, ok := h.guest(150); !ok {
					t.Fatal("not created")
				}
				if !h.prov(150).AgentCreated {
					t.Fatal("create not confirmed in the ledger")
				}
			}},
		{name: "destroy", phase: "destroy", setup: func(h *harness) {
			h.addVM(customerVM(101, "stopped"))
			h.recordCreate(101, "qemu", testMarker, false)
		}, method: "DELETE", path: "/nodes/pve1/qemu/101",
			// The previous attempt passed the gate; the resumed one only waits,
			// so it needs no approval of its own.
			invoke: func(h *harness) (any, any) { return h.act.DestroyGuest, DestroyGuestInput{VMID: 101} },
			check: func(t *testing.T, h *harness) {
				if _, ok := h.guest(101); ok {
					t.Fatal("not destroyed")
				}
				if _, ok := h.ledger.Entry(101); ok {
					t.Fatal("ledger still lists the destroyed guest")
				}
			}},
	}
}

// TestResumeWaitsOnRecordedTask: a retried attempt that finds a UPID in its
// heartbeat waits on that task and sends nothing.
func TestResumeWaitsOnRecordedTask(t *testing.T) {
	for _, tc := range resumeCases() {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, slowTasks)
			tc.setup(h)
			if tc.prior != nil {
				tc.prior(h)
			}
			upid, err := h.act.postTask(context.Background(), tc.method, tc.path, tc.params)
			if err != nil || upid == "" {
				t.Fatalf("previous attempt's request: %q, %v", upid, err)
			}
			fn, in := tc.invoke(h)
			res, err := runIn[TaskResult](h.resumeFrom(Progress{Phase: tc.phase, UPID: upid}), fn, in)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Resumed || res.UPID != upid || res.ExitStatus != "OK" {
				t.Fatalf("result %+v, want the resumed task %s", res, upid)
			}
			if n := len(h.srv.Requests()); n != 1 {
				t.Fatalf("%d mutating requests, want only the previous attempt's: %+v", n, h.srv.Requests())
			}
			tc.check(t, h)
		})
	}
}

// TestNoUPIDRecorded: the request took effect but its answer was lost (the
// connection dropped after the side effect: the same state as a crash
// between the POST and the heartbeat). The failed attempt is retryable and
// the retry, which has no UPID, neither sends the request again nor loses
// the outcome.
func TestNoUPIDRecorded(t *testing.T) {
	cfg := slowTasks
	// A finished reboot is found in the task list when it started after the
	// retry was scheduled; the test environment schedules the retry only when
	// it runs it, so the node's clock runs a minute ahead.
	cfg.Clock = func() time.Time { return time.Now().Add(time.Minute) }
	for _, tc := range resumeCases() {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, cfg)
			tc.setup(h)
			var approval *gate.Approval
			if tc.name == "destroy" {
				// A real destroy: signed, and its nonce spent by the first attempt.
				h.ledger.Remove(101)
				approval = h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
			}
			h.srv.Inject(pvesim.Fault{Method: tc.method, Path: tc.path, Kind: pvesim.FaultDropAfter})
			fn, in := tc.invoke(h)
			if d, ok := in.(DestroyGuestInput); ok {
				d.Approval = approval
				in = d
			}
			_, err := run[TaskResult](h, fn, in)
			wantErr(t, err, ErrTypeUnavailable, true)

			res, err := run[TaskResult](h, fn, in)
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			if n := len(h.srv.RequestsMatching(tc.method, tc.path)); n != 1 {
				t.Fatalf("%s %s sent %d times, want 1 (result %+v)", tc.method, tc.path, n, res)
			}
			tc.check(t, h)
		})
	}
}

// TestRetryAfterFinishedTaskWithoutUPID: like TestNoUPIDRecorded, but the
// task finished before the retry: the guest's real state says done.
func TestRetryAfterFinishedTaskWithoutUPID(t *testing.T) {
	for _, tc := range resumeCases() {
		if tc.name == "reboot" {
			continue // a finished reboot is found through the task list; covered below
		}
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{TaskDuration: time.Millisecond})
			tc.setup(h)
			if tc.prior != nil {
				tc.prior(h)
			}
			upid, err := h.act.postTask(context.Background(), tc.method, tc.path, tc.params)
			if err != nil {
				t.Fatal(err)
			}
			waitTaskDone(t, h, upid)
			fn, in := tc.invoke(h)
			if _, err := run[TaskResult](h, fn, in); err != nil {
				t.Fatal(err)
			}
			if n := len(h.srv.RequestsMatching(tc.method, tc.path)); n != 1 {
				t.Fatalf("sent %d times, want 1", n)
			}
			tc.check(t, h)
		})
	}
}

func waitTaskDone(t *testing.T, h *harness, upid string) {
	t.Helper()
	done, ok := h.srv.TaskDone(upid)
	if !ok {
		t.Fatalf("no task %s on the node", upid)
	}
	<-done
}

// waitRestarted waits for qmeventd's start of guest vmid after a reboot
// task stopped it: the newest qmstart task of root@pam.
func waitRestarted(t *testing.T, h *harness, vmid int) {
	t.Helper()
	var rows []taskListEntry
	path := fmt.Sprintf("/nodes/pve1/tasks?source=all&typefilter=qmstart&userfilter=root@pam&vmid=%d&limit=1", vmid)
	if err := h.act.Client.Get(context.Background(), path, &rows); err != nil || len(rows) != 1 {
		t.Fatalf("qmeventd's start of %d: %v (%v)", vmid, rows, err)
	}
	waitTaskDone(t, h, rows[0].UPID)
}

func TestResumeEdgeCases(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "stopped", MemoryMiB: 512})

	_, err := runIn[TaskResult](h.resumeFrom(Progress{Phase: "start", UPID: "UPID:pve1:broken"}), h.act.StartGuest, GuestInput{VMID: 101})
	wantErr(t, err, ErrTypeMalformedUPID, false)

	// A well-formed UPID Proxmox does not know (its task log is gone): the
	// guest's real state decides, and the start is sent.
	unknown := "UPID:pve1:0000DEAD:0000BEEF:6543210F:qmstart:101:root@pam!felhom:"
	res, err := runIn[TaskResult](h.resumeFrom(Progress{Phase: "start", UPID: unknown}), h.act.StartGuest, GuestInput{VMID: 101})
	if err != nil || res.UPID == unknown || res.UPID == "" {
		t.Fatalf("resume of an unknown task = %+v, %v; want a new start", res, err)
	}
	if g, _ := h.guest(101); g.Status != "running" {
		t.Fatal("not started")
	}

	// A heartbeat of another phase (shutdown gave up, stop recorded) resumes
	// that phase.
	h2 := newHarness(t, slowTasks)
	h2.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "running", MemoryMiB: 512, IgnoresShutdown: true})
	upid, err := h2.act.postTask(context.Background(), "POST", "/nodes/pve1/qemu/101/status/stop", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err = runIn[TaskResult](h2.resumeFrom(Progress{Phase: "stop", UPID: upid}), h2.act.ShutdownGuest, ShutdownGuestInput{VMID: 101, ForceStop: true})
	if err != nil || res.UPID != upid {
		t.Fatalf("shutdown resumed at its stop phase = %+v, %v", res, err)
	}
	if reqs := h2.srv.Requests(); len(reqs) != 1 || slices.ContainsFunc(reqs, func(r pvesim.Request) bool { return r.Path == "/nodes/pve1/qemu/101/status/shutdown" }) {
		t.Fatalf("requests %+v, want only the previous stop", reqs)
	}
}

// TestRebootFoundInTaskList: a reboot cannot be told from the guest's state;
// one started since the activity was scheduled is found in the task list.
func TestRebootFoundInTaskList(t *testing.T) {
	// The node's clock places each lost reboot before or after the moment
	// the activity is scheduled (the SDK's test environment schedules it
	// when it runs it, after the reboot was posted).
	var skew atomic.Int64
	h := newHarness(t, pvesim.Config{TaskDuration: time.Millisecond,
		Clock: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "running", MemoryMiB: 512})
	lostReboot := func() string {
		upid, err := h.act.postTask(context.Background(), "POST", "/nodes/pve1/qemu/101/status/reboot", nil)
		if err != nil {
			t.Fatal(err)
		}
		waitTaskDone(t, h, upid)
		waitRestarted(t, h, 101)
		return upid
	}

	// A reboot older than the activity is not taken for this one.
	skew.Store(int64(-time.Hour))
	old := lostReboot()
	res, err := run[TaskResult](h, h.act.RebootGuest, GuestInput{VMID: 101})
	if err != nil || res.UPID == old || res.UPID == "" {
		t.Fatalf("RebootGuest = %+v, %v; want a new reboot, not %s", res, err, old)
	}

	// One started since the activity was scheduled is adopted.
	skew.Store(int64(time.Minute))
	upid := lostReboot()
	res, err = run[TaskResult](h, h.act.RebootGuest, GuestInput{VMID: 101})
	if err != nil || res.UPID != upid {
		t.Fatalf("RebootGuest = %+v, %v; want the earlier reboot %s adopted", res, err, upid)
	}
	if n := h.mutations("POST", "/nodes/*/qemu/101/status/reboot"); n != 3 {
		t.Fatalf("%d reboots sent, want 3: the old lost one, the new one, the adopted one", n)
	}
}
