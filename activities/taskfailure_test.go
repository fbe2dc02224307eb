package activities

import (
	"context"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

// recordingEnv is a fresh attempt whose heartbeats are kept, as the
// Temporal server keeps the last one for the next attempt.
func (h *harness) recordingEnv(recorded *[]Progress) *testsuite.TestActivityEnvironment {
	e := h.env()
	e.SetOnActivityHeartbeatListener(func(_ *activity.Info, d converter.EncodedValues) {
		var p Progress
		if d.Get(&p) == nil && p.UPID != "" {
			*recorded = append(*recorded, p)
		}
	})
	return e
}

// retryWith is the next attempt, finding the last of recorded as its
// heartbeat details (none when keep is false: the previous attempt died
// before its heartbeat left the worker).
func (h *harness) retryWith(recorded []Progress, keep bool) *testsuite.TestActivityEnvironment {
	e := h.env()
	if keep && len(recorded) > 0 {
		e.SetHeartbeatDetails(recorded[len(recorded)-1])
	}
	return e
}

// TestLockFailedTaskIsSentAgain: Proxmox checks the config lock (and waits
// for the flock) inside the task, so a step under a vzdump's lock comes
// back as a failed task whose UPID the attempt recorded. That task did
// nothing: the retry, once the lock is gone, decides from the guest's
// state and sends the request again, instead of waiting on the failed task
// for ever.
func TestLockFailedTaskIsSentAgain(t *testing.T) {
	tests := []struct {
		name    string
		guest   pvesim.Guest
		ct      bool
		fault   *pvesim.Fault // instead of a config lock
		scratch bool
		// keep: the retry finds the failed task's UPID in its heartbeat;
		// without it, the retry may find the failed task in the node's task
		// list (the node's clock runs ahead of the schedule time here).
		keep   bool
		method string
		path   string
		invoke func(h *harness) (any, any)
		check  func(t *testing.T, h *harness)
	}{
		{name: "qemu start", guest: pvesim.Guest{Status: "stopped", Lock: "backup"}, keep: true,
			method: "POST", path: "/nodes/*/qemu/101/status/start",
			invoke: func(h *harness) (any, any) { return h.act.StartGuest, GuestInput{VMID: 101} }, check: statusIs("running")},
		{name: "qemu stop", guest: pvesim.Guest{Status: "running", Lock: "backup"}, keep: true,
			method: "POST", path: "/nodes/*/qemu/101/status/stop",
			invoke: func(h *harness) (any, any) { return h.act.StopGuest, GuestInput{VMID: 101} }, check: statusIs("stopped")},
		{name: "qemu shutdown", guest: pvesim.Guest{Status: "running", Lock: "backup"}, keep: true,
			method: "POST", path: "/nodes/*/qemu/101/status/shutdown",
			invoke: func(h *harness) (any, any) { return h.act.ShutdownGuest, ShutdownGuestInput{VMID: 101} }, check: statusIs("stopped")},
		{name: "qemu reboot", guest: pvesim.Guest{Status: "running", Lock: "backup"}, keep: true,
			method: "POST", path: "/nodes/*/qemu/101/status/reboot",
			invoke: func(h *harness) (any, any) { return h.act.RebootGuest, GuestInput{VMID: 101} }, check: statusIs("running")},
		{name: "qemu reboot, UPID lost", guest: pvesim.Guest{Status: "running", Lock: "backup"},
			method: "POST", path: "/nodes/*/qemu/101/status/reboot",
			invoke: func(h *harness) (any, any) { return h.act.RebootGuest, GuestInput{VMID: 101} }, check: statusIs("running")},
		{name: "lxc start", ct: true, guest: pvesim.Guest{Status: "stopped", Lock: "backup"}, keep: true,
			method: "POST", path: "/nodes/*/lxc/101/status/start",
			invoke: func(h *harness) (any, any) { return h.act.StartGuest, GuestInput{VMID: 101} }, check: statusIs("running")},
		{name: "qemu config, flock held too long", guest: pvesim.Guest{Status: "stopped"}, keep: true,
			fault:  &pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/101/config", Kind: pvesim.FaultLockTimeout},
			method: "POST", path: "/nodes/*/qemu/101/config",
			invoke: func(h *harness) (any, any) {
				return h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"memory": 1024}}
			},
			check: func(t *testing.T, h *harness) {
				if g, _ := h.guest(101); g.MemoryMiB != 1024 {
					t.Fatalf("memory %d, want 1024", g.MemoryMiB)
				}
			}},
		{name: "qemu destroy of a scratch guest", guest: pvesim.Guest{Status: "stopped", Lock: "backup"}, scratch: true, keep: true,
			method: "DELETE", path: "/nodes/*/qemu/101",
			invoke: func(h *harness) (any, any) { return h.act.DestroyGuest, DestroyGuestInput{VMID: 101} },
			check: func(t *testing.T, h *harness) {
				if _, ok := h.guest(101); ok {
					t.Fatal("guest still there")
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ahead := func() time.Time { return time.Now().Add(time.Hour) }
			h := newHarness(t, pvesim.Config{Clock: ahead})
			g := tt.guest
			g.VMID, g.Name, g.MemoryMiB = 101, "g", 512
			if tt.scratch {
				g.Description = markerLine + testMarker
			}
			if tt.ct {
				h.addCT(g)
			} else {
				h.addVM(g)
			}
			if tt.scratch {
				h.recordCreate(101, "qemu", testMarker, true)
			}
			if tt.fault != nil {
				h.srv.Inject(*tt.fault)
			}
			fn, in := tt.invoke(h)
			var recorded []Progress
			_, err := runIn[TaskResult](h.recordingEnv(&recorded), fn, in)
			wantErr(t, err, ErrTypeLocked, true)
			if len(recorded) == 0 {
				t.Fatal("the failed task's UPID was never recorded")
			}
			if err := h.srv.SetLock(101, ""); err != nil {
				t.Fatal(err)
			}
			res, err := runIn[TaskResult](h.retryWith(recorded, tt.keep), fn, in)
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			if res.AlreadyDone || res.Resumed || res.UPID == recorded[len(recorded)-1].UPID {
				t.Fatalf("retry %+v: want a new task", res)
			}
			if n := h.mutations(tt.method, tt.path); n != 2 {
				t.Fatalf("%d %s requests, want 2: the failed one and the retry's", n, tt.method)
			}
			tt.check(t, h)
		})
	}
}

// TestApprovedActRetriedAfterALockFailedTaskPostsAgain: an approved
// destroy whose task failed on a lock started the act (its admission is
// Started) but destroyed nothing. The retry honours the same admission,
// sends the destroy again, and the admission is Done only after it.
func TestApprovedActRetriedAfterALockFailedTaskPostsAgain(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	vm := customerVM(101, "stopped")
	vm.Lock = "backup"
	h.addVM(vm)
	approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
	in := DestroyGuestInput{VMID: 101, Approval: approval}

	var recorded []Progress
	_, err := runIn[TaskResult](h.recordingEnv(&recorded), h.act.DestroyGuest, in)
	wantErr(t, err, ErrTypeLocked, true)
	if ad, ok := h.ledger.Admission(approvalKey(approval)); !ok || ad.State != ledger.Started {
		t.Fatalf("admission after the failed task: %+v (found %v), want started", ad, ok)
	}
	if err := h.srv.SetLock(101, ""); err != nil {
		t.Fatal(err)
	}
	res, err := runIn[TaskResult](h.retryWith(recorded, true), h.act.DestroyGuest, in)
	if err != nil {
		t.Fatalf("retry under the same approval: %v", err)
	}
	if res.AlreadyDone || res.Resumed {
		t.Fatalf("retry %+v: want a new destroy", res)
	}
	if _, ok := h.guest(101); ok {
		t.Fatal("guest still there")
	}
	if n := h.mutations("DELETE", "/nodes/*/qemu/101"); n != 2 {
		t.Fatalf("%d destroy requests, want 2", n)
	}
	if ad, _ := h.ledger.Admission(approvalKey(approval)); ad.State != ledger.Done || ad.Failed {
		t.Fatalf("admission after the destroy: %+v, want done", ad)
	}
}

// TestDigestMismatchFoundInTheTask: qemu-server checks the digest again in
// the config task, under the config lock; a change that came in between
// fails the task, and that is still a digest mismatch to the workflow, not
// a generic task failure.
func TestDigestMismatchFoundInTheTask(t *testing.T) {
	h := newHarness(t, pvesim.Config{LockTimeout: 10 * time.Second})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "stopped", MemoryMiB: 512, Cores: 1})
	g, err := run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 101})
	if err != nil {
		t.Fatal(err)
	}
	// A start holds the config lock while the change is sent.
	held := pvesim.NewHook()
	h.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/101/status/start", Kind: pvesim.FaultHoldTask, Hook: held})
	start, err := h.act.postTask(context.Background(), "POST", "/nodes/pve1/qemu/101/status/start", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-held.Hit()
	accepted := pvesim.NewHook()
	h.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/101/config", Kind: pvesim.FaultDelay, Hook: accepted})
	done := make(chan error, 1)
	go func() {
		_, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Digest: g.Digest, Set: map[string]any{"cores": 2}})
		done <- err
	}()
	<-accepted.Done()
	// Somebody changes the config before the task gets the lock.
	if err := h.srv.SetLock(101, "migrate"); err != nil {
		t.Fatal(err)
	}
	held.Release()
	wantErr(t, <-done, ErrTypeDigestMismatch, false)
	if doneCh, _ := h.srv.TaskDone(start); doneCh != nil {
		<-doneCh
	}
	if g, _ := h.guest(101); g.Cores != 1 {
		t.Fatalf("cores %d after a refused change", g.Cores)
	}
}
