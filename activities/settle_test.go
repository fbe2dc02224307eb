package activities

import (
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// TestPowerStepWaitsForTheGuestState: the task of an HA-managed guest's
// start or stop only records the request, and a QEMU reboot task ends with
// the VM down; the step reports success only once the guest is as asked.
func TestPowerStepWaitsForTheGuestState(t *testing.T) {
	tests := []struct {
		name   string
		ct     bool
		status string
		ha     string // requested HA state, "" for none
		action string
		invoke func(h *harness) (any, any)
		// settle is what changes the guest after the task: the HA stack,
		// or qmeventd starting the rebooted VM.
		settle func(h *harness)
		want   string
	}{
		{name: "reboot", status: "running", action: "reboot",
			invoke: func(h *harness) (any, any) { return h.act.RebootGuest, GuestInput{VMID: 101} },
			settle: func(h *harness) { h.srv.SetStatus(101, "running") }, want: "running"},
		{name: "HA start", status: "stopped", ha: "stopped", action: "start",
			invoke: func(h *harness) (any, any) { return h.act.StartGuest, GuestInput{VMID: 101} },
			settle: func(h *harness) { h.srv.ApplyHA() }, want: "running"},
		{name: "HA stop", status: "running", ha: "started", action: "stop",
			invoke: func(h *harness) (any, any) { return h.act.StopGuest, GuestInput{VMID: 101} },
			settle: func(h *harness) { h.srv.ApplyHA() }, want: "stopped"},
		{name: "HA shutdown", status: "running", ha: "started", action: "shutdown",
			invoke: func(h *harness) (any, any) { return h.act.ShutdownGuest, ShutdownGuestInput{VMID: 101} },
			settle: func(h *harness) { h.srv.ApplyHA() }, want: "stopped"},
		{name: "HA container start", ct: true, status: "stopped", ha: "stopped", action: "start",
			invoke: func(h *harness) (any, any) { return h.act.StartGuest, GuestInput{VMID: 101} },
			settle: func(h *harness) { h.srv.ApplyHA() }, want: "running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{HADelay: time.Hour, RebootRestartDelay: time.Hour})
			kind := "qemu"
			g := pvesim.Guest{VMID: 101, Name: "g", MemoryMiB: 512, Status: tt.status}
			if tt.ct {
				kind = "lxc"
				h.addCT(g)
			} else {
				h.addVM(g)
			}
			if tt.ha != "" {
				if err := h.srv.SetHA(101, tt.ha); err != nil {
					t.Fatal(err)
				}
			}
			actionPath := "/nodes/*/" + kind + "/101/status/" + tt.action
			posted := pvesim.NewHook()
			h.srv.Inject(pvesim.Fault{Method: "POST", Path: actionPath, Kind: pvesim.FaultDelay, Hook: posted})
			fn, in := tt.invoke(h)
			done := make(chan error, 1)
			go func() {
				_, err := run[TaskResult](h, fn, in)
				done <- err
			}()
			<-posted.Done()
			waitTaskDone(t, h, h.srv.RequestsMatching("POST", actionPath)[0].UPID)

			// The task has ended; the guest is not as asked yet. The step
			// is still reading the guest's status.
			polling := pvesim.NewHook()
			h.srv.Inject(pvesim.Fault{Method: "GET", Path: "/nodes/*/" + kind + "/101/status/current", Kind: pvesim.FaultHold, Hook: polling})
			select {
			case <-polling.Hit():
			case err := <-done:
				gs, _ := h.guest(101)
				t.Fatalf("the step returned (%v) with the guest %s, want it to wait for %s", err, gs.Status, tt.want)
			}
			tt.settle(h)
			polling.Release()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if gs, _ := h.guest(101); gs.Status != tt.want {
				t.Fatalf("guest %s, want %s", gs.Status, tt.want)
			}
		})
	}
}

// TestPowerStateWaitIsBounded: an HA request the HA stack does not act on
// fails the step, retryably, after StateWait; the retry resumes the
// recorded hastart task instead of sending another request.
func TestPowerStateWaitIsBounded(t *testing.T) {
	h := newHarness(t, pvesim.Config{HADelay: time.Hour})
	h.act.StateWait = 50 * time.Millisecond
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", MemoryMiB: 512, Status: "stopped"})
	if err := h.srv.SetHA(101, "stopped"); err != nil {
		t.Fatal(err)
	}
	var recorded []Progress
	_, err := runIn[TaskResult](h.recordingEnv(&recorded), h.act.StartGuest, GuestInput{VMID: 101})
	wantErr(t, err, ErrTypeStateNotReached, true)
	h.srv.ApplyHA()
	res, err := runIn[TaskResult](h.retryWith(recorded, true), h.act.StartGuest, GuestInput{VMID: 101})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.UPID != recorded[len(recorded)-1].UPID {
		t.Fatalf("retry %+v, want the recorded hastart task %s resumed", res, recorded[len(recorded)-1].UPID)
	}
	if n := h.mutations("POST", "/nodes/*/qemu/101/status/start"); n != 1 {
		t.Fatalf("%d start requests, want 1", n)
	}
}
