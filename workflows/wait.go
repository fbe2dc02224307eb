package workflows

import (
	"time"

	"go.temporal.io/sdk/workflow"
)

// awaitOrTimeout blocks until cond holds or d has passed, whichever comes
// first, and reports whether cond held. Unlike workflow.AwaitWithTimeout in
// this SDK (which cancels its timer only behind an SDK flag that is off by
// default), a wait that ends because cond came true cancels its timer: left
// running, each such timer fires later into a workflow task that finds
// nothing to do, and a guest woken often piles them up (87 open in one
// guest's run of the chaos soak; the host workflow, woken by every notice,
// one per notice).
//
// It is used by runs at versionGuestWaits and versionHostWaits; earlier runs
// keep AwaitWithTimeout, whose commands their histories hold.
func awaitOrTimeout(ctx workflow.Context, d time.Duration, cond func() bool) (bool, error) {
	if cond() {
		return true, nil
	}
	timerCtx, cancelTimer := workflow.WithCancel(ctx)
	defer cancelTimer() // a no-op once the timer fired
	timer := workflow.NewTimer(timerCtx, d)
	if err := workflow.Await(ctx, func() bool { return timer.IsReady() || cond() }); err != nil {
		return false, err
	}
	return cond(), nil
}

// timedWait is the wait with a timeout a run uses: awaitOrTimeout when its
// version cancels timers (cancelTimers), else the AwaitWithTimeout whose
// commands the histories of earlier runs hold.
func timedWait(cancelTimers bool) func(workflow.Context, time.Duration, func() bool) (bool, error) {
	if cancelTimers {
		return awaitOrTimeout
	}
	return workflow.AwaitWithTimeout
}
