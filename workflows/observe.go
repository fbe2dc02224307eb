package workflows

import (
	"strconv"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// ObserveWorkflowID names one read of a guest's state; nonce keeps reads
// apart.
func ObserveWorkflowID(host string, vmid int, nonce string) string {
	return "observe/" + host + "/" + strconv.Itoa(vmid) + "/" + nonce
}

// ObserveGuestWorkflow reads one guest's state on its host, with the same
// activity the guest workflow reads it with, and changes nothing. felhomctl
// plan runs it for a guest that has no guest workflow yet, so that the plan
// is made against the real guest, not against "not observed".
func ObserveGuestWorkflow(ctx workflow.Context, in ObserveInput) (Observation, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 10 * time.Second, MaximumAttempts: 3},
	})
	var obs Observation
	err := workflow.ExecuteActivity(ctx, ActivityObserveGuest, in).Get(ctx, &obs)
	return obs, err
}
