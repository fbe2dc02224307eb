package activities

import (
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// TestResumeAfterNodeRebootActsAgain: a power step's task ended OK, then
// the node rebooted (its guests stopped, onboot ones started again) before
// the step's attempt completed. The retry finds the finished task in its
// heartbeat; the reboot undid its effect, so waiting for the state again
// would only time out on every attempt. The retry sends the request once
// more, as a fresh step would, and the attempt after it resumes that new
// task. A resumed task whose guest is in the state asked for costs no
// read of the node's status.
func TestResumeAfterNodeRebootActsAgain(t *testing.T) {
	tests := []struct {
		name   string
		ct     bool
		status string // before the step; onboot guests run again after the reboot
		onboot bool
		action string
		invoke func(h *harness) (any, any)
		want   string
	}{
		{name: "qemu start", status: "stopped", action: "start", want: "running",
			invoke: func(h *harness) (any, any) { return h.act.StartGuest, GuestInput{VMID: 101} }},
		{name: "lxc start", ct: true, status: "stopped", action: "start", want: "running",
			invoke: func(h *harness) (any, any) { return h.act.StartGuest, GuestInput{VMID: 101} }},
		{name: "qemu stop", status: "running", onboot: true, action: "stop", want: "stopped",
			invoke: func(h *harness) (any, any) { return h.act.StopGuest, GuestInput{VMID: 101} }},
		{name: "qemu shutdown", status: "running", onboot: true, action: "shutdown", want: "stopped",
			invoke: func(h *harness) (any, any) {
				return h.act.ShutdownGuest, ShutdownGuestInput{VMID: 101, TimeoutSeconds: 1}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{RecordReads: true})
			// bounds the wait of the unfixed retry, which failed
			// ProxmoxStateNotReached on every attempt
			h.act.StateWait = 50 * time.Millisecond
			kind := "qemu"
			g := pvesim.Guest{VMID: 101, Name: "g", MemoryMiB: 512, Status: tt.status}
			if tt.onboot {
				g.Config = map[string]string{"onboot": "1"}
			}
			if tt.ct {
				kind = "lxc"
				h.addCT(g)
			} else {
				h.addVM(g)
			}
			actionPath := "/nodes/*/" + kind + "/101/status/" + tt.action
			fn, in := tt.invoke(h)
			var recorded []Progress
			first, err := runIn[TaskResult](h.recordingEnv(&recorded), fn, in)
			if err != nil {
				t.Fatal(err)
			}

			// The step's task ended OK and its guest is as asked: resuming
			// it reads no node status.
			res, err := runIn[TaskResult](h.retryWith(recorded, true), fn, in)
			if err != nil || !res.Resumed || res.UPID != first.UPID {
				t.Fatalf("retry before the reboot: %+v, %v; want task %s resumed", res, err, first.UPID)
			}
			if n := len(h.srv.ReadsMatching("/nodes/*/status")); n != 0 {
				t.Fatalf("%d reads of the node's status resuming a task whose guest is as asked, want 0", n)
			}

			h.srv.RebootNode()
			if g, _ := h.srv.Guest(101); g.Status == tt.want {
				t.Fatalf("guest %s after the reboot: the test needs the reboot to undo the step", g.Status)
			}
			var again []Progress
			retry := h.recordingEnv(&again)
			retry.SetHeartbeatDetails(recorded[len(recorded)-1])
			res, err = runIn[TaskResult](retry, fn, in)
			if err != nil {
				t.Fatalf("retry after the reboot: %v", err)
			}
			if res.Resumed || res.UPID == "" || res.UPID == first.UPID {
				t.Fatalf("retry after the reboot %+v, want a new task, not %s resumed", res, first.UPID)
			}
			if g, _ := h.srv.Guest(101); g.Status != tt.want {
				t.Fatalf("guest %s after the retry, want %s", g.Status, tt.want)
			}
			if n := h.mutations("POST", actionPath); n != 2 {
				t.Fatalf("%d %s requests, want 2 (the step's and one after the reboot)", n, tt.action)
			}

			// The next attempt finds the new task: it ended after the
			// boot, and the guest is as asked.
			res, err = runIn[TaskResult](h.retryWith(again, true), fn, in)
			if err != nil || !res.Resumed || res.UPID != again[len(again)-1].UPID {
				t.Fatalf("attempt after that: %+v, %v; want task %s resumed", res, err, again[len(again)-1].UPID)
			}
			if n := h.mutations("POST", actionPath); n != 2 {
				t.Fatalf("%d %s requests, want still 2", n, tt.action)
			}
		})
	}
}
