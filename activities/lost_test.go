package activities

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/activities/ledger"
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
