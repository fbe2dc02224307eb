package workflows

import (
	"fmt"
	"strconv"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// legacyHostWorkflow is HostWorkflow as runs recorded before versionHostLoop
// were written: a fixed number of passes per run, one wake-up activity per
// drifted guest. It must not change: those runs replay it command for
// command.
func legacyHostWorkflow(ctx workflow.Context, in HostInput) error {
	if in.Interval == 0 {
		in.Interval = time.Minute
	}
	if in.Passes == 0 {
		in.Passes = 500
	}
	if in.Desired == nil {
		in.Desired = map[string]desired.Spec{}
	}
	st := HostStatus{Host: in.Host}
	if err := workflow.SetQueryHandler(ctx, QueryHostStatus, func() (HostStatus, error) { return st, nil }); err != nil {
		return err
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, visibility.HostKey.ValueSet(in.Host)); err != nil {
		return err
	}
	notices := workflow.GetSignalChannel(ctx, SignalDesiredChanged)
	applyNotice := func(n DesiredNotice) {
		key := strconv.Itoa(n.VMID)
		if n.Spec == nil {
			delete(in.Desired, key)
			return
		}
		in.Desired[key] = *n.Spec
	}

	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second, MaximumAttempts: 5},
	})
	for pass := 0; pass < in.Passes; pass++ {
		var list ListGuestsResult
		if err := workflow.ExecuteActivity(actx, ActivityListGuests).Get(ctx, &list); err != nil {
			st.LastError = err.Error()
		} else {
			st.LastError = ""
			st.Drifted, st.Unmanaged = drift(in.Desired, list.Guests)
			for _, vmid := range st.Drifted {
				wake := WakeGuestInput{Host: in.Host, VMID: vmid, Reason: "host listing differs from the desired state"}
				if err := workflow.ExecuteActivity(actx, ActivityWakeGuest, wake).Get(ctx, nil); err != nil {
					st.LastError = fmt.Sprintf("wake guest %d: %v", vmid, err)
				}
			}
		}
		st.LastPass = workflow.Now(ctx)
		st.Managed = sortedVMIDs(in.Desired)
		workflow.SetCurrentDetails(ctx, fmt.Sprintf("**host %s**: %d managed, %d drifted at the last pass, %d unmanaged guests %v",
			in.Host, len(st.Managed), len(st.Drifted), len(st.Unmanaged), st.Unmanaged))

		timer := workflow.NewTimer(ctx, in.Interval)
		timerFired := false
		for !timerFired {
			sel := workflow.NewSelector(ctx)
			sel.AddFuture(timer, func(workflow.Future) { timerFired = true })
			sel.AddReceive(notices, func(c workflow.ReceiveChannel, _ bool) {
				var n DesiredNotice
				c.Receive(ctx, &n)
				applyNotice(n)
			})
			sel.Select(ctx)
		}
	}
	// Take the notices that arrived meanwhile, or they are lost.
	for {
		var n DesiredNotice
		if !notices.ReceiveAsync(&n) {
			break
		}
		applyNotice(n)
	}
	return workflow.NewContinueAsNewError(ctx, HostWorkflow, in)
}
