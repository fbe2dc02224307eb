package workflows

import (
	"errors"
	"fmt"
	"strconv"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// Signed jobs on a guest run through the guest's workflow (UpdateRunJob),
// between two passes: the guest's one writer runs them, so no reconcile
// step of its own (a start between a restore's stop and its restore, a
// re-create after a destroy) runs beside them.

// guestJobOps are the signed jobs that act on one guest.
var guestJobOps = map[string]bool{gate.OpGuestDestroy: true, gate.OpGuestRestore: true, gate.OpVolumeWipe: true}

// GuestOfJob returns the VMID of the guest a signed job acts on, and false
// for a job that acts on no guest (a signer rotation, a wipe of a volume no
// guest's name claims): only those run on their own.
func GuestOfJob(in SignedJobInput) (int, bool) {
	if !guestJobOps[in.Action.Op] {
		return 0, false
	}
	vmid, err := strconv.Atoi(in.Action.Guest)
	return vmid, err == nil && vmid > 0
}

// jobQueue holds the signed jobs handed to a guest workflow, oldest first;
// each caller waits for its job's outcome.
type jobQueue = fifo[jobRequest]

type jobRequest struct {
	in     SignedJobInput
	result ExecuteResult
	err    error
	done   bool
}

// checkJob refuses a job that is not for this guest workflow to run.
func checkJob(in GuestInput, job SignedJobInput) error {
	a := job.Action
	switch {
	case !guestJobOps[a.Op]:
		return fmt.Errorf("op %q is not a job a guest workflow runs (guest.destroy, guest.restore, volume.wipe)", a.Op)
	case job.Host != in.Host || a.Host != in.Host || a.Guest != strconv.Itoa(in.VMID):
		return fmt.Errorf("job for %s/%s (host %s) sent to the workflow of %s/%d", a.Host, a.Guest, job.Host, in.Host, in.VMID)
	case job.Approval.Blob == "" || job.Approval.Signature == "":
		return errors.New("a signed job needs both blob and signature")
	}
	return nil
}

// registerJobHandler sets the run-job Update handler: the job is queued,
// and the caller waits until the loop ran it.
func (g *guest) registerJobHandler(ctx workflow.Context) error {
	return workflow.SetUpdateHandlerWithOptions(ctx, UpdateRunJob,
		func(ctx workflow.Context, job SignedJobInput) (ExecuteResult, error) {
			// Validators do not run on replay: check again here.
			if err := checkJob(g.in, job); err != nil {
				return ExecuteResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidJob, nil)
			}
			req := g.jobs.push(&jobRequest{in: job})
			if err := workflow.Await(ctx, func() bool { return req.done }); err != nil {
				return ExecuteResult{}, err
			}
			return req.result, req.err
		},
		workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, job SignedJobInput) error {
			err := checkJob(g.in, job)
			if err == nil {
				err = checkApproval(job.Approval)
			}
			if err != nil {
				return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidJob, nil)
			}
			return nil
		}},
	)
}

// runJobs runs every queued job in turn and answers its caller. A guest
// destroyed by a job is then desired absent, so that nothing re-creates it;
// after any job the guest is read again.
func (g *guest) runJobs(ctx workflow.Context) error {
	for g.jobs.len() > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		req := g.jobs.pop()
		a := req.in.Action
		g.setPhase(ctx, PhaseRunningJob)
		req.result, req.err = g.run(ctx, a, &req.in.Approval)
		req.done = true
		switch code, detail := rejection(req.err); {
		case code != "":
			req.err = temporal.NewNonRetryableApplicationError(detail, ErrTypeGateRejection, nil, code)
			g.record(ctx, a, "rejected", "signed job: "+code+": "+detail)
		case req.err != nil:
			g.record(ctx, a, "failed", "signed job: "+req.err.Error())
		default:
			g.record(ctx, a, "done", "signed job: "+req.result.Detail)
			if a.Op == desired.OpDestroy {
				g.desireAbsent(ctx)
			}
		}
		g.readAgain = true
	}
	return nil
}

// desireAbsent makes absent this guest's desired state, after a destroy.
func (g *guest) desireAbsent(ctx workflow.Context) {
	s := desired.Spec{Host: g.in.Host, VMID: g.in.VMID, State: desired.Absent}
	if g.spec != nil {
		s.Kind, s.Name = g.spec.Kind, g.spec.Name
	}
	norm, err := checkSpec(g.in, s)
	if err != nil {
		workflow.GetLogger(ctx).Error("the guest was destroyed, but its desired state cannot say so", "error", err)
		return
	}
	g.acceptSpec(ctx, norm)
}
