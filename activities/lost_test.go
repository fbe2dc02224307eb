package activities

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

// runDuringReboot runs fn in an attempt whose task the node loses: the
// task is held once it runs, the node reboots, and the attempt's outcome
// and recorded heartbeats are returned.
func (h *harness) runDuringReboot(path string, fn, in any) ([]Progress, error) {
	h.t.Helper()
	hook := pvesim.NewHook()
	h.srv.Inject(pvesim.Fault{Path: path, Kind: pvesim.FaultHoldTask, Hook: hook})
	var recorded []Progress
	e := h.recordingEnv(&recorded)
	done := make(chan error, 1)
	go func() {
		_, err := runIn[TaskResult](e, fn, in)
		done <- err
	}()
	<-hook.Hit()
	h.srv.RebootNode()
	hook.Release()
	return recorded, <-done
}

// TestLostCreate: the node goes down while the agent's create runs. Its
// task ends "unexpected status" and the guest is left locked "create",
// without the instance marker. The agent keeps its pending record (the
// guest may be its own), never counts the unmarked guest as its own, waits
// on nothing that will not come, names the root commands that clear it,
// and once root did, creates the guest again under the same marker.
func TestLostCreate(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	in := CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512, Disks: map[string]string{"scsi0": "local-lvm:8"}}

	recorded, err := h.runDuringReboot("/nodes/*/qemu", h.act.CreateVM, in)
	wantErr(t, err, ErrTypeTaskLost, true)
	e, ok := h.ledger.Entry(150)
	if !ok || e.State != ledger.StatePending {
		t.Fatalf("ledger entry %+v (found %v), want the pending create kept", e, ok)
	}
	marker := e.Instance
	if g, _ := h.guest(150); g.Lock != "create" || g.Description != "" {
		t.Fatalf("guest %+v, want the lost create's remnant", g)
	}
	if h.prov(150).AgentCreated {
		t.Fatal("a guest without the marker counts as the agent's")
	}

	// The retry resumes the lost task, finds nothing to wait for, and says
	// what root must do; nothing is sent.
	posts := h.mutations("POST", "/nodes/*/qemu")
	_, err = runIn[CreateResult](h.retryWith(recorded, true), h.act.CreateVM, in)
	wantErr(t, err, ErrTypeInterrupted, false)
	for _, want := range []string{"qm unlock 150 && qm destroy 150 --purge --destroy-unreferenced-disks 1", `locked "create"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if e, ok := h.ledger.Entry(150); !ok || e.State != ledger.StatePending || e.Instance != marker {
		t.Fatalf("ledger entry %+v after the retry, want the pending create kept", e)
	}
	// A rollback destroy meets the same remnant, before any gate.
	_, err = run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150})
	wantErr(t, err, ErrTypeInterrupted, false)
	if n := h.mutations("", ""); n != posts {
		t.Fatalf("%d requests sent to a remnant only root can clear", n-posts)
	}

	// Root clears it, as the error said.
	if err := h.srv.SetLock(150, ""); err != nil {
		t.Fatal(err)
	}
	upid, err := h.act.postTask(context.Background(), "DELETE", "/nodes/pve1/qemu/150", map[string]any{"purge": 1, "destroy-unreferenced-disks": 1})
	if err != nil {
		t.Fatal(err)
	}
	if done, ok := h.srv.TaskDone(upid); ok {
		<-done
	}
	res, err := run[CreateResult](h, h.act.CreateVM, in)
	if err != nil {
		t.Fatalf("create after the clean-up: %v", err)
	}
	if res.AlreadyDone {
		t.Fatal("the create after the clean-up sent nothing")
	}
	g, _ := h.guest(150)
	if markerOf(g.Description) != marker || !h.prov(150).AgentCreated {
		t.Fatalf("recreated guest %q, want the pending record's marker %s confirmed", g.Description, marker)
	}
}

// TestCreateWaitIsBounded: a retry that finds its guest still being
// created waits for that task, but not for ever.
func TestCreateWaitIsBounded(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.act.CreateWait = 50 * time.Millisecond
	// What a crashed attempt did: record, then POST.
	if err := h.ledger.BeginCreate(ledger.Entry{VMID: 150, Kind: "qemu", Instance: testMarker}); err != nil {
		t.Fatal(err)
	}
	hook := pvesim.NewHook()
	h.srv.Inject(pvesim.Fault{Path: "/nodes/*/qemu", Kind: pvesim.FaultHoldTask, Hook: hook})
	if _, err := h.act.postTask(context.Background(), "POST", "/nodes/pve1/qemu",
		map[string]any{"vmid": 150, "name": "app", "memory": 512, "description": markerLine + testMarker}); err != nil {
		t.Fatal(err)
	}
	<-hook.Hit()
	in := CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512}
	_, err := run[CreateResult](h, h.act.CreateVM, in)
	wantErr(t, err, ErrTypeLocked, true)
	hook.Release()
	if _, err := run[CreateResult](h, h.act.CreateVM, in); err != nil {
		t.Fatalf("once the create task ended: %v", err)
	}
	if !h.prov(150).AgentCreated {
		t.Fatal("create not confirmed")
	}
}

// TestLostDestroy: a destroy its node lost after it freed the disks leaves
// a config locked "destroyed". The retry does not send the destroy again
// (it would fail on the lock for ever) but names the root commands.
func TestLostDestroy(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	vm := customerVM(101, "stopped")
	vm.Description = markerLine + testMarker
	h.addVM(vm)
	h.recordCreate(101, "qemu", testMarker, true)

	recorded, err := h.runDuringReboot("/nodes/*/qemu/101", h.act.DestroyGuest, DestroyGuestInput{VMID: 101})
	wantErr(t, err, ErrTypeTaskLost, true)
	_, err = runIn[TaskResult](h.retryWith(recorded, true), h.act.DestroyGuest, DestroyGuestInput{VMID: 101})
	wantErr(t, err, ErrTypeInterrupted, false)
	if !strings.Contains(err.Error(), "qm unlock 101 && qm destroy 101 --purge") {
		t.Errorf("error %q does not name the commands", err)
	}
	if n := h.mutations("DELETE", "/nodes/*/qemu/101"); n != 1 {
		t.Fatalf("%d destroy requests, want the lost one only", n)
	}
}

// TestLostDestroyOfContainer follows a signed destroy of the agent's
// container through two node reboots: the first loses the stop, the second
// the destroy itself, after it freed the disks. Each retry decides from
// the guest's state under the same admission; what the lost destroy left
// (a config locked "destroyed") is refused by every later step, before the
// gate, with the pct commands only root can run, and once root ran them
// the VMID takes a new guest of the agent's.
func TestLostDestroyOfContainer(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	in := CreateContainerInput{VMID: 250, Hostname: "db", OSTemplate: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
		MemoryMiB: 512, Cores: 1, RootFS: "local-lvm:4"}
	if _, err := run[CreateResult](h, h.act.CreateContainer, in); err != nil {
		t.Fatal(err)
	}
	first, _ := h.ledger.Entry(250)
	if _, err := run[TaskResult](h, h.act.StartGuest, GuestInput{VMID: 250, Kind: KindLXC}); err != nil {
		t.Fatal(err)
	}
	destroy := DestroyGuestInput{VMID: 250, Approval: h.approve(gate.OpGuestDestroy, "250", map[string]any{"kind": "lxc"})}

	// Reboot one: the stop is lost.
	var recorded []Progress
	recorded, err := h.runDuringRebootFrom(recorded, "/nodes/*/lxc/250/status/stop", h.act.DestroyGuest, destroy)
	wantErr(t, err, ErrTypeTaskLost, true)
	// Reboot two: the retry, under the same admission, sends the destroy,
	// and that is lost too.
	recorded, err = h.runDuringRebootFrom(recorded, "/nodes/*/lxc/250", h.act.DestroyGuest, destroy)
	wantErr(t, err, ErrTypeTaskLost, true)
	if g, ok := h.guest(250); !ok || g.Lock != "destroyed" {
		t.Fatalf("guest %+v (exists %v), want the lost destroy's remnant", g, ok)
	}
	if slices.ContainsFunc(h.srv.Volumes(), func(v string) bool { return strings.Contains(v, "-250-") }) {
		t.Fatalf("volumes left by the destroy: %v", h.srv.Volumes())
	}

	// The next attempt, and any later step, meets the remnant: refused, not
	// retryable, naming root's commands, nothing sent.
	sent := h.mutations("", "")
	const advice = "pct unlock 250 && pct destroy 250 --purge"
	_, err = runIn[TaskResult](h.retryWith(recorded, true), h.act.DestroyGuest, destroy)
	wantErr(t, err, ErrTypeInterrupted, false)
	if !strings.Contains(err.Error(), advice) {
		t.Errorf("error %q does not name %q", err, advice)
	}
	_, err = run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 250, Kind: KindLXC, Set: map[string]any{"memory": 1024}})
	wantErr(t, err, ErrTypeInterrupted, false)
	if !strings.Contains(err.Error(), advice) {
		t.Errorf("error %q does not name %q", err, advice)
	}
	if n := h.mutations("", ""); n != sent {
		t.Fatalf("%d requests sent to a remnant only root can clear", n-sent)
	}

	// Root runs the commands; the next create takes the VMID afresh.
	if err := h.srv.SetLock(250, ""); err != nil {
		t.Fatal(err)
	}
	upid, err := h.act.postTask(context.Background(), "DELETE", "/nodes/pve1/lxc/250", map[string]any{"purge": 1})
	if err != nil {
		t.Fatal(err)
	}
	if done, ok := h.srv.TaskDone(upid); ok {
		<-done
	}
	res, err := run[CreateResult](h, h.act.CreateContainer, in)
	if err != nil {
		t.Fatalf("create after root's clean-up: %v", err)
	}
	if res.AlreadyDone {
		t.Fatal("the create after root's clean-up sent nothing")
	}
	g, _ := h.guest(250)
	if p := h.prov(250); !p.AgentCreated || markerOf(g.Description) == first.Instance {
		t.Fatalf("recreated guest %q (provenance %+v), want a new instance of the agent's", g.Description, p)
	}
}

// runDuringRebootFrom is runDuringReboot for an attempt that finds the
// last of recorded as its heartbeat details; it returns recorded with the
// attempt's own heartbeats added.
func (h *harness) runDuringRebootFrom(recorded []Progress, path string, fn, in any) ([]Progress, error) {
	h.t.Helper()
	hook := pvesim.NewHook()
	h.srv.Inject(pvesim.Fault{Path: path, Kind: pvesim.FaultHoldTask, Hook: hook})
	e := h.recordingEnv(&recorded)
	if len(recorded) > 0 {
		e.SetHeartbeatDetails(recorded[len(recorded)-1])
	}
	done := make(chan error, 1)
	go func() {
		_, err := runIn[TaskResult](e, fn, in)
		done <- err
	}()
	<-hook.Hit()
	h.srv.RebootNode()
	hook.Release()
	return recorded, <-done
}
