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

// versionJobThroughGuest guards handing guest jobs to the guest workflow;
// jobs recorded before it replay legacySignedJob.
const versionJobThroughGuest = "job-through-guest"

// SignedJobWorkflow runs one destructive operation that does not come from
// desired state (restore a backup over a guest, wipe a volume, destroy a
// guest, rotate the signer keys). The job's action and its approval travel
// together; the host verifies that the signature names exactly that action
// before it acts. A job on a guest is handed to that guest's workflow
// (RunGuestJob), which runs it between two of its passes, so that nothing
// else touches the guest meanwhile; only a job on no guest runs here.
func SignedJobWorkflow(ctx workflow.Context, in SignedJobInput) (SignedJobResult, error) {
	if workflow.GetVersion(ctx, versionJobThroughGuest, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		return legacySignedJob(ctx, in)
	}
	if err := upsertJobPhase(ctx, in, "running_job"); err != nil {
		return SignedJobResult{}, err
	}
	run := ActivityRunSignedJob
	where := "on the host"
	if vmid, ok := GuestOfJob(in); ok {
		run, where = ActivityRunGuestJob, "through "+GuestWorkflowID(in.Host, vmid)
	}
	workflow.SetCurrentDetails(ctx, "**signed job** `"+in.Action.Op+"` on "+in.Host+"/"+in.Action.Guest+", run "+where)
	var res ExecuteResult
	err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, approvedStep), run, in).Get(ctx, &res)
	phase := "job_done"
	if err != nil {
		phase = "job_failed"
	}
	_ = upsertJobPhase(ctx, in, phase)
	if err != nil {
		return SignedJobResult{}, err
	}
	return SignedJobResult{Op: in.Action.Op, Guest: in.Action.Guest, Detail: res.Detail, Finished: workflow.Now(ctx)}, nil
}

func upsertJobPhase(ctx workflow.Context, in SignedJobInput, phase string) error {
	return workflow.UpsertTypedSearchAttributes(ctx,
		visibility.HostKey.ValueSet(in.Host),
		visibility.GuestKey.ValueSet(in.Action.Guest),
		visibility.PhaseKey.ValueSet(phase),
	)
}

// legacySignedJob is SignedJobWorkflow as jobs recorded before
// versionJobThroughGuest ran: the job's activity, on its own. It must not
// change.
func legacySignedJob(ctx workflow.Context, in SignedJobInput) (SignedJobResult, error) {
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
