package activities

import (
	"context"
	"errors"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/workflows"
)

// RunGuestJob hands a signed job on a guest to that guest's workflow
// (Update-With-Start of run-job, starting the workflow if it does not run),
// which runs it between two of its passes, and waits for the outcome. The
// update's ID is the job workflow's ID, so a retry of this activity waits on
// the same job instead of handing it over twice. Nothing is decided here:
// the guest workflow runs the job's own activity, whose executor verifies
// the approval on this host.
//
// A guest workflow whose run began before it took jobs has no run-job
// handler; the job then runs here, as it did before, and the host's checks
// are the same.
func (h *Host) RunGuestJob(ctx context.Context, in workflows.SignedJobInput) (workflows.ExecuteResult, error) {
	if err := h.onThisHost(in.Host); err != nil {
		return workflows.ExecuteResult{}, err
	}
	vmid, ok := workflows.GuestOfJob(in)
	if !ok {
		return workflows.ExecuteResult{}, badInput("signed job", "op %q on %q is not a job on a guest", in.Action.Op, in.Action.Guest)
	}
	start := h.Temporal.NewWithStartWorkflowOperation(client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(in.Host, vmid), TaskQueue: workflows.TaskQueue(in.Host),
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: in.Host, VMID: vmid})
	handle, err := h.Temporal.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{
		StartWorkflowOperation: start,
		UpdateOptions: client.UpdateWorkflowOptions{
			UpdateID:     activity.GetInfo(ctx).WorkflowExecution.ID,
			UpdateName:   workflows.UpdateRunJob,
			Args:         []any{in},
			WaitForStage: client.WorkflowUpdateStageAccepted,
		},
	})
	var res workflows.ExecuteResult
	if err == nil {
		err = waitKeepingAlive(ctx, func(ctx context.Context) error { return handle.Get(ctx, &res) })
	}
	if isUnknownUpdate(err) {
		h.Proxmox.log().Warn("guest workflow takes no jobs yet (its run began before): running the job beside it",
			"guest", vmid, "op", in.Action.Op)
		return h.RunSignedJob(ctx, in)
	}
	return res, jobOutcome(err)
}

// waitKeepingAlive runs wait, heartbeating every ten seconds until it
// returns.
func waitKeepingAlive(ctx context.Context, wait func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- wait(ctx) }()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			KeepAlive(ctx)
		}
	}
}

// isUnknownUpdate reports whether the guest workflow has no handler for the
// update.
func isUnknownUpdate(err error) bool {
	return err != nil && strings.Contains(err.Error(), "unknown update "+workflows.UpdateRunJob)
}

// jobOutcome is the job's error as the job workflow reports it: the guest
// workflow already retried the job's step, so its failure or the host's
// refusal is final; anything else (the server could not be reached) is
// retried, and the retry waits on the same update.
func jobOutcome(err error) error {
	if err == nil {
		return nil
	}
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) {
		return err
	}
	var code string
	if appErr.HasDetails() {
		_ = appErr.Details(&code)
	}
	if code != "" {
		return temporal.NewNonRetryableApplicationError(appErr.Message(), appErr.Type(), err, code)
	}
	return temporal.NewNonRetryableApplicationError(appErr.Message(), appErr.Type(), err)
}
