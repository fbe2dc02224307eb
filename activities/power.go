package activities

import (
	"context"
	"errors"
	"fmt"

	"go.temporal.io/sdk/temporal"
)

// GuestInput names the guest a power step acts on. Kind may be empty: it is
// then looked up.
type GuestInput struct {
	VMID int    `json:"vmid"`
	Kind string `json:"kind,omitempty"`
}

// ShutdownGuestInput asks for a clean shutdown.
type ShutdownGuestInput struct {
	VMID int    `json:"vmid"`
	Kind string `json:"kind,omitempty"`
	// TimeoutSeconds Proxmox waits for the guest to power off (default 180).
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
	// ForceStop stops the guest hard when it did not shut down in time.
	ForceStop bool `json:"force_stop,omitempty"`
}

// StartGuest starts a guest. A guest that is already running is success
// (AlreadyDone), also when Proxmox reports "already running" because another
// start won the race.
func (a *Proxmox) StartGuest(ctx context.Context, in GuestInput) (res TaskResult, err error) {
	what := "start guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	res, err = a.power(ctx, what, "start", in.VMID, in.Kind, "running", nil)
	if isAlreadyRunning(err) {
		return TaskResult{UPID: res.UPID, AlreadyDone: true}, nil
	}
	return res, classify(what, err)
}

// StopGuest stops a guest hard (like pulling the plug). A stopped guest is
// success.
func (a *Proxmox) StopGuest(ctx context.Context, in GuestInput) (res TaskResult, err error) {
	what := "stop guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	res, err = a.power(ctx, what, "stop", in.VMID, in.Kind, "stopped", nil)
	return res, classify(what, err)
}

// RebootGuest reboots a running guest, which also applies pending config. A
// stopped guest is left alone (AlreadyDone): it picks up its pending config
// when it next starts. A retry after a crash between the request and its
// heartbeat may reboot twice; a reboot is benign.
func (a *Proxmox) RebootGuest(ctx context.Context, in GuestInput) (res TaskResult, err error) {
	what := "reboot guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	res, err = a.power(ctx, what, "reboot", in.VMID, in.Kind, "stopped", nil)
	return res, classify(what, err)
}

// ShutdownGuest shuts a guest down cleanly, and stops it when that timed out
// and ForceStop is set. A stopped guest is success.
func (a *Proxmox) ShutdownGuest(ctx context.Context, in ShutdownGuestInput) (res TaskResult, err error) {
	what := "shut down guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	timeout := in.TimeoutSeconds
	if timeout <= 0 {
		timeout = 180
	}
	p, has := resumed(ctx)
	if has && p.Phase == "stop" {
		// A previous attempt already gave up on the clean shutdown.
		res, err = a.power(ctx, what, "stop", in.VMID, in.Kind, "stopped", nil)
		return res, classify(what, err)
	}
	res, err = a.power(ctx, what, "shutdown", in.VMID, in.Kind, "stopped", map[string]any{"timeout": timeout})
	var te *TaskError
	// A shutdown that failed on a lock, or was lost, did not time out: it
	// is retried as it is.
	if errors.As(err, &te) && !retryableTaskFailure(err) {
		if !in.ForceStop {
			return TaskResult{}, temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("%s: the guest did not shut down within %ds (%s) and force_stop is off", what, timeout, te.ExitStatus),
				ErrTypeTaskFailed, err)
		}
		a.log().Warn("clean shutdown failed; stopping", "vmid", in.VMID, "exit", te.ExitStatus)
		res, err = a.power(ctx, what, "stop", in.VMID, in.Kind, "stopped", nil)
	}
	return res, classify(what, err)
}

// power runs one status/<action> task: resume the recorded task if there is
// one, else do nothing when the guest already is in the state skipIf, else
// post.
func (a *Proxmox) power(ctx context.Context, what, action string, vmid int, kind, skipIf string, params map[string]any) (TaskResult, error) {
	kind, err := a.guestKind(ctx, what, vmid, kind)
	if err != nil {
		return TaskResult{}, err
	}
	p, has := resumed(ctx)
	if res, ok, err := a.resumeTask(ctx, p, has, action, vmid, powerTaskTypes(kind, action)...); ok {
		if err == nil {
			err = a.reached(ctx, what, action, kind, vmid, res.UPID, params)
		}
		if err == nil && action == "start" {
			err = a.handOver(ctx, vmid, kind)
		}
		return res, err
	}
	g, err := a.readGuest(ctx, vmid, kind)
	if err != nil {
		return TaskResult{}, err
	}
	if !g.Exists {
		return TaskResult{}, notFound(what, vmid)
	}
	if err := a.lostTaskRemnant(ctx, what, g); err != nil {
		return TaskResult{}, err
	}
	if g.Status == skipIf {
		return TaskResult{AlreadyDone: true}, a.handOverGuest(g, action)
	}
	res, err := a.runGuestTask(ctx, action, taskType(kind, action), vmid, action == "reboot",
		"POST", a.guestPath(kind, vmid)+"/status/"+action, params)
	if err == nil {
		err = a.reached(ctx, what, action, kind, vmid, res.UPID, params)
	}
	if err == nil {
		err = a.handOverGuest(g, action)
	}
	return res, err
}

// handOver records, after a start, that the agent's own guest was handed to
// its user: from now on destroying it needs a signature even within the
// rollback window.
func (a *Proxmox) handOver(ctx context.Context, vmid int, kind string) error {
	g, err := a.readGuest(ctx, vmid, kind)
	if err != nil {
		return err
	}
	return a.handOverGuest(g, "start")
}

func (a *Proxmox) handOverGuest(g Guest, action string) error {
	if action != "start" || a.Ledger == nil || !g.Exists {
		return nil
	}
	e, ok := a.Ledger.Entry(g.VMID)
	if !ok || e.HandedOver || e.Instance == "" || markerOf(g.Description) != e.Instance {
		return nil
	}
	if err := a.Ledger.HandOver(g.VMID, e.Instance); err != nil {
		return temporal.NewApplicationErrorWithCause("record the hand-over in the provenance ledger: "+err.Error(), ErrTypeLedger, err)
	}
	return nil
}
