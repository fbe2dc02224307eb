package workflows

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/workflows/desired"
)

// runningWeb is guest 101 as spec(desired.Running) wants it.
func runningWeb() desired.Observed {
	return desired.Observed{Exists: true, Kind: desired.QEMU, Status: "running", Name: "web", MemoryMiB: 1024, Cores: 2}
}

// continuedInput is the input of the run a workflow continued as new into.
func continuedInput(t *testing.T, env *testsuite.TestWorkflowEnvironment) (GuestInput, bool) {
	t.Helper()
	var can *workflow.ContinueAsNewError
	if err := env.GetWorkflowError(); !errors.As(err, &can) {
		return GuestInput{}, false
	}
	var next GuestInput
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); err != nil {
		t.Fatal(err)
	}
	return next, true
}

// A guest that waits nine days for a signature while something wakes it
// every minute (the host workflow did, about 5,800 events a day) continues
// as new within its history bound, again and again, and every run carries
// the desired state, the generation, the recent actions and the pending
// action with the time it has been pending since. After nine days the
// approval still runs the destroy. The history length is modelled as the
// server counts it: a signal, a workflow task and the marker of the read the
// wake-up asks for, five events, per wake-up.
func TestGuestPendingForNineDaysStaysWithinItsHistoryBound(t *testing.T) {
	const (
		bound          = 2000
		eventsPerWake  = 5
		nineDays       = 9 * 24 * time.Hour
		startingEvents = 12
	)
	h := &fakeHost{guest: runningWeb(), acceptBlob: "good", prov: Provenance{}}
	in := GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Absent), MaxHistoryEvents: bound}
	var (
		elapsed time.Duration
		lastErr error
		runs    int
		since   time.Time
		start   = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	)
	for elapsed < nineDays {
		runs++
		env := newEnv(t, h)
		env.SetStartTime(start.Add(elapsed))
		length := startingEvents
		env.SetCurrentHistoryLength(length)
		runStart := elapsed
		var wake func()
		wake = func() {
			elapsed = runStart + env.Now().Sub(start.Add(runStart))
			if elapsed >= nineDays {
				st := queryStatus(t, env)
				if st.Phase != PhasePending || st.Pending == nil || !st.Pending.Since.Equal(since) {
					t.Errorf("after nine days: phase %s, pending %+v; want the destroy pending since %s", st.Phase, st.Pending, since)
				}
				approveUpdate(t, env, "good", func(v ApprovalVerdict) {
					if !v.Accepted {
						t.Errorf("the approval after nine days: %+v", v)
					}
				})
				env.RegisterDelayedCallback(env.CancelWorkflow, time.Minute)
				return
			}
			if length > bound+2*eventsPerWake {
				t.Errorf("run %d reached %d events without continuing as new (bound %d)", runs, length, bound)
				env.CancelWorkflow()
				return
			}
			length += eventsPerWake
			env.SetCurrentHistoryLength(length)
			env.SignalWorkflow(SignalReconcile, "host listing differs from the desired state")
			env.RegisterDelayedCallback(wake, time.Minute)
		}
		env.RegisterDelayedCallback(func() {
			st := queryStatus(t, env)
			if st.Phase != PhasePending || st.Pending == nil || st.Pending.Action.Op != desired.OpDestroy {
				t.Fatalf("run %d: status %+v, want the destroy pending", runs, st)
			}
			if runs == 1 {
				since = st.Pending.Since
			} else if !st.Pending.Since.Equal(since) {
				t.Errorf("run %d: pending since %s, want %s carried over", runs, st.Pending.Since, since)
			}
			wake()
		}, time.Second)
		env.ExecuteWorkflow(GuestReconcileWorkflow, in)
		next, continued := continuedInput(t, env)
		if !continued {
			lastErr = env.GetWorkflowError()
			break
		}
		if next.Desired == nil || next.Desired.State != desired.Absent || next.Generation != 1 {
			t.Fatalf("run %d continued with desired %+v at generation %d", runs, next.Desired, next.Generation)
		}
		if next.Carry == nil || next.Carry.Pending == nil || next.Carry.Pending.Action.Op != desired.OpDestroy || next.Carry.Phase != PhasePending {
			t.Fatalf("run %d continued without its pending action: %+v", runs, next.Carry)
		}
		in = next
	}
	if elapsed < nineDays {
		t.Fatalf("the workflow ended after %s, before nine days: %v", elapsed, lastErr)
	}
	if runs < 10 {
		t.Errorf("%d runs in nine days; a run holds about %d minutes of wake-ups", runs, bound/eventsPerWake)
	}
	if got := strings.Join(h.ops(), ","); got != desired.OpDestroy {
		t.Errorf("executed %q, want the one approved destroy", got)
	}
}

// The server's suggestion to continue as new is honoured in a wait as much
// as the configured bound.
func TestGuestContinuesAsNewWhenTheServerSuggestsIt(t *testing.T) {
	for _, tt := range []struct {
		name  string
		guest desired.Observed
		state desired.State
		phase string
	}{
		{"converged", runningWeb(), desired.Running, PhaseConverged},
		{"pending a signature", runningWeb(), desired.Absent, PhasePending},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := &fakeHost{guest: tt.guest}
			env := newEnv(t, h)
			env.RegisterDelayedCallback(func() {
				if st := queryStatus(t, env); st.Phase != tt.phase {
					t.Fatalf("phase %s, want %s", st.Phase, tt.phase)
				}
				env.SetContinueAsNewSuggested(true)
				env.SignalWorkflow(SignalReconcile, "wake")
			}, time.Minute)
			env.RegisterDelayedCallback(env.CancelWorkflow, 10*time.Minute)
			env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(tt.state), MaxHistoryEvents: 1 << 30})
			next, ok := continuedInput(t, env)
			if !ok {
				t.Fatalf("workflow ended with %v, want continue-as-new", env.GetWorkflowError())
			}
			if next.Carry == nil || next.Carry.Phase != tt.phase || (tt.phase == PhasePending) != (next.Carry.Pending != nil) {
				t.Errorf("carried %+v, want phase %s", next.Carry, tt.phase)
			}
		})
	}
}

// approveUpdate sends an approval by Update and hands its verdict to check.
func approveUpdate(t *testing.T, env *testsuite.TestWorkflowEnvironment, blob string, check func(ApprovalVerdict)) {
	env.UpdateWorkflow(UpdateApprove, "", &testsuite.TestUpdateCallback{
		OnReject: func(err error) { t.Errorf("approval %s refused: %v", blob, err) },
		OnAccept: func() {},
		OnComplete: func(v any, err error) {
			if err != nil {
				t.Errorf("approval %s: %v", blob, err)
				return
			}
			check(v.(ApprovalVerdict))
		},
	}, Approval{Blob: blob, Signature: "sig"})
}

// setDesiredUpdate sends a desired state by Update and hands the accepted
// generation to check.
func setDesiredUpdate(t *testing.T, env *testsuite.TestWorkflowEnvironment, s desired.Spec, check func(int)) {
	env.UpdateWorkflow(UpdateSetDesired, "", &testsuite.TestUpdateCallback{
		OnReject: func(err error) { t.Errorf("desired state refused: %v", err) },
		OnAccept: func() {},
		OnComplete: func(v any, err error) {
			if err != nil {
				t.Errorf("set-desired: %v", err)
				return
			}
			check(v.(SetDesiredResult).Generation)
		},
	}, s)
}

// Sending the desired state a guest already has changes nothing: no new
// generation, no pass, no notice to the host workflow, and the action
// waiting for a signature keeps waiting, so that an approval sent in the
// same moment is tried, not refused as NotPending.
func TestGuestSameDesiredStateChangesNothing(t *testing.T) {
	t.Run("converged", func(t *testing.T) {
		h := &fakeHost{guest: runningWeb()}
		env := newEnv(t, h)
		var reads, announced int
		env.RegisterDelayedCallback(func() {
			if st := queryStatus(t, env); st.Phase != PhaseConverged || st.Generation != 1 {
				t.Fatalf("status %+v, want converged at generation 1", st)
			}
			reads, announced = h.reads, h.announced
			setDesiredUpdate(t, env, *spec(desired.Running), func(gen int) {
				if gen != 1 {
					t.Errorf("the same spec was accepted as generation %d, want 1", gen)
				}
			})
			env.SignalWorkflow(SignalSetDesired, *spec(desired.Running))
		}, time.Minute)
		env.RegisterDelayedCallback(func() {
			st := queryStatus(t, env)
			if st.Generation != 1 || st.Phase != PhaseConverged {
				t.Errorf("status %+v, want converged at generation 1", st)
			}
			if h.reads != reads || h.announced != announced {
				t.Errorf("the same spec made %d reads and %d notices to the host workflow, want none", h.reads-reads, h.announced-announced)
			}
			env.CancelWorkflow()
		}, 2*time.Minute)
		env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running)})
		wantCancelled(t, env)
	})
	t.Run("pending", func(t *testing.T) {
		h := &fakeHost{guest: runningWeb(), acceptBlob: "good"}
		env := newEnv(t, h)
		var since time.Time
		env.RegisterDelayedCallback(func() {
			st := queryStatus(t, env)
			if st.Phase != PhasePending {
				t.Fatalf("phase %s, want pending", st.Phase)
			}
			since = st.Pending.Since
			setDesiredUpdate(t, env, *spec(desired.Absent), func(gen int) {
				if gen != 1 {
					t.Errorf("the same spec was accepted as generation %d, want 1", gen)
				}
			})
		}, time.Minute)
		env.RegisterDelayedCallback(func() {
			if st := queryStatus(t, env); st.Pending == nil || !st.Pending.Since.Equal(since) {
				t.Fatalf("the same spec dropped the pending wait: %+v", st.Pending)
			}
			setDesiredUpdate(t, env, *spec(desired.Absent), func(int) {})
			approveUpdate(t, env, "good", func(v ApprovalVerdict) {
				if !v.Accepted {
					t.Errorf("approval sent with the same spec: %+v, want accepted", v)
				}
			})
		}, 2*time.Minute)
		env.RegisterDelayedCallback(func() {
			if st := queryStatus(t, env); st.Phase != PhaseConverged {
				t.Errorf("phase %s after the approval, want converged", st.Phase)
			}
			env.CancelWorkflow()
		}, 3*time.Minute)
		env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Absent)})
		wantCancelled(t, env)
		if got := strings.Join(h.ops(), ","); got != desired.OpDestroy {
			t.Errorf("executed %q, want the approved destroy", got)
		}
	})
}

// A changed desired state arriving with an approval ends the wait: the
// approval was signed for what is no longer wanted and is answered as
// superseded, never tried. (The desired state is sent without a workflow
// task of its own, so that both are taken in one.)
func TestGuestApprovalWithAChangedDesiredStateIsSuperseded(t *testing.T) {
	h := &fakeHost{guest: runningWeb(), acceptBlob: "good"}
	env := newEnv(t, h)
	env.RegisterDelayedCallback(func() {
		if st := queryStatus(t, env); st.Phase != PhasePending {
			t.Fatalf("phase %s, want pending", st.Phase)
		}
		env.SignalWorkflowSkippingWorkflowTask(SignalSetDesired, *spec(desired.Running))
		approveUpdate(t, env, "good", func(v ApprovalVerdict) {
			if v.Accepted || v.Code != "superseded" {
				t.Errorf("verdict %+v, want superseded", v)
			}
		})
	}, time.Minute)
	env.RegisterDelayedCallback(func() {
		if st := queryStatus(t, env); st.Phase != PhaseConverged || st.Pending != nil || st.Generation != 2 {
			t.Errorf("status %+v, want converged at generation 2 with nothing pending", st)
		}
		env.CancelWorkflow()
	}, 2*time.Minute)
	env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Absent)})
	wantCancelled(t, env)
	if ops := h.ops(); len(ops) != 0 {
		t.Errorf("executed %v, want nothing", ops)
	}
}

// A reconcile while an action waits for a signature reads the guest again:
// still wanted, the action stays pending since the same time; an approval
// that came with the reconcile is tried first, not dropped. Once the guest
// is gone, the next reconcile finds nothing to do.
func TestGuestReconcileWhileHeldPlansAgain(t *testing.T) {
	h := &fakeHost{guest: runningWeb(), acceptBlob: "good"}
	env := newEnv(t, h)
	var since time.Time
	var reads int
	env.RegisterDelayedCallback(func() {
		st := queryStatus(t, env)
		if st.Phase != PhasePending || st.Pending == nil {
			t.Fatalf("status %+v, want the destroy pending", st)
		}
		since, reads = st.Pending.Since, h.reads
		env.SignalWorkflow(SignalReconcile, "look again")
	}, time.Minute)
	env.RegisterDelayedCallback(func() {
		st := queryStatus(t, env)
		if h.reads != reads+1 || st.Phase != PhasePending || st.Pending == nil || !st.Pending.Since.Equal(since) {
			t.Errorf("after a reconcile: %d reads, status %+v; want one read and the destroy pending since %s", h.reads-reads, st, since)
		}
		env.SignalWorkflowSkippingWorkflowTask(SignalReconcile, "and again")
		approveUpdate(t, env, "good", func(v ApprovalVerdict) {
			if !v.Accepted {
				t.Errorf("the approval sent with a reconcile: %+v, want accepted", v)
			}
		})
	}, 2*time.Minute)
	env.RegisterDelayedCallback(func() {
		if st := queryStatus(t, env); st.Phase != PhaseConverged || st.Pending != nil {
			t.Errorf("status %+v, want converged with nothing pending", st)
		}
		env.CancelWorkflow()
	}, 3*time.Minute)
	env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Absent)})
	wantCancelled(t, env)
	if got := strings.Join(h.ops(), ","); got != desired.OpDestroy {
		t.Errorf("executed %q, want the one approved destroy", got)
	}
}

// A cancelled workflow stops where it is: a create whose start is cancelled
// is not rolled back, and a cancellation that comes when the history is
// past its bound ends the workflow instead of continuing it as new.
func TestGuestCancellationIsHonoured(t *testing.T) {
	for _, tt := range []struct {
		name        string
		longHistory bool
	}{
		{"during a pass", false},
		{"during a pass, past the history bound", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := &fakeHost{blockStart: true}
			env := newEnv(t, h)
			// The start runs in the create's step (versionGuestCreateStarts).
			h.onStart = func() {
				if tt.longHistory {
					env.SetCurrentHistoryLength(1 << 20)
				}
				env.CancelWorkflow()
			}
			env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running)})
			if err := env.GetWorkflowError(); !temporal.IsCanceledError(err) {
				t.Fatalf("workflow ended with %v, want cancelled", err)
			}
			if got := strings.Join(h.ops(), ","); got != desired.OpCreate {
				t.Errorf("executed %q, want only the create: nothing is rolled back on a cancel", got)
			}
		})
	}
}

// A failed pass is tried again at its retry time, read from a timer of the
// loop (no goroutine): not before, and not only at the hourly resync.
func TestGuestFailedPassIsRetriedAtItsRetryTime(t *testing.T) {
	stopped := runningWeb()
	stopped.Status = "stopped"
	h := &fakeHost{guest: stopped, failOp: desired.OpStart}
	env := newEnv(t, h)
	var readsAfterFailure int
	env.RegisterDelayedCallback(func() {
		st := queryStatus(t, env)
		if st.Phase != PhaseFailed {
			t.Fatalf("phase %s, want failed", st.Phase)
		}
		if want := env.Now().Add(-time.Minute).Add(3 * time.Minute); st.NextPass.After(want) || st.NextPass.Before(want.Add(-time.Second)) {
			t.Errorf("next pass at %s, want about %s", st.NextPass, want)
		}
		readsAfterFailure = h.reads
	}, time.Minute)
	env.RegisterDelayedCallback(func() {
		if h.reads != readsAfterFailure {
			t.Errorf("read %d times before the retry time", h.reads-readsAfterFailure)
		}
		h.mu.Lock()
		h.failOp = ""
		h.mu.Unlock()
	}, 3*time.Minute-time.Second)
	env.RegisterDelayedCallback(func() {
		if st := queryStatus(t, env); st.Phase != PhaseConverged {
			t.Errorf("phase %s after the retry time, want converged", st.Phase)
		}
		env.CancelWorkflow()
	}, 3*time.Minute+time.Second)
	env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running), RetryEvery: 3 * time.Minute})
	wantCancelled(t, env)
}

// An approved destroy that meets a lock (a backup runs) is retried until
// the lock goes away, and the approval it came with is what every attempt
// carries. (The SDK's test environment caps unlimited retries at ten
// attempts; TestApprovedStepsAreBoundedByTimeNotAttempts checks the policy
// itself, and tests/ a retry past the approval's expiry on a real server.)
func TestGuestApprovedStepIsRetriedWithItsApproval(t *testing.T) {
	h := &fakeHost{guest: runningWeb(), acceptBlob: "good"}
	env := newEnv(t, h)
	env.RegisterDelayedCallback(func() {
		h.mu.Lock()
		h.lockedFor = 8
		h.mu.Unlock()
		approveUpdate(t, env, "good", func(v ApprovalVerdict) {
			if !v.Accepted || v.Code != "" {
				t.Errorf("verdict %+v, want accepted", v)
			}
		})
	}, time.Minute)
	env.RegisterDelayedCallback(func() {
		if st := queryStatus(t, env); st.Phase != PhaseConverged {
			t.Errorf("phase %s, want converged after the lock went away", st.Phase)
		}
		env.CancelWorkflow()
	}, time.Hour)
	env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Absent)})
	wantCancelled(t, env)
	if n := h.attempts[desired.OpDestroy]; n != 9 {
		t.Errorf("destroy attempted %d times, want 9", n)
	}
	if got := strings.Join(h.ops(), ","); got != desired.OpDestroy {
		t.Errorf("executed %q, want the destroy", got)
	}
}

// An approved step, or a signed job, is bounded by ApprovedStepTimeout, not
// by a number of attempts: twenty attempts capped at a minute apart used up
// an approval in fifteen minutes of Proxmox being locked or away.
func TestApprovedStepsAreBoundedByTimeNotAttempts(t *testing.T) {
	ap := &Approval{Blob: "b", Signature: "s"}
	actions := []desired.Action{
		{Op: desired.OpDestroy, Host: "pve1", Guest: "101", Params: map[string]any{"kind": "qemu"}},
		{Op: desired.OpDetach, Host: "pve1", Guest: "101", Params: map[string]any{"disk": "scsi1"}},
		{Op: "guest.restore", Host: "pve1", Guest: "101", Params: map[string]any{"archive": "local:backup/x"}},
		{Op: "volume.wipe", Host: "pve1", Guest: "101", Params: map[string]any{"volume": "local-lvm:vm-101-disk-1"}},
	}
	for _, a := range actions {
		s, err := stepFor(a, ap)
		if err != nil {
			t.Fatalf("%s: %v", a.Op, err)
		}
		p := s.options.RetryPolicy
		if p == nil || p.MaximumAttempts != 0 || s.options.ScheduleToCloseTimeout < time.Hour {
			t.Errorf("%s: retry policy %+v, schedule-to-close %s; want no attempt limit and hours", a.Op, p, s.options.ScheduleToCloseTimeout)
		}
		if s.options.HeartbeatTimeout != HeartbeatTimeout {
			t.Errorf("%s: heartbeat timeout %s, want %s", a.Op, s.options.HeartbeatTimeout, HeartbeatTimeout)
		}
	}
}

// A disk larger than the spec is a note, not a step waiting forever for a
// signature: the steps beside it run and the guest ends in conflict, with
// the note shown.
func TestGuestRunsTheStepsBesideADiskItCannotShrink(t *testing.T) {
	g := runningWeb()
	g.Disks = map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=32G"}
	h := &fakeHost{guest: g}
	env := newEnv(t, h)
	s := spec(desired.Running)
	s.Cores = 4
	s.Disks = map[string]string{"scsi0": "local-lvm:16"}
	env.RegisterDelayedCallback(func() {
		st := queryStatus(t, env)
		if st.Phase != PhaseConflict || st.Pending != nil || !strings.Contains(st.LastError, "cannot shrink") {
			t.Errorf("status %+v, want conflict naming the disk", st)
		}
		env.CancelWorkflow()
	}, time.Minute)
	env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: s})
	wantCancelled(t, env)
	if got := strings.Join(h.ops(), ","); got != desired.OpConfig || h.guest.Cores != 4 {
		t.Errorf("executed %q (cores %d), want the config change to 4 cores", got, h.guest.Cores)
	}
}

// A guest workflow started by a wake-up (the host's Signal-With-Start) has
// no desired state: it waits for one, however often it is woken, and acts
// on it when it comes.
func TestGuestWokenWithoutADesiredStateWaitsForOne(t *testing.T) {
	h := &fakeHost{guest: runningWeb()}
	env := newEnv(t, h)
	env.RegisterDelayedCallback(func() {
		env.SignalWorkflow(SignalReconcile, "host listing differs from the desired state")
		env.SignalWorkflow(SignalReconcile, "again")
	}, time.Minute)
	env.RegisterDelayedCallback(func() {
		if st := queryStatus(t, env); st.Phase != PhaseWaiting || h.reads != 0 {
			t.Errorf("phase %s after %d reads, want waiting for a desired state without reading", st.Phase, h.reads)
		}
		env.SignalWorkflow(SignalSetDesired, *spec(desired.Running))
	}, 2*time.Minute)
	env.RegisterDelayedCallback(func() {
		if st := queryStatus(t, env); st.Phase != PhaseConverged {
			t.Errorf("phase %s, want converged", st.Phase)
		}
		env.CancelWorkflow()
	}, 3*time.Minute)
	env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101})
	wantCancelled(t, env)
}

// wantCancelled fails the test unless the workflow ended by the test's
// cancellation: a panic (a wait that never yields is one) or a failure
// would otherwise go unnoticed.
func wantCancelled(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
	t.Helper()
	if err := env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Errorf("workflow ended with %v, want cancelled", err)
	}
}

// runJobUpdate hands a signed job to the guest workflow and hands its
// outcome to check.
func runJobUpdate(t *testing.T, env *testsuite.TestWorkflowEnvironment, job SignedJobInput, check func(ExecuteResult, error)) {
	env.UpdateWorkflow(UpdateRunJob, "", &testsuite.TestUpdateCallback{
		OnReject: func(err error) { check(ExecuteResult{}, err) },
		OnAccept: func() {},
		OnComplete: func(v any, err error) {
			res, _ := v.(ExecuteResult)
			check(res, err)
		},
	}, job)
}

func destroyJob(blob string) SignedJobInput {
	return SignedJobInput{Host: "pve1", Action: desired.Action{Op: desired.OpDestroy, Host: "pve1", Guest: "101",
		Params: map[string]any{"kind": "qemu"}, Destructive: true}, Approval: Approval{Blob: blob, Signature: "sig"}}
}

// A signed destroy job runs through the guest's workflow: it ends a wait
// for a signature (whose approvals are answered as superseded), runs between
// two passes, and leaves the guest desired absent, so that nothing re-creates
// it; the host workflow is told.
func TestGuestRunsASignedDestroyJobAndThenDesiresAbsent(t *testing.T) {
	h := &fakeHost{guest: runningWeb(), acceptBlob: "job"}
	env := newEnv(t, h)
	var announced int
	env.RegisterDelayedCallback(func() {
		// The guest waits for a signature on a detach its spec asks for.
		if st := queryStatus(t, env); st.Phase != PhasePending {
			t.Fatalf("phase %s, want pending", st.Phase)
		}
		announced = h.announced
		runJobUpdate(t, env, destroyJob("job"), func(res ExecuteResult, err error) {
			if err != nil || res.Detail == "" {
				t.Errorf("destroy job: %+v, %v", res, err)
			}
		})
	}, time.Minute)
	env.RegisterDelayedCallback(func() {
		st := queryStatus(t, env)
		if st.Desired == nil || st.Desired.State != desired.Absent || st.Generation != 2 {
			t.Errorf("desired %+v at generation %d, want absent at generation 2", st.Desired, st.Generation)
		}
		if st.Phase != PhaseConverged || st.Pending != nil {
			t.Errorf("status %+v, want converged with nothing pending", st)
		}
		if h.announced != announced+1 || h.published.State != desired.Absent {
			t.Errorf("the host workflow was told %d times, last of %+v, want once, of absent", h.announced-announced, h.published)
		}
		env.CancelWorkflow()
	}, 2*time.Minute)
	g := runningWeb()
	g.Disks = map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G", "scsi1": "local-lvm:vm-101-disk-1,size=8G"}
	h.guest = g
	s := spec(desired.Running)
	s.Disks = map[string]string{"scsi0": "local-lvm:8"}
	env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: s})
	wantCancelled(t, env)
	if got := strings.Join(h.ops(), ","); got != desired.OpDestroy {
		t.Errorf("executed %q, want only the job's destroy", got)
	}
}

// A refused job is answered with the host's code; a job for another guest,
// or one that is not a guest job, is refused before it is queued.
func TestGuestJobRefusals(t *testing.T) {
	h := &fakeHost{guest: runningWeb(), acceptBlob: "job"}
	env := newEnv(t, h)
	other := destroyJob("job")
	other.Action.Guest = "102"
	rotate := destroyJob("job")
	rotate.Action.Op = "signers.rotate"
	env.RegisterDelayedCallback(func() {
		runJobUpdate(t, env, destroyJob("forged"), func(_ ExecuteResult, err error) {
			if code, _ := rejection(err); code != "binding_mismatch" {
				t.Errorf("forged job: %v, want a binding_mismatch rejection", err)
			}
		})
		for _, job := range []SignedJobInput{other, rotate} {
			runJobUpdate(t, env, job, func(_ ExecuteResult, err error) {
				var appErr *temporal.ApplicationError
				if !errors.As(err, &appErr) || appErr.Type() != ErrTypeInvalidJob {
					t.Errorf("job %s on %s: %v, want %s", job.Action.Op, job.Action.Guest, err, ErrTypeInvalidJob)
				}
			})
		}
	}, time.Minute)
	env.RegisterDelayedCallback(func() {
		if st := queryStatus(t, env); st.Phase != PhaseConverged || st.Desired.State != desired.Running {
			t.Errorf("status %+v, want converged and still desired running", st)
		}
		env.CancelWorkflow()
	}, 2*time.Minute)
	env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running)})
	wantCancelled(t, env)
	if ops := h.ops(); len(ops) != 0 {
		t.Errorf("executed %v, want nothing", ops)
	}
}

// A converged guest is not read again on a timer of its own: the host
// workflow wakes it when it drifts. An explicit ResyncEvery still reads it
// at that interval, and an hour (what runs before versionGuestCost carried
// into their continued input) counts as none.
func TestGuestIsReadAgainOnlyWhenWokenOrAsked(t *testing.T) {
	for _, tc := range []struct {
		name   string
		resync time.Duration
		reads  int // in ten hours after converging
	}{
		{"default", 0, 0},
		{"carried hour", time.Hour, 0},
		{"every two hours", 2 * time.Hour, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &fakeHost{guest: runningWeb()}
			env := newEnv(t, h)
			var converged int
			env.RegisterDelayedCallback(func() {
				if st := queryStatus(t, env); st.Phase != PhaseConverged {
					t.Fatalf("phase %s, want converged", st.Phase)
				}
				converged = h.reads
			}, time.Minute)
			env.RegisterDelayedCallback(func() {
				if got := h.reads - converged; got != tc.reads {
					t.Errorf("read %d times in ten hours, want %d", got, tc.reads)
				}
				env.SignalWorkflow(SignalReconcile, "the host saw drift")
			}, 10*time.Hour+time.Minute)
			env.RegisterDelayedCallback(func() {
				if got := h.reads - converged; got != tc.reads+1 {
					t.Errorf("read %d times after a wake-up, want %d", got, tc.reads+1)
				}
				env.CancelWorkflow()
			}, 10*time.Hour+2*time.Minute)
			env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running), ResyncEvery: tc.resync})
			wantCancelled(t, env)
		})
	}
}

// A pass whose steps all say how they left the guest plans against that:
// a new guest is read once, created and started, and known converged
// without a second read. Each step gets what the one before learnt. Steps
// that do not say leave it to a second pass, which reads.
func TestGuestStepsTellTheNextWhatTheyLeft(t *testing.T) {
	for _, reports := range []bool{true, false} {
		t.Run(map[bool]string{true: "reported", false: "unreported"}[reports], func(t *testing.T) {
			h := &fakeHost{reports: reports}
			env := newEnv(t, h)
			env.RegisterDelayedCallback(func() {
				st := queryStatus(t, env)
				if st.Phase != PhaseConverged || st.Observed == nil || st.Observed.Status != "running" {
					t.Errorf("status %+v, want converged and running", st)
				}
				wantReads := map[bool]int{true: 1, false: 2}[reports]
				if h.reads != wantReads {
					t.Errorf("%d reads, want %d", h.reads, wantReads)
				}
				wantHints := "observe:expect-absent,create:expect-absent"
				if reports {
					wantHints += ",start:qemu/stopped"
				}
				if got := strings.Join(h.hints, ","); got != wantHints {
					t.Errorf("hints %s, want %s", got, wantHints)
				}
				env.CancelWorkflow()
			}, time.Minute)
			env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running)})
			wantCancelled(t, env)
			if got := strings.Join(h.ops(), ","); got != "guest.create,guest.start" {
				t.Errorf("executed %s, want create and start", got)
			}
		})
	}
}

// Since versionGuestDesiredMemo a guest publishes its desired state in its
// memo, once per desired state, and no read carries a notice for the host
// workflow.
func TestGuestPublishesItsDesiredStateInItsMemo(t *testing.T) {
	h := &fakeHost{guest: runningWeb()}
	env := newEnv(t, h)
	env.RegisterDelayedCallback(func() {
		if h.announced != 1 || h.published.State != desired.Running || h.published.VMID != 101 {
			t.Errorf("memo told the host %d times, last of %+v, want once, of running", h.announced, h.published)
		}
		env.SignalWorkflow(SignalSetDesired, *spec(desired.Stopped))
	}, time.Minute)
	env.RegisterDelayedCallback(func() {
		if st := queryStatus(t, env); st.Phase != PhaseConverged || st.Generation != 2 {
			t.Errorf("status %+v, want converged at generation 2", st)
		}
		if h.announced != 2 || h.published.State != desired.Stopped {
			t.Errorf("memo told the host %d times, last of %+v, want twice, last of stopped", h.announced, h.published)
		}
		if h.readNotices != 0 {
			t.Errorf("%d reads carried a notice for the host workflow, want none", h.readNotices)
		}
		env.CancelWorkflow()
	}, 2*time.Minute)
	env.ExecuteWorkflow(GuestReconcileWorkflow, GuestInput{Host: "pve1", VMID: 101, Desired: spec(desired.Running)})
	wantCancelled(t, env)
}
