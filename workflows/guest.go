// Package workflows holds felhom-agent's deterministic workflow code: one
// GuestReconcileWorkflow per guest, one HostWorkflow per host, and
// SignedJobWorkflow for one-shot destructive operations. Workflow code only
// decides; every side effect is an activity that runs on the host.
//
// # Changing this code
//
// Guest and host workflows run for months, so a deployed worker replays
// histories written by older code. Any change that could alter the commands
// a history holds (activities, timers, signals sent, search attributes,
// their order) is guarded with workflow.GetVersion, keeping the old path for
// old histories. Each workflow starts with one such guard, whose
// DefaultVersion branch is the whole earlier workflow, kept as it was
// (guest_legacy.go, host_legacy.go, job.go). tests/testdata/histories holds
// recorded histories of every branch, old and new, and
// TestRecordedHistoriesReplay replays them against the current code.
package workflows

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// versionGuestLoop guards the linear loop below; runs recorded before it
// replay legacyGuestReconcile.
const versionGuestLoop = "guest-linear-loop"

// versionGuestCost is the version of versionGuestLoop (a version, not a
// change ID of its own: each change ID costs every new run a marker and a
// search-attribute upsert) that makes a guest cheaper to run. Runs recorded
// at version 1 keep the earlier behaviour:
//
//   - a converged guest is not read again on a timer of its own unless
//     GuestInput.ResyncEvery asks for one: the host workflow's listing wakes
//     it when it drifted, its configuration included (see
//     activities/listing.go), so an idle host costs the same whatever its
//     number of guests. A failed pass is still retried at RetryEvery;
//   - the desired state reaches the host workflow through the next read
//     (ObserveInput.Announce), not a signal of the guest workflow, whose
//     delivery cost a workflow task, and only once when an update arrives
//     before the run's start is done;
//   - a step hands what it learnt to the next (ExecuteResult.Status and
//     After, StartGuestInput.Known, the ExpectAbsent hints), and a pass whose
//     steps all said how they left the guest plans against that instead of
//     reading the guest again: converging a new guest is one read, the
//     create and the start.
const versionGuestCost workflow.Version = 2

// versionGuestWaits is the version of versionGuestLoop whose wait for work
// cancels its timer when work comes first (awaitOrTimeout) instead of
// leaving it to fire into an empty workflow task. It keeps everything of
// versionGuestCost.
const versionGuestWaits workflow.Version = 3

// versionGuestLocalRead is the version of versionGuestLoop that reads the
// guest at the start of a pass as a local activity (localReadStep): the
// read runs inside the workflow task that planned the pass, and the plan's
// first step is scheduled in that same task, instead of a round trip
// through the server (an activity task and one more workflow task per
// pass). It keeps everything of versionGuestWaits.
const versionGuestLocalRead workflow.Version = 4

// versionGuestRereadHeld is the version of versionGuestLoop whose wait for
// a signature also ends on a reconcile (errReread): the pass reads the guest
// and plans again. The same action planned again stays pending as it was
// (holdForSignature keeps its Since and last rejection); a guest that needs
// no destroy any more (root removed it by hand, say) converges instead of
// waiting for a signature nothing would use. Earlier runs wake only for a new
// desired state, a job, an approval or a continue-as-new. It keeps
// everything of versionGuestLocalRead.
const versionGuestRereadHeld workflow.Version = 5

// versionGuestCreateStarts is the version of versionGuestLoop that hands a
// plan's start that follows its create to the create's step
// (CreateGuestInput.Start): a new running guest costs one activity and one
// workflow task less. The two are recorded as two actions, as before. A
// start that fails after its create is ErrTypeStartAfterCreate, and the
// guest is rolled back as when a start step fails after a create. What the
// pair gives up is the check for a new desired state between the two: one
// that arrives during the create is planned after the start. It keeps
// everything of versionGuestRereadHeld.
const versionGuestCreateStarts workflow.Version = 6

// versionGuestDesiredMemo is the version of versionGuestLoop that
// publishes its desired state in its memo (MemoDesired), where the host's
// pass reads it (versionHostFromGuests), instead of announcing it to the
// host workflow through the next read (ObserveInput.Announce): each notice
// cost the server a signal and the host workflow a workflow task. The memo
// is written with the phase, which a new desired state changes anyway. It
// keeps everything of versionGuestCreateStarts.
const versionGuestDesiredMemo workflow.Version = 7

// legacyResync is the resync interval runs before versionGuestCost used
// by default and carried, as if asked for, into the input of the run they
// continued as new into; such a run does not keep it.
const legacyResync = time.Hour

// GuestReconcileWorkflow keeps one guest at its desired state, one pass at a
// time:
//
//	wait for work → observe → plan → for each action: await an approval if
//	it is destructive, then run it → continue as new when the history is long
//
// Work is a new desired state, a wake-up, the resync or retry time, or a
// signed job for this guest, which runs between two passes (jobs.go). A
// wake-up (the reconcile signal) also ends a wait for an approval: the pass
// reads and plans again. The wait, and the wait for an approval, also end
// when the run should continue as new, which carries the desired state, the generation, the recent
// actions and a pending action to the next run. A cancellation ends the
// workflow where it is: nothing is rolled back.
func GuestReconcileWorkflow(ctx workflow.Context, in GuestInput) error {
	v := workflow.GetVersion(ctx, versionGuestLoop, workflow.DefaultVersion, versionGuestDesiredMemo)
	if v == workflow.DefaultVersion {
		return legacyGuestReconcile(ctx, in)
	}
	g, err := startGuest(ctx, in, v)
	if err != nil {
		return err
	}
	for {
		work, err := g.waitForWork(ctx)
		if err != nil {
			return err
		}
		switch work {
		case workContinueAsNew:
			return g.continueAsNew(ctx)
		case workJobs:
			err = g.runJobs(ctx)
		case workPass:
			err = g.reconcile(ctx)
		}
		if err != nil {
			return err
		}
	}
}

// work is what ends a wait for work.
type work int

const (
	workPass work = iota
	workJobs
	workContinueAsNew
)

// Why a wait for an approval ended without one.
var (
	errSuperseded    = errors.New("the desired state changed")
	errJobQueued     = errors.New("a signed job on this guest runs first")
	errContinueAsNew = errors.New("the run continues as new")
	errReread        = errors.New("a reconcile asked to read the guest again")
)

// guest is the state of one guest workflow run.
type guest struct {
	in         GuestInput
	spec       *desired.Spec
	generation int
	phase      string
	observed   *desired.Observed
	provenance *Provenance
	plan       *desired.Plan
	pending    *PendingAction
	lastErr    string
	recent     []ActionRecord
	approvals  approvalQueue
	jobs       jobQueue
	signals    guestSignals
	// readAgain asks for a pass as soon as possible: a new desired state, a
	// wake-up, or a pass that acted and must confirm what it did.
	readAgain bool
	// nextPass is when the guest is read again on its own: the resync time
	// after a pass, the retry time after a failure.
	nextPass time.Time
	// unconverged counts passes in a row that ran their whole plan; a pass
	// that finds nothing to do resets it.
	unconverged int
	published   string // what publish last made visible
	// publishedGen is the generation of the desired state publish last
	// wrote to the memo, on desiredMemo's path.
	publishedGen int
	// cheap is versionGuestCost's path; resync is the timed resync it keeps
	// (zero: none).
	cheap  bool
	resync time.Duration
	// cancelWaits is versionGuestWaits' path: see awaitOrTimeout.
	cancelWaits bool
	// localRead is versionGuestLocalRead's path: see observe.
	localRead bool
	// rereadHeld is versionGuestRereadHeld's path: see awaitApproval.
	rereadHeld bool
	// createStarts is versionGuestCreateStarts' path: see reconcile.
	createStarts bool
	// desiredMemo is versionGuestDesiredMemo's path: see announce.
	desiredMemo bool
	// announcement is a desired-state notice for the host workflow that the
	// next read carries, and expectAbsent tells that read the guest was not
	// there (versionGuestCost).
	announcement *DesiredNotice
	expectAbsent bool
}

// guestSignals are the channels of the signals a guest workflow takes.
type guestSignals struct {
	desired, approve, reconcile workflow.ReceiveChannel
}

// startGuest builds the run's state from its input, registers the message
// handlers and makes the state visible.
func startGuest(ctx workflow.Context, in GuestInput, v workflow.Version) (*guest, error) {
	cheap := v >= versionGuestCost
	in = in.withDefaults()
	in = guestInputFloors(ctx, in)
	// The resync a cheap run keeps is the one its input asked for, raised
	// to its floor (a negative one included): none for the default.
	resync := in.ResyncEvery
	if resync == legacyResync {
		resync = 0
	}
	g := &guest{in: in, generation: in.Generation, recent: in.Recent, phase: PhaseWaiting, cancelWaits: v >= versionGuestWaits, localRead: v >= versionGuestLocalRead, rereadHeld: v >= versionGuestRereadHeld, createStarts: v >= versionGuestCreateStarts, desiredMemo: v >= versionGuestDesiredMemo}
	if cheap {
		// A new workflow's guest is usually yet to be created; a continued
		// run's was there.
		g.cheap, g.resync, g.expectAbsent = true, resync, in.Carry == nil
	}
	if in.Desired != nil {
		spec, err := checkSpec(in, *in.Desired)
		if err != nil {
			return nil, temporal.NewNonRetryableApplicationError("invalid desired state in workflow input: "+err.Error(), ErrTypeInvalidSpec, err)
		}
		g.spec, g.readAgain = &spec, true
		if g.generation == 0 {
			g.generation = 1
		}
	}
	if c := in.Carry; c != nil {
		g.phase, g.lastErr, g.pending = c.Phase, c.LastError, c.Pending
		g.readAgain, g.nextPass, g.unconverged = c.ReadAgain, c.NextPass, c.Unconverged
		g.observed, g.provenance = c.Observed, c.Provenance
	}
	g.signals = guestSignals{
		desired:   workflow.GetSignalChannel(ctx, SignalSetDesired),
		approve:   workflow.GetSignalChannel(ctx, SignalApprove),
		reconcile: workflow.GetSignalChannel(ctx, SignalReconcile),
	}
	fromInput := g.spec != nil
	// An update that came with the start (Update-With-Start) is handled as
	// its handler is registered, and announces its desired state itself.
	if err := g.registerHandlers(ctx); err != nil {
		return nil, err
	}
	g.publish(ctx)
	if g.spec != nil && (fromInput || !g.cheap) {
		// The host workflow may have started after this guest's desired
		// state was last announced, or lost it.
		g.announce(ctx)
	}
	return g, nil
}

// waitForWork blocks until there is something to do, and says what.
func (g *guest) waitForWork(ctx workflow.Context) (work, error) {
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		g.takeSignals(ctx)
		switch {
		case g.jobs.len() > 0:
			return workJobs, nil
		case g.shouldContinueAsNew(ctx):
			return workContinueAsNew, nil
		case g.spec != nil && (g.readAgain || g.passDue(ctx)):
			g.readAgain = false
			return workPass, nil
		}
		woken := func() bool {
			return g.signals.waiting() || g.jobs.len() > 0 || (g.spec != nil && g.readAgain) || g.shouldContinueAsNew(ctx)
		}
		wait := timedWait(g.cancelWaits)
		var err error
		if g.spec == nil || (g.cheap && g.nextPass.IsZero()) {
			err = workflow.Await(ctx, woken)
		} else {
			_, err = wait(ctx, g.nextPass.Sub(workflow.Now(ctx)), woken)
		}
		if err != nil {
			return 0, err
		}
	}
}

// passDue reports whether the time to read the guest on its own has come:
// the resync or the retry time. On versionGuestCost's path a zero time is
// none.
func (g *guest) passDue(ctx workflow.Context) bool {
	if g.cheap && g.nextPass.IsZero() {
		return false
	}
	return !workflow.Now(ctx).Before(g.nextPass)
}

// reconcile is one pass: read the guest, plan, and take each action of the
// plan in turn. It returns an error only when the workflow was cancelled.
func (g *guest) reconcile(ctx workflow.Context) error {
	gen := g.generation
	switch {
	case !g.cheap:
		g.nextPass = workflow.Now(ctx).Add(g.in.ResyncEvery)
	case g.resync > 0:
		g.nextPass = workflow.Now(ctx).Add(g.resync)
	default:
		g.nextPass = time.Time{} // the host workflow wakes the guest when it drifts
	}
	obs, err := g.observe(ctx)
	if err != nil {
		return g.fail(ctx, "read guest: "+err.Error())
	}
	plan := g.makePlan(ctx, obs)
	if plan.Empty() {
		g.settle(ctx, plan)
		return nil
	}
	if g.unconverged >= maxUnconvergedPasses {
		// Each of these passes ran its whole plan, and the plan keeps coming
		// back: Proxmox does not take what is asked, and looping would only
		// hammer it.
		g.unconverged = 0
		return g.fail(ctx, fmt.Sprintf("guest does not converge: %d passes in a row ran their plan and still planned %s", maxUnconvergedPasses, plan.Actions[0].Op))
	}
	if !plan.Actions[0].Destructive {
		// A destructive first action makes the phase pending at once.
		g.setPhase(ctx, PhaseConverging)
	}
	created := false
	// known is the guest as the steps left it, while each step says so
	// (versionGuestCost); nil once one does not.
	var known *Observation
	if g.cheap {
		known = &obs
	}
	for i := 0; i < len(plan.Actions); i++ {
		action := plan.Actions[i]
		if g.generation != gen {
			g.readAgain = true // plan again for the new desired state
			return nil
		}
		if g.createStarts && startsAfter(plan.Actions, i) {
			// The create's step starts the guest too (versionGuestCreateStarts).
			start := plan.Actions[i+1]
			i++
			res, err := g.createAndStart(ctx, action, known)
			switch {
			case err != nil && ctx.Err() != nil:
				return ctx.Err()
			case isStartAfterCreate(err):
				g.record(ctx, action, "done", res.Detail)
				g.record(ctx, start, "failed", err.Error())
				g.compensate(ctx, start)
				return g.fail(ctx, start.Op+": "+err.Error())
			case err != nil:
				g.record(ctx, action, "failed", err.Error())
				return g.fail(ctx, action.Op+": "+err.Error())
			}
			g.record(ctx, action, "done", res.Detail)
			created = true
			known = learn(known, action, res)
			if res.Start != nil {
				g.record(ctx, start, "done", res.Start.Detail)
				known = learn(known, start, *res.Start)
			} else {
				known = nil // a host that did not say: the next pass reads
			}
			continue
		}
		res, err := g.take(ctx, action, gen, known)
		switch {
		case errors.Is(err, errSuperseded), errors.Is(err, errJobQueued), errors.Is(err, errContinueAsNew), errors.Is(err, errReread):
			g.readAgain = true
			return nil
		case err != nil && ctx.Err() != nil:
			return ctx.Err() // cancelled: leave the guest as it is
		case err != nil:
			g.record(ctx, action, "failed", err.Error())
			if created {
				g.compensate(ctx, action)
			}
			return g.fail(ctx, action.Op+": "+err.Error())
		}
		g.record(ctx, action, "done", res.Detail)
		created = created || action.Op == desired.OpCreate
		known = learn(known, action, res)
	}
	g.unconverged++
	g.expectAbsent = known != nil && !known.Guest.Exists
	if known != nil && g.generation == gen {
		// Every step said how it left the guest: plan against that. Nothing
		// left to do is convergence, as a read would have found (steps read
		// what they are not told; the host workflow's listing wakes a guest
		// that changed since).
		if after := g.makePlan(ctx, *known); after.Empty() {
			g.settle(ctx, after)
			return nil
		}
	}
	g.readAgain = true // the next pass confirms convergence or plans the rest
	return nil
}

// learn updates known, the guest as the steps so far left it, with what
// action's step reported: a create's read of the new guest, a power step's
// status. Any other step, or one that did not say, makes it unknown (nil):
// the next pass reads the guest.
func learn(known *Observation, action desired.Action, res ExecuteResult) *Observation {
	if known == nil {
		return nil
	}
	next := *known
	switch {
	case action.Op == desired.OpCreate && res.After != nil:
		next = *res.After
	case (action.Op == desired.OpStart || action.Op == desired.OpShutdown) && res.Status != "":
		next.Guest.Status = res.Status
	default:
		return nil
	}
	return &next
}

// startsAfter reports whether plan action i is a create that the next
// action, a start needing no signature, follows.
func startsAfter(actions []desired.Action, i int) bool {
	return i+1 < len(actions) && actions[i].Op == desired.OpCreate && !actions[i].Destructive &&
		actions[i+1].Op == desired.OpStart && !actions[i+1].Destructive
}

// createAndStart runs a create whose step also starts the guest.
func (g *guest) createAndStart(ctx workflow.Context, create desired.Action, known *Observation) (ExecuteResult, error) {
	return g.runWith(ctx, create, nil, known, func(in any) any {
		if c, ok := in.(CreateGuestInput); ok {
			c.Start = true
			return c
		}
		return in
	})
}

// isStartAfterCreate reports a create step that created its guest and
// failed to start it.
func isStartAfterCreate(err error) bool {
	var ae *temporal.ApplicationError
	return errors.As(err, &ae) && ae.Type() == ErrTypeStartAfterCreate
}

// take runs one action of the plan; a destructive one waits for an
// approval the host accepts first.
func (g *guest) take(ctx workflow.Context, action desired.Action, gen int, known *Observation) (ExecuteResult, error) {
	if !action.Destructive {
		return g.runKnowing(ctx, action, nil, known)
	}
	g.holdForSignature(ctx, action)
	for {
		req, err := g.awaitApproval(ctx, gen)
		if err != nil {
			g.endHold(ctx, err)
			return ExecuteResult{}, err
		}
		res, err := g.run(ctx, action, &req.approval)
		if code, detail := rejection(err); code != "" {
			// The host refused this approval; the action keeps waiting.
			req.answer(ApprovalVerdict{Code: code, Detail: detail})
			g.record(ctx, action, "rejected", code+": "+detail)
			g.pending.LastRejection = code
			g.publish(ctx)
			continue
		}
		if err != nil {
			req.answer(ApprovalVerdict{Accepted: true, Code: "failed", Detail: err.Error()})
		} else {
			req.answer(ApprovalVerdict{Accepted: true, Detail: res.Detail})
		}
		g.endHold(ctx, nil)
		g.setPhase(ctx, PhaseConverging) // what is left of the plan runs now
		return res, err
	}
}

// holdForSignature makes action the pending one. The same action carried
// over from the previous run keeps its Since, its last rejection and the
// approvals sent for it meanwhile; another one replaces it.
func (g *guest) holdForSignature(ctx workflow.Context, action desired.Action) {
	if g.pending != nil && !sameAction(g.pending.Action, action) {
		g.dropPending("another action waits for a signature now")
	}
	if g.pending == nil {
		g.pending = &PendingAction{
			Action:     action,
			OpTemplate: OpTemplate{Op: action.Op, HostID: action.Host, GuestID: action.Guest, Params: action.Params},
			Since:      workflow.Now(ctx),
		}
	}
	g.setPhase(ctx, PhasePending)
}

// awaitApproval waits for an approval of the pending action. It ends
// without one when the desired state changes (errSuperseded), when a signed
// job on this guest is queued (errJobQueued), on versionGuestRereadHeld's
// path when a reconcile asks for a new read (errReread: the action stays
// pending for the next pass to hold again or let go), when the run should
// continue as new (errContinueAsNew: nothing is queued then), or when the
// workflow is cancelled. An approval already queued is tried before a
// reconcile is honoured.
func (g *guest) awaitApproval(ctx workflow.Context, gen int) (*approvalRequest, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		g.takeSignals(ctx)
		switch {
		case g.generation != gen:
			// Checked first: an approval that came with the change was signed
			// for what is no longer wanted.
			return nil, errSuperseded
		case g.jobs.len() > 0:
			return nil, errJobQueued
		case g.approvals.len() > 0:
			return g.approvals.pop(), nil
		case g.rereadHeld && g.readAgain:
			return nil, errReread
		case g.shouldContinueAsNew(ctx):
			return nil, errContinueAsNew
		}
		err := workflow.Await(ctx, func() bool {
			return g.signals.waiting() || g.generation != gen || g.jobs.len() > 0 || g.approvals.len() > 0 || g.shouldContinueAsNew(ctx)
		})
		if err != nil {
			return nil, err
		}
	}
}

// endHold ends the wait for a signature. Approvals still queued are
// answered; the pending action is kept only for the next run, or for the
// next pass after a reconcile.
func (g *guest) endHold(ctx workflow.Context, why error) {
	switch {
	case errors.Is(why, errContinueAsNew):
		return
	case errors.Is(why, errReread):
		// Kept: the next pass holds it again, unchanged, if it still plans it.
		workflow.GetLogger(ctx).Info("reconcile while waiting for a signature: reading the guest again", "op", g.pending.Action.Op)
		return
	case errors.Is(why, errSuperseded):
		workflow.GetLogger(ctx).Info("desired state changed while waiting for a signature: planning again", "op", g.pending.Action.Op)
		g.dropPending(why.Error())
	case why != nil:
		g.dropPending(why.Error())
	default:
		g.dropPending("the action ran with an earlier approval")
	}
}

// dropPending ends the wait for a signature on the pending action, if any:
// approvals queued for it are answered as superseded, never tried.
func (g *guest) dropPending(why string) {
	g.approvals.answerAll(superseded(why))
	g.pending = nil
}

// run performs one action through its own activity.
func (g *guest) run(ctx workflow.Context, action desired.Action, approval *Approval) (ExecuteResult, error) {
	return g.runKnowing(ctx, action, approval, nil)
}

// runKnowing is run with the guest's state as the step before left it, if
// known, handed to the step as a hint (withHints).
func (g *guest) runKnowing(ctx workflow.Context, action desired.Action, approval *Approval, known *Observation) (ExecuteResult, error) {
	return g.runWith(ctx, action, approval, known, nil)
}

// runWith is runKnowing with the step's input changed by adjust, if set.
func (g *guest) runWith(ctx workflow.Context, action desired.Action, approval *Approval, known *Observation, adjust func(any) any) (ExecuteResult, error) {
	s, err := stepFor(action, approval)
	if err != nil {
		return ExecuteResult{}, temporal.NewNonRetryableApplicationError(err.Error(), "NoStep", err)
	}
	if known != nil {
		s.input = withHints(s.input, known.Guest)
	}
	if adjust != nil {
		s.input = adjust(s.input)
	}
	var res ExecuteResult
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, s.options), s.activity, s.input).Get(ctx, &res)
	return res, err
}

// observe reads the guest and what the host's ledger says of it.
func (g *guest) observe(ctx workflow.Context) (Observation, error) {
	in := ObserveInput{VMID: g.in.VMID}
	if g.cheap {
		in.ExpectAbsent = g.expectAbsent
		in.Announce = g.announcement
	}
	var obs Observation
	var err error
	if g.localRead {
		err = workflow.ExecuteLocalActivity(workflow.WithLocalActivityOptions(ctx, localReadStep), ActivityObserveGuest, in).Get(ctx, &obs)
	} else {
		err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, readStep), ActivityObserveGuest, in).Get(ctx, &obs)
	}
	if err == nil && g.announcement == in.Announce {
		g.announcement = nil
	}
	if err == nil {
		g.expectAbsent = !obs.Guest.Exists
	}
	return obs, err
}

// makePlan plans the desired state against what was read, with the gate's
// classifier and the host's provenance deciding what waits for a signature.
func (g *guest) makePlan(ctx workflow.Context, obs Observation) desired.Plan {
	plan := desired.Make(*g.spec, obs.Guest, classifierFor(obs.Provenance, g.in.Host, g.in.VMID, workflow.GetInfo(ctx).WorkflowExecution.RunID))
	g.observed, g.plan, g.provenance = &obs.Guest, &plan, &obs.Provenance
	return plan
}

// settle ends a pass that found nothing to do: converged, or in conflict
// when the plan notes what it will not do by itself.
func (g *guest) settle(ctx workflow.Context, plan desired.Plan) {
	g.unconverged = 0
	g.dropPending("the guest needs no action any more") // one carried from the previous run
	g.lastErr = ""
	if len(plan.Notes) > 0 {
		g.lastErr = plan.Notes[0]
		g.setPhase(ctx, PhaseConflict)
		return
	}
	g.setPhase(ctx, PhaseConverged)
}

// fail ends a pass that could not finish: the guest is tried again at the
// retry time, or sooner for a new desired state or a wake-up. It returns
// the cancellation when the pass failed because the workflow was cancelled.
func (g *guest) fail(ctx workflow.Context, msg string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.lastErr = msg
	g.nextPass = workflow.Now(ctx).Add(g.in.RetryEvery)
	g.setPhase(ctx, PhaseFailed)
	return nil
}

// compensate destroys a guest this pass created when a later step of the
// same pass failed. The host classifies it benign from its own ledger (a
// fresh create, never started), so no signature is needed.
func (g *guest) compensate(ctx workflow.Context, failed desired.Action) {
	action := desired.Action{
		Op: desired.OpDestroy, Host: g.in.Host, Guest: strconv.Itoa(g.in.VMID),
		Params: map[string]any{"kind": string(g.spec.Kind)},
		Reason: "compensating rollback: " + failed.Op + " failed after create",
	}
	if _, err := g.run(ctx, action, nil); err != nil {
		g.record(ctx, action, "failed", err.Error())
		return
	}
	g.record(ctx, action, "compensated", "")
}

// shouldContinueAsNew reports whether the history is long enough to
// continue as new and nothing in flight would be lost by it.
func (g *guest) shouldContinueAsNew(ctx workflow.Context) bool {
	info := workflow.GetInfo(ctx)
	full := info.GetContinueAsNewSuggested() || info.GetCurrentHistoryLength() >= g.in.MaxHistoryEvents
	return full && g.approvals.len() == 0 && g.jobs.len() == 0 && workflow.AllHandlersFinished(ctx)
}

// continueAsNew starts the next run with everything this one knows.
func (g *guest) continueAsNew(ctx workflow.Context) error {
	next := g.in
	if g.cheap {
		next.ResyncEvery = g.resync
	}
	next.Desired, next.Generation, next.Recent = g.spec, g.generation, g.recent
	next.Carry = &GuestCarry{
		Phase: g.phase, LastError: g.lastErr, Pending: g.pending,
		ReadAgain: g.readAgain, NextPass: g.nextPass, Unconverged: g.unconverged,
	}
	if g.cheap {
		next.Carry.Observed, next.Carry.Provenance = g.observed, g.provenance
	}
	return workflow.NewContinueAsNewError(ctx, GuestReconcileWorkflow, next)
}

// registerHandlers sets the update and query handlers; signals are taken
// by takeSignals.
func (g *guest) registerHandlers(ctx workflow.Context) error {
	err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateSetDesired,
		func(ctx workflow.Context, arg specArg) (SetDesiredResult, error) {
			// Validators do not run on replay: check again here.
			norm, err := checkSpec(g.in, arg.Spec)
			if err != nil {
				return SetDesiredResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidSpec, nil)
			}
			g.acceptSpec(ctx, norm)
			return SetDesiredResult{Generation: g.generation}, nil
		},
		workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, arg specArg) error {
			return validateSpec(g.in, arg)
		}},
	)
	if err != nil {
		return err
	}
	err = workflow.SetUpdateHandlerWithOptions(ctx, UpdateApprove,
		func(ctx workflow.Context, a Approval) (ApprovalVerdict, error) {
			req := g.approvals.push(&approvalRequest{approval: a})
			if err := workflow.Await(ctx, func() bool { return req.answered }); err != nil {
				return ApprovalVerdict{}, err
			}
			return req.verdict, nil
		},
		workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, a Approval) error {
			if g.pending == nil {
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
	if err := g.registerJobHandler(ctx); err != nil {
		return err
	}
	if err := workflow.SetQueryHandler(ctx, QueryStatus, func() (GuestStatus, error) { return g.status(), nil }); err != nil {
		return err
	}
	return workflow.SetQueryHandler(ctx, QueryPending, func() (*PendingAction, error) { return g.pending, nil })
}

// waiting reports whether a signal waits to be taken.
func (s guestSignals) waiting() bool {
	return s.desired.Len() > 0 || s.approve.Len() > 0 || s.reconcile.Len() > 0
}

// versionInputFloors marks the runs that raise a start input's timings to
// their floors; it is asked only of an input below them, which only a
// hostile or mistaken caller starts a workflow with.
const versionInputFloors = "input-floors"

// MinResync is the shortest time between two reads of a guest, or of the
// node's listing, that a workflow's input may set: shorter would read
// Proxmox without pause.
const MinResync = time.Second

// guestInputFloors raises ResyncEvery and RetryEvery to MinResync and a
// MaxHistoryEvents below one to its default, so that a hostile start input
// cannot make the workflow read Proxmox, or continue as new, without pause.
func guestInputFloors(ctx workflow.Context, in GuestInput) GuestInput {
	low := in.ResyncEvery < MinResync || in.RetryEvery < MinResync || in.MaxHistoryEvents < 1
	if !low || workflow.GetVersion(ctx, versionInputFloors, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		return in
	}
	in.ResyncEvery, in.RetryEvery = max(in.ResyncEvery, MinResync), max(in.RetryEvery, MinResync)
	if in.MaxHistoryEvents < 1 {
		in.MaxHistoryEvents = GuestInput{}.withDefaults().MaxHistoryEvents
	}
	return in
}

// versionSignalLimits marks the runs that refuse a desired state sent by
// Signal beyond desired.Limits, as the Update's validator does.
const versionSignalLimits = "signal-spec-limits"

// signalLimits checks a signalled spec against desired.Limits. The version
// is asked only of a spec beyond them, so the histories of every other
// spec stay as they were; runs from before accept it, as they did.
func (g *guest) signalLimits(ctx workflow.Context, spec desired.Spec) error {
	err := desired.Limits(spec)
	if err == nil || workflow.GetVersion(ctx, versionSignalLimits, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		return nil
	}
	return err
}

// takeSignals applies every signal that arrived, in the order of their
// channels: desired states, approvals, wake-ups.
func (g *guest) takeSignals(ctx workflow.Context) {
	for {
		var spec desired.Spec
		if !g.signals.desired.ReceiveAsync(&spec) {
			break
		}
		norm, err := checkSpec(g.in, spec)
		if err == nil {
			err = g.signalLimits(ctx, spec)
		}
		if err != nil {
			// A signal has no caller to answer: the refusal is logged and shown.
			workflow.GetLogger(ctx).Warn("desired state refused", "error", err)
			g.lastErr = "desired state refused: " + err.Error()
			g.publish(ctx)
			continue
		}
		g.acceptSpec(ctx, norm)
	}
	for {
		var a Approval
		if !g.signals.approve.ReceiveAsync(&a) {
			break
		}
		if g.pending == nil {
			// Kept, it would be tried against whatever is pending next.
			workflow.GetLogger(ctx).Warn("approval received while no action is pending: dropped")
			continue
		}
		g.approvals.push(&approvalRequest{approval: a})
	}
	for {
		var reason string
		if !g.signals.reconcile.ReceiveAsync(&reason) {
			break
		}
		workflow.GetLogger(ctx).Info("reconcile requested", "reason", reason)
		g.readAgain = true
	}
}

// acceptSpec makes spec (normalised, this guest's) the desired state. The
// same spec again changes nothing: no new generation, no new pass, and a
// pending action keeps waiting.
func (g *guest) acceptSpec(ctx workflow.Context, spec desired.Spec) {
	if g.spec != nil && sameSpec(*g.spec, spec) {
		return
	}
	g.spec = &spec
	g.generation++
	g.readAgain = true
	g.unconverged = 0
	if g.phase != PhasePending {
		// Until the next pass has read the guest, it is not known converged.
		g.setPhase(ctx, PhaseConverging)
	}
	g.announce(ctx)
}

// announce tells the host workflow, which watches the desired set for
// drift, this guest's desired state. It may not run (yet): the guest still
// converges, only drift is noticed later. On versionGuestDesiredMemo's path
// the memo carries it, for the host's next pass.
func (g *guest) announce(ctx workflow.Context) {
	if g.desiredMemo {
		g.publish(ctx)
		return
	}
	notice := DesiredNotice{VMID: g.in.VMID, Spec: g.spec}
	if g.cheap {
		g.announcement = &notice // the next read delivers it
		return
	}
	err := workflow.SignalExternalWorkflow(ctx, HostWorkflowID(g.in.Host), "", SignalDesiredChanged, notice).Get(ctx, nil)
	if err != nil {
		workflow.GetLogger(ctx).Info("host workflow not told of the desired state", "error", err)
	}
}

func (g *guest) record(ctx workflow.Context, a desired.Action, result, detail string) {
	g.recent = append(g.recent, ActionRecord{Action: a, Result: result, Detail: detail, At: workflow.Now(ctx)})
	if len(g.recent) > recentLimit {
		g.recent = g.recent[len(g.recent)-recentLimit:]
	}
}

func (g *guest) setPhase(ctx workflow.Context, phase string) {
	g.phase = phase
	g.publish(ctx)
}

// publish makes the state visible: search attributes for queries, the memo
// and current details for the Web UI, and on versionGuestDesiredMemo's path
// the desired state in the memo for the host's pass. Nothing is written
// when nothing visible changed, so that passes that change nothing cost no
// events.
func (g *guest) publish(ctx workflow.Context) {
	details := fmt.Sprintf("**%s/%d**: %s", g.in.Host, g.in.VMID, g.phase)
	if g.pending != nil {
		details += fmt.Sprintf("\n\nwaiting for a signature on `%s` (%s)", g.pending.Action.Op, g.pending.Action.Reason)
	}
	if g.lastErr != "" {
		details += "\n\n" + g.lastErr
	}
	workflow.SetCurrentDetails(ctx, details)
	newDesired := g.desiredMemo && g.spec != nil && g.publishedGen != g.generation
	if details == g.published && !newDesired {
		return
	}
	if details != g.published {
		g.published = details
		err := workflow.UpsertTypedSearchAttributes(ctx,
			visibility.HostKey.ValueSet(g.in.Host),
			visibility.GuestKey.ValueSet(strconv.Itoa(g.in.VMID)),
			visibility.PhaseKey.ValueSet(g.phase),
			visibility.PendingSignatureKey.ValueSet(g.pending != nil),
		)
		if err != nil {
			workflow.GetLogger(ctx).Warn("upsert search attributes", "error", err)
		}
	}
	memo := map[string]any{"host": g.in.Host, "guest": g.in.VMID, "phase": g.phase}
	if newDesired {
		// The memo's fields are merged: the desired state stays until replaced.
		memo[MemoDesired] = g.spec
		g.publishedGen = g.generation
	}
	if err := workflow.UpsertMemo(ctx, memo); err != nil {
		workflow.GetLogger(ctx).Warn("upsert memo", "error", err)
	}
}

func (g *guest) status() GuestStatus {
	return GuestStatus{
		Host: g.in.Host, VMID: g.in.VMID, Phase: g.phase, Generation: g.generation,
		Desired: g.spec, Observed: g.observed, Plan: g.plan, Pending: g.pending, Provenance: g.provenance,
		LastError: g.lastErr, Recent: g.recent, NextPass: g.nextPass,
	}
}
