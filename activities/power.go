package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/activities/ledger"
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

// startKnownStopped starts a guest that the step before (a create) left
// stopped, of kind in.Kind, without reading it first: the request itself
// finds out. Proxmox answers a start of a running guest with "already
// running" (done), one of a guest that is not there with "does not exist"
// (ProxmoxNotFound, as a read would), and a locked guest fails the task
// (retryable: the retry reads the guest and takes the usual path). The
// task list is not read either: no earlier attempt of this step exists.
func (a *Proxmox) startKnownStopped(ctx context.Context, in GuestInput) (res TaskResult, err error) {
	what := "start guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	kind, err := a.guestKind(ctx, what, in.VMID, in.Kind)
	if err != nil {
		return TaskResult{}, classify(what, err)
	}
	res, err = a.runTask(ctx, "start", "POST", a.guestPath(kind, in.VMID)+"/status/start", nil)
	switch {
	case isAlreadyRunning(err):
		return TaskResult{UPID: res.UPID, AlreadyDone: true}, a.handOver(ctx, in.VMID, kind)
	case err != nil:
		if code, msg, ok := httpStatus(err); ok && code == 500 && isMissingGuest(msg) {
			return TaskResult{}, notFound(what, in.VMID)
		}
		return res, classify(what, err)
	}
	if !ownTaskLeftState(res.UPID, kind, "start") {
		err = a.reached(ctx, what, "start", kind, in.VMID, res.UPID, nil)
	}
	if err == nil {
		err = a.handOver(ctx, in.VMID, kind)
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
//
// It reads the guest's status once (which resolves its kind too) and
// nothing else but the task list (inFlight) before it posts: the status
// says whether the guest exists, whether it is already in the state asked
// for and whether a lock a lost task left (lostTaskRemnant) is on it.
func (a *Proxmox) power(ctx context.Context, what, action string, vmid int, kind, skipIf string, params map[string]any) (TaskResult, error) {
	st, kind, err := a.readStatus(ctx, vmid, kind)
	if err != nil {
		return TaskResult{}, err
	}
	if st == nil {
		return TaskResult{}, notFound(what, vmid)
	}
	p, has := resumed(ctx)
	res, ok, err := a.resumeTask(ctx, p, has, action, vmid, powerTaskTypes(kind, action)...)
	if ok && err == nil && st.Status != powerGoal[action] {
		// The recorded task ended OK but the guest is not as it asked. If
		// the node booted since the task started, the reboot undid it
		// (pve stops every guest at shutdown, pve-guests starts only the
		// onboot ones): waiting for the state again would time out on
		// every attempt, for ever. Deciding afresh from the status read
		// above sends the request once more, and records the new task,
		// which the next attempt resumes. Failing instead would not help:
		// the next attempt would find the same task in its heartbeat.
		// Otherwise the state may still come (the HA stack acts after its
		// task ended), so it is waited for as before. Only this path
		// reads the node's status.
		var undone bool
		if undone, err = a.bootedSince(ctx, res.UPID); err == nil && undone {
			a.log().Warn("recorded task ended before the node last booted; acting again", "phase", action, "upid", res.UPID,
				"vmid", vmid, "status", st.Status)
			ok = false
		}
	}
	if ok {
		if err == nil {
			err = a.reached(ctx, what, action, kind, vmid, res.UPID, params)
		}
		if err == nil && action == "start" {
			err = a.handOver(ctx, vmid, kind)
		}
		return res, err
	}
	g := Guest{VMID: vmid, Exists: true, Kind: kind, Node: a.Node, Status: st.Status, Lock: st.Lock}
	if err := a.lostTaskRemnant(ctx, what, g); err != nil {
		return TaskResult{}, err
	}
	if g.Status == skipIf {
		return TaskResult{AlreadyDone: true}, a.handOverIf(ctx, action, vmid, kind)
	}
	res, err = a.runGuestTask(ctx, action, taskType(kind, action), vmid, action == "reboot",
		"POST", a.guestPath(kind, vmid)+"/status/"+action, params)
	if err == nil && !ownTaskLeftState(res.UPID, kind, action) {
		err = a.reached(ctx, what, action, kind, vmid, res.UPID, params)
	}
	if err == nil {
		err = a.handOverIf(ctx, action, vmid, kind)
	}
	return res, err
}

// bootedSince reports whether the node booted after task upid started. A
// reboot kills every running task, so a task that ended OK and started
// before the boot also ended before it. The boot is now minus the node's
// uptime (whole seconds, so at most a second late: a task started before
// the boot always counts; one started within a second after it may too,
// and then its request is only sent again). The host's clock is the node's:
// the agent runs on the node.
func (a *Proxmox) bootedSince(ctx context.Context, upid string) (bool, error) {
	info, err := parseUPID(upid)
	if err != nil || info.Start.IsZero() {
		return false, err
	}
	var st *struct {
		Uptime json.Number `json:"uptime"`
	}
	if err := a.Client.Get(ctx, "/nodes/"+url.PathEscape(a.Node)+"/status", &st); err != nil {
		return false, err
	}
	if st == nil {
		return false, malformed("status of node %s is null", a.Node)
	}
	up, err := st.Uptime.Int64()
	if err != nil || up < 0 {
		return false, malformed("status of node %s has uptime %q", a.Node, st.Uptime)
	}
	boot := a.now().Add(-time.Duration(up) * time.Second)
	return info.Start.Before(boot), nil
}

// ownTaskLeftState reports whether upid is the guest's own task for action
// (not the HA stack's), whose successful end means the guest is in the
// state asked for: a start task ends once the guest runs, a stop or a
// shutdown once it is off. A reboot's does not (qmeventd starts the guest
// again after it), nor does an HA request's, nor a synchronous answer.
func ownTaskLeftState(upid, kind, action string) bool {
	info, err := parseUPID(upid)
	return err == nil && action != "reboot" && info.Type == taskType(kind, action)
}

func (a *Proxmox) handOverIf(ctx context.Context, action string, vmid int, kind string) error {
	if action != "start" {
		return nil
	}
	return a.handOver(ctx, vmid, kind)
}

// handOver records, after a start, that the agent's own guest was handed to
// its user: from now on destroying it needs a signature even within the
// rollback window. A confirmed ledger entry is handed over without reading
// the guest: if the guest at the VMID is another instance, the entry does
// not count for it anyway (the gate compares the instance marker), and
// handing it over only takes away an exemption. A pending entry is handed
// over only when the live guest carries its marker.
func (a *Proxmox) handOver(ctx context.Context, vmid int, kind string) error {
	if a.Ledger == nil {
		return nil
	}
	e, ok := a.Ledger.Entry(vmid)
	if !ok || e.HandedOver || e.Instance == "" {
		return nil
	}
	if e.State != ledger.StateCreated {
		g, err := a.readConfig(ctx, vmid, kind)
		if err != nil {
			return err
		}
		if !g.Exists || markerOf(g.Description) != e.Instance {
			return nil
		}
	}
	if err := a.Ledger.HandOver(vmid, e.Instance); err != nil {
		return temporal.NewApplicationErrorWithCause("record the hand-over in the provenance ledger: "+err.Error(), ErrTypeLedger, err)
	}
	return nil
}
