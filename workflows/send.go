package workflows

import (
	"context"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/workflows/desired"
)

// SendDesired sends spec to its guest workflow (GuestWorkflowID on the
// host's TaskQueue) the way felhomctl apply and the hub do: one
// Update-With-Start that starts the workflow with in when it does not run
// yet (in.Host and in.VMID are taken from spec), and waits for the
// workflow's answer. A rejection by the workflow is a
// *temporal.ApplicationError.
func SendDesired(ctx context.Context, c client.Client, spec desired.Spec, in GuestInput) (SetDesiredResult, error) {
	in.Host, in.VMID = spec.Host, spec.VMID
	start := c.NewWithStartWorkflowOperation(client.StartWorkflowOptions{
		ID:                       GuestWorkflowID(spec.Host, spec.VMID),
		TaskQueue:                TaskQueue(spec.Host),
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
	}, GuestReconcileWorkflow, in)
	h, err := c.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{
		StartWorkflowOperation: start,
		UpdateOptions: client.UpdateWorkflowOptions{
			UpdateName:   UpdateSetDesired,
			Args:         []any{spec},
			WaitForStage: client.WorkflowUpdateStageCompleted,
		},
	})
	var res SetDesiredResult
	if err != nil {
		return res, err
	}
	err = h.Get(ctx, &res)
	return res, err
}
