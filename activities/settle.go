package activities

import (
	"context"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
)

// Power tasks that end before the guest changes. Proxmox hands a start,
// stop or shutdown of an HA-managed guest to the HA stack: the API starts
// an "hastart" or "hastop" task that only records the request and ends at
// once, and the cluster resource manager acts on it later. A QEMU reboot
// task ends once the VM is down; qmeventd starts it again after the task.
// So a power step is done when the guest's status says so, not when its
// task ended: reached waits for that.

// DefaultStateWait bounds how long a power step waits, after its task
// ended, for the guest to reach the state it asked for (Proxmox.StateWait);
// a shutdown's own timeout is added to it.
const DefaultStateWait = 5 * time.Minute

// ErrTypeStateNotReached is retryable: the step's task ended, but the
// guest did not reach the state in time.
const ErrTypeStateNotReached = "ProxmoxStateNotReached"

// powerGoal is the status a power action leaves a guest in.
var powerGoal = map[string]string{"start": "running", "reboot": "running", "stop": "stopped", "shutdown": "stopped"}

// powerTaskTypes are the task types a power action's request starts: its
// own, or the HA stack's for an HA-managed guest (a reboot is never handed
// to HA).
func powerTaskTypes(kind, action string) []string {
	switch action {
	case "start":
		return []string{taskType(kind, action), "hastart"}
	case "stop", "shutdown":
		return []string{taskType(kind, action), "hastop"}
	}
	return []string{taskType(kind, action)}
}

// reached waits until guest vmid has the status its power action asks for,
// polling its status (heartbeating with the step's task), for at most
// StateWait plus a shutdown's timeout.
func (a *Proxmox) reached(ctx context.Context, what, action, kind string, vmid int, upid string, params map[string]any) error {
	want := powerGoal[action]
	bound := a.StateWait
	if bound <= 0 {
		bound = DefaultStateWait
	}
	if s, ok := params["timeout"].(int); ok && action == "shutdown" {
		bound += time.Duration(s) * time.Second
	}
	deadline := time.Now().Add(bound)
	for {
		var st *statusCurrent
		if err := a.Client.Get(ctx, a.guestPath(kind, vmid)+"/status/current", &st); err != nil {
			return err
		}
		if st == nil {
			return malformed("status of %s %d is null", kind, vmid)
		}
		if st.Status == want {
			return nil
		}
		if !time.Now().Before(deadline) {
			return temporal.NewApplicationError(fmt.Sprintf("%s: guest %d is %s %s after its task %s ended, want %s",
				what, vmid, st.Status, bound, upid, want), ErrTypeStateNotReached)
		}
		recordProgress(ctx, Progress{Phase: action, UPID: upid})
		if err := a.pause(ctx); err != nil {
			return err
		}
	}
}
