package workflows

import (
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/internal/visibility"
)

// JobWorkflowID is the ID of a signed job: the op's nonce, so that Temporal
// refuses to start the same job twice while its history exists. The host's
// nonce store refuses a replay even after that history is gone.
func JobWorkflowID(nonce string) string { return "job/" + nonce }

// SignedJobWorkflow runs one destructive operation that does not come from
// desired state (restore a backup over a guest, wipe a volume, rotate the
// signer keys). The job's action and its approval travel together; the host
// verifies that the signature names exactly that action before it acts.
func SignedJobWorkflow(ctx workflow.Context, in SignedJobInput) (SignedJobResult, error) {
	if err := workflow.UpsertTypedSearchAttributes(ctx,
		visibility.HostKey.ValueSet(in.Host),
		visibility.GuestKey.ValueSet(in.Action.Guest),
		visibility.PhaseKey.ValueSet("running_job"),
	); err != nil {
		return SignedJobResult{}, err
	}
	workflow.SetCurrentDetails(ctx, "**signed job** `"+in.Action.Op+"` on "+in.Host+"/"+in.Action.Guest)
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 2 * time.Hour,
		HeartbeatTimeout:    30 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute, MaximumAttempts: 20,
		},
	})
	var res ExecuteResult
	err := workflow.ExecuteActivity(ctx, ActivityRunSignedJob, in).Get(ctx, &res)
	phase := "job_done"
	if err != nil {
		phase = "job_failed"
	}
	_ = workflow.UpsertTypedSearchAttributes(ctx, visibility.PhaseKey.ValueSet(phase))
	if err != nil {
		return SignedJobResult{}, err
	}
	return SignedJobResult{Op: in.Action.Op, Guest: in.Action.Guest, Detail: res.Detail, Finished: workflow.Now(ctx)}, nil
}
