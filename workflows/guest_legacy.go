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

type legacyApprovalRequest struct {
	approval Approval
	// reply is set for an Update, which waits for the verdict.
	reply *ApprovalVerdict
	done  bool
}

type legacyGuest struct {
	in         GuestInput
	spec       *desired.Spec
	generation int
	dirty      bool
	phase      string
	observed   *desired.Observed
	provenance *Provenance
	plan       *desired.Plan
	pending    *PendingAction
	lastErr    string
	recent     []ActionRecord
	approvals  []*legacyApprovalRequest
	// unconverged counts passes in a row that had actions to run.
	unconverged int
}

// legacyGuestReconcile is GuestReconcileWorkflow as runs recorded before
// its linear loop were written: one state machine with a signal goroutine
// and a timer goroutine per failure. It must not change: those runs replay
// it command for command. Its GetVersion calls are its own history.
func legacyGuestReconcile(ctx workflow.Context, in GuestInput) error {
	if in.ResyncEvery == 0 {
		in.ResyncEvery = time.Hour
	}
	if in.MaxHistoryEvents == 0 {
		in.MaxHistoryEvents = 2000
	}
	s := &legacyGuest{in: in, generation: in.Generation, recent: in.Recent, phase: PhaseWaiting}
	if in.Desired != nil {
		spec, err := checkSpec(in, *in.Desired)
		if err != nil {
			return temporal.NewNonRetryableApplicationError("invalid desired state in workflow input: "+err.Error(), ErrTypeInvalidSpec, err)
		}
		s.spec, s.dirty = &spec, true
		if s.generation == 0 {
			s.generation = 1
		}
	}
	if err := s.registerHandlers(ctx); err != nil {
		return err
	}
	s.publish(ctx)
	// Runs recorded before this version did not tell the host workflow of a
	// desired state that came in the input; replaying them must not either.
	if s.spec != nil && workflow.GetVersion(ctx, "announce-input-desired-state", workflow.DefaultVersion, 1) == 1 {
		s.announce(ctx)
	}

	for {
		if err := workflow.Await(ctx, func() bool { return s.spec != nil }); err != nil {
			return err
		}
		if !s.dirty {
			if _, err := workflow.AwaitWithTimeout(ctx, s.in.ResyncEvery, func() bool { return s.dirty }); err != nil {
				return err
			}
		}
		s.dirty = false
		s.reconcileOnce(ctx)
		if s.historyFull(ctx) {
			return s.continueAsNew(ctx)
		}
	}
}

func (s *legacyGuest) registerHandlers(ctx workflow.Context) error {
	err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateSetDesired,
		func(ctx workflow.Context, arg specArg) (SetDesiredResult, error) {
			// Validators do not run on replay: check again here.
			norm, err := checkSpec(s.in, arg.Spec)
			if err != nil {
				return SetDesiredResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidSpec, nil)
			}
			s.acceptSpec(ctx, norm)
			return SetDesiredResult{Generation: s.generation}, nil
		},
		workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, arg specArg) error {
			return validateSpec(s.in, arg)
		}},
	)
	if err != nil {
		return err
	}
	err = workflow.SetUpdateHandlerWithOptions(ctx, UpdateApprove,
		func(ctx workflow.Context, a Approval) (ApprovalVerdict, error) {
			req := &legacyApprovalRequest{approval: a, reply: &ApprovalVerdict{}}
			s.approvals = append(s.approvals, req)
			if err := workflow.Await(ctx, func() bool { return req.done }); err != nil {
				return ApprovalVerdict{}, err
			}
			return *req.reply, nil
		},
		workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, a Approval) error {
			if s.pending == nil {
				return temporal.NewNonRetryableApplicationError("no action of this guest is waiting for a signature", ErrTypeNotPending, nil)
			}
			if err := checkApproval(a); err != nil {
				return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidApproval, nil)
			}
			return nil
		}},
	)
	if err != nil {
		return err
	}
	if err := workflow.SetQueryHandler(ctx, QueryStatus, func() (GuestStatus, error) { return s.status(), nil }); err != nil {
		return err
	}
	if err := workflow.SetQueryHandler(ctx, QueryPending, func() (*PendingAction, error) { return s.pending, nil }); err != nil {
		return err
	}
	workflow.Go(ctx, s.receiveSignals)
	return nil
}

// receiveSignals runs for the life of the run: signals are applied in the
// order they arrived, interleaved with updates.
func (s *legacyGuest) receiveSignals(ctx workflow.Context) {
	desiredCh := workflow.GetSignalChannel(ctx, SignalSetDesired)
	approveCh := workflow.GetSignalChannel(ctx, SignalApprove)
	reconcileCh := workflow.GetSignalChannel(ctx, SignalReconcile)
	log := workflow.GetLogger(ctx)
	for {
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(desiredCh, func(c workflow.ReceiveChannel, _ bool) {
			var spec desired.Spec
			c.Receive(ctx, &spec)
			s.applySignalSpec(ctx, spec)
		})
		sel.AddReceive(approveCh, func(c workflow.ReceiveChannel, _ bool) {
			var a Approval
			c.Receive(ctx, &a)
			if s.pending == nil {
				// Kept, it would be tried against whatever is pending next.
				log.Warn("approval received while no action is pending: dropped")
				return
			}
			s.approvals = append(s.approvals, &legacyApprovalRequest{approval: a})
		})
		sel.AddReceive(reconcileCh, func(c workflow.ReceiveChannel, _ bool) {
			var reason string
			c.Receive(ctx, &reason)
			log.Info("reconcile requested", "reason", reason)
			s.dirty = true
		})
		sel.Select(ctx)
	}
}

func (s *legacyGuest) applySignalSpec(ctx workflow.Context, spec desired.Spec) {
	norm, err := checkSpec(s.in, spec)
	if err != nil {
		// A signal has no caller to answer: the refusal is logged and shown.
		workflow.GetLogger(ctx).Warn("desired state refused", "error", err)
		s.lastErr = "desired state refused: " + err.Error()
		s.publish(ctx)
		return
	}
	s.acceptSpec(ctx, norm)
}

func (s *legacyGuest) acceptSpec(ctx workflow.Context, spec desired.Spec) {
	s.spec = &spec
	s.generation++
	s.dirty = true
	s.unconverged = 0
	if s.phase != PhasePending {
		// Until the next pass has read the guest, it is not known converged.
		s.setPhase(ctx, PhaseConverging)
	}
	s.announce(ctx)
}

// announce tells the host workflow, which watches the desired set for
// drift, this guest's desired state. It may not run (yet): the guest still
// converges, only drift is noticed later.
func (s *legacyGuest) announce(ctx workflow.Context) {
	notice := DesiredNotice{VMID: s.in.VMID, Spec: s.spec}
	err := workflow.SignalExternalWorkflow(ctx, HostWorkflowID(s.in.Host), "", SignalDesiredChanged, notice).Get(ctx, nil)
	if err != nil {
		workflow.GetLogger(ctx).Info("host workflow not told of the desired state", "error", err)
	}
}

// reconcileOnce reads the guest, plans and walks the plan. It returns when
// the guest converged, an action failed, or the desired state changed under
// it (the next pass re-plans).
func (s *legacyGuest) reconcileOnce(ctx workflow.Context) {
	gen := s.generation
	s.setPhase(ctx, PhaseConverging)
	obs, err := s.observe(ctx)
	if err != nil {
		s.fail(ctx, "read guest: "+err.Error())
		return
	}
	spec := *s.spec
	plan := desired.MakeWithShrink(spec, obs.Guest, classifierFor(obs.Provenance, s.in.Host, s.in.VMID, workflow.GetInfo(ctx).WorkflowExecution.RunID))
	s.observed, s.plan, s.provenance = &obs.Guest, &plan, &obs.Provenance
	if plan.Empty() {
		s.unconverged = 0
		s.lastErr = ""
		if len(plan.Notes) > 0 {
			s.lastErr = plan.Notes[0]
			s.setPhase(ctx, PhaseConflict)
			return
		}
		s.setPhase(ctx, PhaseConverged)
		return
	}

	// Each pass re-reads the guest and plans again; a plan that keeps coming
	// back means Proxmox does not take what is asked, and looping would only
	// hammer it.
	s.unconverged++
	if s.unconverged > maxUnconvergedPasses {
		s.unconverged = 0
		s.fail(ctx, fmt.Sprintf("guest does not converge: %d passes in a row still planned %s", maxUnconvergedPasses, plan.Actions[0].Op))
		return
	}
	var created bool
	for _, action := range plan.Actions {
		if s.generation != gen {
			s.dirty = true
			return
		}
		var res ExecuteResult
		if action.Destructive {
			var ok bool
			res, ok = s.awaitApprovalAndRun(ctx, action, gen)
			if !ok {
				return
			}
		} else {
			res, err = s.execute(ctx, ExecuteInput{Action: action})
			if err != nil {
				s.record(ctx, action, "failed", err.Error())
				if created {
					s.compensate(ctx, action)
				}
				s.fail(ctx, action.Op+": "+err.Error())
				return
			}
		}
		s.record(ctx, action, "done", res.Detail)
		created = created || action.Op == desired.OpCreate
	}
	// Read again: the next pass confirms convergence or plans the rest.
	s.dirty = true
}

// awaitApprovalAndRun holds a destructive action until an approval arrives
// that the host accepts, or the desired state changes (the wait is then
// dropped and the guest re-planned).
func (s *legacyGuest) awaitApprovalAndRun(ctx workflow.Context, action desired.Action, gen int) (ExecuteResult, bool) {
	s.pending = &PendingAction{
		Action:     action,
		OpTemplate: OpTemplate{Op: action.Op, HostID: action.Host, GuestID: action.Guest, Params: action.Params},
		Since:      workflow.Now(ctx),
	}
	s.setPhase(ctx, PhasePending)
	defer func() {
		s.pending = nil
		s.answerApprovals(ApprovalVerdict{Code: "superseded", Detail: "the action is no longer pending"})
	}()
	for {
		if err := workflow.Await(ctx, func() bool { return len(s.approvals) > 0 || s.generation != gen }); err != nil {
			return ExecuteResult{}, false
		}
		if s.generation != gen {
			workflow.GetLogger(ctx).Info("desired state changed while waiting for a signature: re-planning", "op", action.Op)
			s.dirty = true
			return ExecuteResult{}, false
		}
		req := s.approvals[0]
		s.approvals = s.approvals[1:]
		res, err := s.execute(ctx, ExecuteInput{Action: action, Approval: &req.approval})
		if err == nil {
			s.reply(req, ApprovalVerdict{Accepted: true, Detail: res.Detail})
			return res, true
		}
		code, detail := rejection(err)
		if code == "" {
			// Not a refusal of the approval: the action itself failed.
			s.reply(req, ApprovalVerdict{Accepted: true, Code: "failed", Detail: err.Error()})
			s.record(ctx, action, "failed", err.Error())
			s.fail(ctx, action.Op+": "+err.Error())
			return ExecuteResult{}, false
		}
		s.reply(req, ApprovalVerdict{Code: code, Detail: detail})
		s.record(ctx, action, "rejected", code+": "+detail)
		s.pending.LastRejection = code
		s.publish(ctx)
	}
}

func (s *legacyGuest) reply(req *legacyApprovalRequest, v ApprovalVerdict) {
	if req.reply != nil {
		*req.reply = v
	}
	req.done = true
}

func (s *legacyGuest) answerApprovals(v ApprovalVerdict) {
	for _, req := range s.approvals {
		s.reply(req, v)
	}
	s.approvals = nil
}

// compensate destroys a guest this execution created when a later step of
// the same plan failed. The host classifies it benign from its own ledger
// (created by this very run), so no signature is needed.
func (s *legacyGuest) compensate(ctx workflow.Context, failed desired.Action) {
	action := desired.Action{
		Op: desired.OpDestroy, Host: s.in.Host, Guest: strconv.Itoa(s.in.VMID),
		Params: map[string]any{"kind": string(s.spec.Kind)},
		Reason: "compensating rollback: " + failed.Op + " failed after create",
	}
	if _, err := s.execute(ctx, ExecuteInput{Action: action}); err != nil {
		s.record(ctx, action, "failed", err.Error())
		return
	}
	s.record(ctx, action, "compensated", "")
}

func (s *legacyGuest) observe(ctx workflow.Context) (Observation, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second, MaximumAttempts: 10},
	})
	var obs Observation
	err := workflow.ExecuteActivity(ctx, ActivityObserveGuest, ObserveInput{VMID: s.in.VMID}).Get(ctx, &obs)
	return obs, err
}

func (s *legacyGuest) execute(ctx workflow.Context, in ExecuteInput) (ExecuteResult, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 30 * time.Minute,
		// Proxmox tasks are waited on with a heartbeat per poll; a lost
		// worker is noticed within this and the retry resumes the task.
		HeartbeatTimeout: 30 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute, MaximumAttempts: 20,
		},
	})
	var res ExecuteResult
	err := workflow.ExecuteActivity(ctx, ActivityExecuteAction, in).Get(ctx, &res)
	return res, err
}

func (s *legacyGuest) record(ctx workflow.Context, a desired.Action, result, detail string) {
	s.recent = append(s.recent, ActionRecord{Action: a, Result: result, Detail: detail, At: workflow.Now(ctx)})
	if len(s.recent) > recentLimit {
		s.recent = s.recent[len(s.recent)-recentLimit:]
	}
}

func (s *legacyGuest) fail(ctx workflow.Context, msg string) {
	s.lastErr = msg
	s.setPhase(ctx, PhaseFailed)
	// Try again later on its own; a new desired state or a wake-up is sooner.
	// Runs before this version also dropped a wake-up that came in during
	// the failed pass.
	if workflow.GetVersion(ctx, "failure-keeps-wakeup", workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		s.dirty = false
	}
	workflow.Go(ctx, func(ctx workflow.Context) {
		_ = workflow.Sleep(ctx, 5*time.Minute)
		s.dirty = true
	})
}

func (s *legacyGuest) setPhase(ctx workflow.Context, phase string) {
	s.phase = phase
	s.publish(ctx)
}

// publish makes the state visible: search attributes for queries, the memo
// and current details for the Web UI.
func (s *legacyGuest) publish(ctx workflow.Context) {
	err := workflow.UpsertTypedSearchAttributes(ctx,
		visibility.HostKey.ValueSet(s.in.Host),
		visibility.GuestKey.ValueSet(strconv.Itoa(s.in.VMID)),
		visibility.PhaseKey.ValueSet(s.phase),
		visibility.PendingSignatureKey.ValueSet(s.pending != nil),
	)
	if err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "error", err)
	}
	details := fmt.Sprintf("**%s/%d**: %s", s.in.Host, s.in.VMID, s.phase)
	if s.pending != nil {
		details += fmt.Sprintf("\n\nwaiting for a signature on `%s` (%s)", s.pending.Action.Op, s.pending.Action.Reason)
	}
	if s.lastErr != "" {
		details += "\n\n" + s.lastErr
	}
	workflow.SetCurrentDetails(ctx, details)
	if err := workflow.UpsertMemo(ctx, map[string]any{"host": s.in.Host, "guest": s.in.VMID, "phase": s.phase}); err != nil {
		workflow.GetLogger(ctx).Warn("upsert memo", "error", err)
	}
}

func (s *legacyGuest) status() GuestStatus {
	return GuestStatus{
		Host: s.in.Host, VMID: s.in.VMID, Phase: s.phase, Generation: s.generation,
		Desired: s.spec, Observed: s.observed, Plan: s.plan, Pending: s.pending, Provenance: s.provenance,
		LastError: s.lastErr, Recent: s.recent,
	}
}

func (s *legacyGuest) historyFull(ctx workflow.Context) bool {
	return workflow.GetInfo(ctx).GetCurrentHistoryLength() >= s.in.MaxHistoryEvents
}

// continueAsNew starts a fresh run with the state that matters. Handlers
// must finish and buffered signals must be taken first, or they are lost.
func (s *legacyGuest) continueAsNew(ctx workflow.Context) error {
	if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
		return err
	}
	for {
		var spec desired.Spec
		if !workflow.GetSignalChannel(ctx, SignalSetDesired).ReceiveAsync(&spec) {
			break
		}
		s.applySignalSpec(ctx, spec)
	}
	// Nothing is pending between passes, so a late approval has no action
	// to approve; a reconcile request is moot, the next run reads at once.
	for _, name := range []string{SignalApprove, SignalReconcile} {
		for workflow.GetSignalChannel(ctx, name).ReceiveAsync(nil) {
		}
	}
	next := s.in
	next.Desired, next.Generation, next.Recent = s.spec, s.generation, s.recent
	return workflow.NewContinueAsNewError(ctx, GuestReconcileWorkflow, next)
}
