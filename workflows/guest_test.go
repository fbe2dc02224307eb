package workflows

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/felhom/felhom-agent/workflows/desired"
)

// fakeHost is an in-memory host for fast tests of the workflow's logic. The
// end-to-end tests in tests/ run the same workflow against a real server,
// the real activities and the Proxmox simulator.
type fakeHost struct {
	mu       sync.Mutex
	guest    desired.Observed
	prov     Provenance
	executed []string
	// acceptBlob is the only approval blob the fake gate accepts.
	acceptBlob string
	// failOp fails every action with this op; onFail runs first.
	failOp string
	onFail func()
	// lockedFor fails that many attempts of the next actions as locked.
	lockedFor int
	attempts  map[string]int
	// reads counts ObserveGuest calls; announced the desired states told
	// to the host workflow, by a notice or in the memo, and readNotices the
	// notices among them a read carried (ObserveInput.Announce).
	reads, announced, readNotices int
	// published is the desired state the memo last carried.
	published desired.Spec
	// blockStart holds StartGuest until the activity is cancelled; onStart
	// runs when a start begins, in its own step or in a create's.
	blockStart bool
	onStart    func()
	// fresh: the fake created the guest and never started it, so that,
	// as on a real host, destroying it is the benign rollback.
	fresh bool
	// reports: the steps say how they left the guest, as the host's do
	// (ExecuteResult.Status, After); hints are the hints they were given.
	reports bool
	hints   []string
}

func (h *fakeHost) ObserveGuest(ctx context.Context, in ObserveInput) (Observation, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reads++
	if in.ExpectAbsent {
		h.hints = append(h.hints, "observe:expect-absent")
	}
	if in.Announce != nil {
		h.announced++ // the host's worker delivers it (versionGuestCost)
		h.readNotices++
	}
	return Observation{Guest: h.guest, Provenance: h.prov}, nil
}

func (h *fakeHost) ExecuteAction(ctx context.Context, in ExecuteInput) (ExecuteResult, error) {
	return h.apply(in.Action.Op, in.Action.Params, in.Action.Destructive, in.Approval)
}

// apply performs op on the fake guest. A destructive op needs the one
// approval the fake gate accepts.
func (h *fakeHost) apply(op string, params map[string]any, destructive bool, approval *Approval) (ExecuteResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.attempts[op]++
	if destructive {
		if approval == nil {
			return ExecuteResult{}, temporal.NewNonRetryableApplicationError("needs a signature", ErrTypeGateRejection, nil, "pending_signature")
		}
		if approval.Blob != h.acceptBlob {
			return ExecuteResult{}, temporal.NewNonRetryableApplicationError("signed op does not match the action", ErrTypeGateRejection, nil, "binding_mismatch")
		}
	}
	if op == h.failOp {
		if h.onFail != nil {
			h.onFail()
		}
		return ExecuteResult{}, temporal.NewNonRetryableApplicationError("no bootable device", "ProxmoxTaskFailed", nil)
	}
	if h.lockedFor > 0 {
		// The guest is locked (a backup runs): a retryable failure.
		h.lockedFor--
		return ExecuteResult{}, temporal.NewApplicationError("VM is locked (backup)", "ProxmoxLocked")
	}
	h.executed = append(h.executed, op)
	switch op {
	case desired.OpCreate:
		h.fresh = true
		h.guest = desired.Observed{Exists: true, Kind: desired.Kind(params["kind"].(string)), Status: "stopped",
			MemoryMiB: intParam(params, "memory"), Cores: intParam(params, "cores"), Name: stringParam(params, "name")}
	case desired.OpStart:
		h.fresh = false
		h.guest.Status = "running"
	case desired.OpShutdown:
		h.guest.Status = "stopped"
	case desired.OpDestroy:
		h.guest = desired.Observed{}
	case desired.OpConfig:
		if m := intParam(params, "memory"); m != 0 {
			h.guest.MemoryMiB = m
		}
		if c := intParam(params, "cores"); c != 0 {
			h.guest.Cores = c
		}
	}
	return ExecuteResult{Detail: op + " done"}, nil
}

// The per-operation activities of the fake host. Destroy is destructive
// unless the guest is the agent's scratch one, as the gate decides.

func (h *fakeHost) CreateGuest(ctx context.Context, in CreateGuestInput) (ExecuteResult, error) {
	res, err := h.apply(desired.OpCreate, map[string]any{"kind": string(in.Kind), "memory": in.MemoryMiB, "cores": in.Cores, "name": in.Name}, false, nil)
	h.mu.Lock()
	if in.ExpectAbsent {
		h.hints = append(h.hints, "create:expect-absent")
	}
	if err == nil && h.reports {
		res.After = &Observation{Guest: h.guest, Provenance: Provenance{AgentCreated: true}}
	}
	h.mu.Unlock()
	if err != nil || !in.Start {
		return res, err
	}
	// The start in the create's step, as the host's (startCreated).
	start := StartGuestInput{GuestRef: in.GuestRef}
	if res.After != nil {
		start.Known = &KnownState{Kind: res.After.Guest.Kind, Status: res.After.Guest.Status}
	}
	started, err := h.StartGuest(ctx, start)
	if err != nil {
		return res, temporal.NewApplicationErrorWithOptions(err.Error(), ErrTypeStartAfterCreate,
			temporal.ApplicationErrorOptions{NonRetryable: true, Cause: err})
	}
	res.Start = &started
	if res.After != nil {
		res.After.Guest.Status = started.Status
	}
	return res, nil
}

func (h *fakeHost) StartGuest(ctx context.Context, in StartGuestInput) (ExecuteResult, error) {
	if k := in.Known; k != nil {
		h.mu.Lock()
		h.hints = append(h.hints, "start:"+string(k.Kind)+"/"+k.Status)
		h.mu.Unlock()
	}
	if h.onStart != nil {
		h.onStart()
	}
	if h.blockStart {
		select {
		case <-ctx.Done():
			return ExecuteResult{}, ctx.Err()
		case <-time.After(10 * time.Second):
			return ExecuteResult{}, errors.New("start was never cancelled")
		}
	}
	res, err := h.apply(desired.OpStart, nil, false, nil)
	if err == nil && h.reports {
		res.Status = "running"
	}
	return res, err
}

func (h *fakeHost) ShutdownGuest(ctx context.Context, in ShutdownGuestInput) (ExecuteResult, error) {
	return h.apply(desired.OpShutdown, nil, false, nil)
}

func (h *fakeHost) SetConfig(ctx context.Context, in SetConfigInput) (ExecuteResult, error) {
	return h.apply(desired.OpConfig, in.Set, false, nil)
}

func (h *fakeHost) DestroyGuest(ctx context.Context, in DestroyGuestInput) (ExecuteResult, error) {
	h.mu.Lock()
	benign := h.prov.Scratch || h.fresh
	h.mu.Unlock()
	return h.apply(desired.OpDestroy, nil, !benign, in.Approval)
}

func (h *fakeHost) register(env interface {
	RegisterActivityWithOptions(a any, options activity.RegisterOptions)
}) {
	for name, fn := range map[string]any{
		ActivityObserveGuest: h.ObserveGuest, ActivityExecuteAction: h.ExecuteAction,
		ActivityCreateGuest: h.CreateGuest, ActivityStartGuest: h.StartGuest, ActivityShutdownGuest: h.ShutdownGuest,
		ActivitySetConfig: h.SetConfig, ActivityDestroyGuest: h.DestroyGuest,
	} {
		env.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name})
	}
}

func (h *fakeHost) ops() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.executed...)
}

func newEnv(t *testing.T, h *fakeHost) *testsuite.TestWorkflowEnvironment {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(GuestReconcileWorkflow)
	if h.attempts == nil {
		h.attempts = map[string]int{}
	}
	h.register(env)
	// The host workflow is not running in these tests: telling it fails.
	env.OnSignalExternalWorkflow(mock.Anything, HostWorkflowID("pve1"), "", SignalDesiredChanged, mock.Anything).Return(nil).Maybe().
		Run(func(mock.Arguments) { h.mu.Lock(); h.announced++; h.mu.Unlock() })
	// Since versionGuestDesiredMemo the memo tells the host's pass.
	env.OnUpsertMemo(mock.Anything).Return(nil).Maybe().Run(func(args mock.Arguments) {
		memo, _ := args.Get(0).(map[string]any)
		if spec, ok := memo[MemoDesired].(*desired.Spec); ok {
			h.mu.Lock()
			h.announced++
			h.published = *spec
			h.mu.Unlock()
		}
	})
	return env
}

// steps registers a test's delayed callbacks and, after the run, checks that
// every one of them ran and that the workflow ended as the test's last step
// ended it: cancelled, not failed, panicked or returned early. A workflow
// that stops before a step leaves that step's assertions unrun, so without
// this such a test would pass.
type steps struct {
	t   *testing.T
	env *testsuite.TestWorkflowEnvironment
	ran []bool
}

func newSteps(t *testing.T, env *testsuite.TestWorkflowEnvironment) *steps {
	return &steps{t: t, env: env}
}

// at runs fn after d of workflow time.
func (s *steps) at(d time.Duration, fn func()) {
	i := len(s.ran)
	s.ran = append(s.ran, false)
	s.env.RegisterDelayedCallback(func() {
		s.ran[i] = true
		fn()
	}, d)
}

// run executes the workflow and checks that every step ran and that the
// workflow was cancelled by the last one.
func (s *steps) run(in GuestInput) {
	s.t.Helper()
	s.env.ExecuteWorkflow(GuestReconcileWorkflow, in)
	for i, ran := range s.ran {
		if !ran {
			s.t.Errorf("step %d of %d never ran: the workflow ended before it", i+1, len(s.ran))
		}
	}
	if !s.env.IsWorkflowCompleted() {
		s.t.Fatal("the workflow did not complete")
	}
	if err := s.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		s.t.Fatalf("workflow error = %v, want the cancellation by the test's last step", err)
	}
}

func spec(state desired.State) *desired.Spec {
	return &desired.Spec{Host: "pve1", VMID: 101, Kind: desired.QEMU, Name: "web", State: state, Memory: "1GiB", Cores: 2}
}

func queryStatus(t *testing.T, env *testsuite.TestWorkflowEnvironment) GuestStatus {
	t.Helper()
	v, err := env.QueryWorkflow(QueryStatus)
	if err != nil {
		t.Fatalf("query status: %v", err)
	}
	var st GuestStatus
	if err := v.Get(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestGuestWorkflowCreatesAndStarts(t *testing.T) {
	h := &fakeHost{}
	env := newEnv(t, h)
	s := newSteps(t, env)
	s.at(time.Minute, func() {
		st := queryStatus(t, env)
		if st.Phase != PhaseConverged {
			t.Errorf("phase = %s, want %s (last error %q)", st.Phase, PhaseConverged, st.LastError)
		}
		if h.guest.Status != "running" || h.guest.MemoryMiB != 1024 {
			t.Errorf("guest = %+v, want running with 1024 MiB", h.guest)
		}
		env.CancelWorkflow()
	})
	s.run(GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running)})
	if got, want := strings.Join(h.ops(), ","), "guest.create,guest.start"; got != want {
		t.Errorf("executed %s, want %s", got, want)
	}
}

func TestGuestWorkflowHoldsDestroyForAMatchingSignature(t *testing.T) {
	h := &fakeHost{guest: desired.Observed{Exists: true, Kind: desired.QEMU, Status: "running", Name: "web", MemoryMiB: 1024, Cores: 2}, acceptBlob: "good"}
	env := newEnv(t, h)
	s := newSteps(t, env)
	var verdicts []ApprovalVerdict
	approve := func(blob string) {
		env.UpdateWorkflow(UpdateApprove, blob, &testsuite.TestUpdateCallback{
			OnReject: func(err error) { t.Errorf("approval %s rejected by the validator: %v", blob, err) },
			OnAccept: func() {},
			OnComplete: func(v any, err error) {
				if err != nil {
					t.Errorf("approval %s: %v", blob, err)
					return
				}
				verdicts = append(verdicts, v.(ApprovalVerdict))
			},
		}, Approval{Blob: blob, Signature: "sig"})
	}
	s.at(time.Minute, func() {
		st := queryStatus(t, env)
		if st.Phase != PhasePending || st.Pending == nil || st.Pending.Action.Op != desired.OpDestroy {
			t.Fatalf("status = %+v, want pending_signature on guest.destroy", st)
		}
		if tpl := st.Pending.OpTemplate; tpl.HostID != "pve1" || tpl.GuestID != "101" || tpl.Op != desired.OpDestroy {
			t.Errorf("op template = %+v", tpl)
		}
		if len(h.ops()) != 0 {
			t.Errorf("executed %v before any approval", h.ops())
		}
		approve("wrong")
	})
	s.at(2*time.Minute, func() {
		if st := queryStatus(t, env); st.Phase != PhasePending || st.Pending == nil || st.Pending.LastRejection != "binding_mismatch" {
			t.Fatalf("after a wrong approval: status %+v, want pending with last rejection binding_mismatch", st)
		}
		approve("good")
	})
	s.at(3*time.Minute, func() {
		if st := queryStatus(t, env); st.Phase != PhaseConverged {
			t.Errorf("phase after approval = %s, want converged", st.Phase)
		}
		env.CancelWorkflow()
	})
	s.run(GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Absent)})

	if got := strings.Join(h.ops(), ","); got != "guest.destroy" {
		t.Errorf("executed %q, want only guest.destroy", got)
	}
	if len(verdicts) != 2 || verdicts[0].Accepted || verdicts[0].Code != "binding_mismatch" || !verdicts[1].Accepted {
		t.Errorf("verdicts = %+v, want binding_mismatch then accepted", verdicts)
	}
}

func TestGuestWorkflowDropsAWaitWhenTheDesiredStateChanges(t *testing.T) {
	h := &fakeHost{guest: desired.Observed{Exists: true, Kind: desired.QEMU, Status: "running", Name: "web", MemoryMiB: 1024, Cores: 2}}
	env := newEnv(t, h)
	s := newSteps(t, env)
	s.at(time.Minute, func() {
		if st := queryStatus(t, env); st.Phase != PhasePending {
			t.Fatalf("phase = %s, want pending", st.Phase)
		}
		env.SignalWorkflow(SignalSetDesired, *spec(desired.Running))
	})
	s.at(2*time.Minute, func() {
		st := queryStatus(t, env)
		if st.Phase != PhaseConverged || st.Pending != nil || st.Generation != 2 {
			t.Errorf("status = %+v, want converged at generation 2 with nothing pending", st)
		}
		env.CancelWorkflow()
	})
	s.run(GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Absent)})
	if len(h.ops()) != 0 {
		t.Errorf("executed %v, want nothing", h.ops())
	}
}

func TestGuestWorkflowRejectsABadSpecByUpdate(t *testing.T) {
	h := &fakeHost{}
	env := newEnv(t, h)
	s := newSteps(t, env)
	var rejected []string
	s.at(time.Minute, func() {
		bad := *spec(desired.Running)
		bad.Memory = "lots"
		env.UpdateWorkflow(UpdateSetDesired, "bad", &testsuite.TestUpdateCallback{
			OnReject: func(err error) {
				rejected = append(rejected, "bad")
				if !strings.Contains(err.Error(), "memory") {
					t.Errorf("rejection %q does not name the field", err)
				}
			},
			OnAccept:   func() { t.Error("bad spec accepted") },
			OnComplete: func(any, error) {},
		}, bad)
		other := *spec(desired.Running)
		other.VMID = 102
		env.UpdateWorkflow(UpdateSetDesired, "other", &testsuite.TestUpdateCallback{
			OnReject:   func(err error) { rejected = append(rejected, "other") },
			OnAccept:   func() { t.Error("spec of another guest accepted") },
			OnComplete: func(any, error) {},
		}, other)
	})
	s.at(2*time.Minute, func() {
		if st := queryStatus(t, env); st.Desired != nil || st.Phase != PhaseWaiting {
			t.Errorf("status = %+v, want still waiting for a desired state", st)
		}
		env.CancelWorkflow()
	})
	s.run(GuestInput{Host: "pve1", VMID: 101})
	if got := strings.Join(rejected, ","); got != "bad,other" {
		t.Errorf("rejected updates: %q, want bad,other", got)
	}
	if len(h.ops()) != 0 {
		t.Errorf("executed %v", h.ops())
	}
}

// A desired state that arrives while a pass is failing is acted on at once,
// not after the failure's retry delay.
func TestGuestWorkflowActsOnADesiredStateThatArrivedDuringAFailedPass(t *testing.T) {
	h := &fakeHost{guest: desired.Observed{Exists: true, Kind: desired.QEMU, Status: "stopped", Name: "web", MemoryMiB: 1024, Cores: 2}, failOp: desired.OpStart}
	env := newEnv(t, h)
	s := newSteps(t, env)
	failed := 0
	h.onFail = func() {
		failed++
		env.SignalWorkflow(SignalSetDesired, *spec(desired.Stopped))
	}
	s.at(time.Minute, func() {
		st := queryStatus(t, env)
		if st.Generation != 2 || st.Phase != PhaseConverged {
			t.Errorf("a minute after the failure: generation %d, phase %s; want the new desired state converged", st.Generation, st.Phase)
		}
		env.CancelWorkflow()
	})
	s.run(GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running)})
	if failed != 1 {
		t.Errorf("the start failed %d times, want once", failed)
	}
}

// A new guest's create step starts it too (versionGuestCreateStarts): one
// activity, two recorded actions. When that start fails, the guest the
// step created is rolled back, as after a start step of its own.
func TestGuestCreateStepStartsTheGuest(t *testing.T) {
	for _, failStart := range []bool{false, true} {
		t.Run(map[bool]string{false: "started", true: "start fails"}[failStart], func(t *testing.T) {
			h := &fakeHost{reports: true}
			if failStart {
				h.failOp = desired.OpStart
			}
			env := newEnv(t, h)
			var activities []string
			env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, _ converter.EncodedValues) {
				activities = append(activities, info.ActivityType.Name)
			})
			env.RegisterDelayedCallback(func() {
				st := queryStatus(t, env)
				var recent []string
				for _, r := range st.Recent {
					recent = append(recent, r.Action.Op+":"+r.Result)
				}
				want, phase := "guest.create:done,guest.start:done", PhaseConverged
				if failStart {
					want, phase = "guest.create:done,guest.start:failed,guest.destroy:compensated", PhaseFailed
				}
				if got := strings.Join(recent, ","); got != want || st.Phase != phase {
					t.Errorf("recent %s, phase %s; want %s, %s", got, st.Phase, want, phase)
				}
				env.CancelWorkflow()
			}, time.Minute)
			env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running)})
			wantCancelled(t, env)
			want := ActivityCreateGuest
			if failStart {
				want += "," + ActivityDestroyGuest
			}
			if got := strings.Join(activities, ","); got != want {
				t.Errorf("activities %s, want %s", got, want)
			}
		})
	}
}
