package workflows

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/workflows/desired"
)

// fakeNode is a host's node for the host workflow: a listing that never
// changes, guest workflows that hold, and the wake-ups it was asked for. It
// models the history length as the server counts it: an activity is three
// events and the workflow task after it three more, a fired timer two.
type fakeNode struct {
	mu      sync.Mutex
	env     *testsuite.TestWorkflowEnvironment
	guests  []GuestSummary
	holding []int
	// published are the desired states the guest workflows publish.
	published map[int]desired.Spec
	passes    int
	wakes     [][]int
	history   int
}

func (n *fakeNode) ListGuests(ctx context.Context, in ListGuestsInput) (ListGuestsResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.passes++
	n.grow(2 + 6) // the timer that started the pass, then the listing
	if in.Drift {
		return JudgeListing(in.Announced, n.published, n.guests, n.holding), nil
	}
	return ListGuestsResult{Guests: n.guests, Holding: n.holding}, nil
}

func (n *fakeNode) WakeGuests(ctx context.Context, in WakeGuestsInput) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.wakes = append(n.wakes, slices.Clone(in.VMIDs))
	n.grow(6)
	return nil
}

func (n *fakeNode) grow(events int) {
	n.history += events
	n.env.SetCurrentHistoryLength(n.history)
}

func newHostEnv(t *testing.T, n *fakeNode) *testsuite.TestWorkflowEnvironment {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(HostWorkflow)
	env.RegisterActivityWithOptions(n.ListGuests, activity.RegisterOptions{Name: ActivityListGuests})
	env.RegisterActivityWithOptions(n.WakeGuests, activity.RegisterOptions{Name: ActivityWakeGuests})
	n.env = env
	return env
}

// drifted24 is a desired set of 24 running guests, all listed stopped.
func drifted24() (map[string]desired.Spec, []GuestSummary) {
	want := map[string]desired.Spec{}
	var have []GuestSummary
	for vmid := 101; vmid <= 124; vmid++ {
		want[strconv.Itoa(vmid)] = desired.Spec{Host: "pve1", VMID: vmid, Kind: desired.QEMU, State: desired.Running, MemoryMiB: 512, Cores: 1}
		have = append(have, GuestSummary{VMID: vmid, Kind: desired.QEMU, Status: "stopped", MemoryMiB: 512, Cores: 1})
	}
	return want, have
}

func queryHostStatus(t *testing.T, env *testsuite.TestWorkflowEnvironment) HostStatus {
	t.Helper()
	v, err := env.QueryWorkflow(QueryHostStatus)
	if err != nil {
		t.Fatal(err)
	}
	var st HostStatus
	if err := v.Get(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func continuedHostInput(t *testing.T, env *testsuite.TestWorkflowEnvironment) (HostInput, bool) {
	t.Helper()
	var can *workflow.ContinueAsNewError
	if err := env.GetWorkflowError(); !asContinueAsNew(err, &can) {
		return HostInput{}, false
	}
	var next HostInput
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); err != nil {
		t.Fatal(err)
	}
	return next, true
}

func asContinueAsNew(err error, can **workflow.ContinueAsNewError) bool {
	for err != nil {
		if c, ok := err.(*workflow.ContinueAsNewError); ok {
			*can = c
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// A host with 24 drifted guests, two of whose workflows wait for a
// signature, wakes the other 22 in one activity per pass, never the two,
// and continues as new when its history reaches its bound, whatever the
// number of passes that took, carrying the desired set, the interval and
// the time of its last pass.
func TestHostWithManyDriftedGuestsContinuesAsNewByHistorySize(t *testing.T) {
	want, have := drifted24()
	for _, bound := range []int{300, 600} {
		t.Run(strconv.Itoa(bound)+" events", func(t *testing.T) {
			n := &fakeNode{guests: have, holding: []int{101, 102}}
			env := newHostEnv(t, n)
			env.RegisterDelayedCallback(env.CancelWorkflow, 24*time.Hour) // a safety net; the run ends long before
			env.ExecuteWorkflow(HostWorkflow, HostInput{Host: "pve1", Interval: time.Minute, Desired: want, MaxHistoryEvents: bound})
			next, ok := continuedHostInput(t, env)
			if !ok {
				t.Fatalf("workflow ended with %v, want continue-as-new", env.GetWorkflowError())
			}
			perPass := 2 + 6 + 6
			if n.history < bound || n.history >= bound+perPass {
				t.Errorf("continued as new at %d events, want within one pass (%d events) past the bound %d", n.history, perPass, bound)
			}
			if wantPasses := (bound + perPass - 1) / perPass; n.passes != wantPasses {
				t.Errorf("%d passes, want %d: the bound is on events", n.passes, wantPasses)
			}
			for i, w := range n.wakes {
				if len(w) != 22 || slices.Contains(w, 101) || slices.Contains(w, 102) {
					t.Fatalf("pass %d woke %v, want the 22 drifted guests that do not hold", i+1, w)
				}
			}
			if v := next.LastVerdict; v == nil || len(v.Managed) != 24 || len(v.Drifted) != 24 || !slices.Equal(v.Holding, []int{101, 102}) {
				t.Errorf("continued with the verdict %+v, want the last pass's: 24 managed and drifted, 101 and 102 holding", v)
			}
			if len(next.Desired) != 24 || next.Interval != time.Minute || next.MaxHistoryEvents != bound || next.LastPass.IsZero() {
				t.Errorf("continued with %d desired guests, interval %s, bound %d, last pass %s",
					len(next.Desired), next.Interval, next.MaxHistoryEvents, next.LastPass)
			}
		})
	}
}

// The server's suggestion to continue as new is honoured as much as the
// bound, and a cancellation, even past the bound, ends the workflow.
func TestHostContinuesAsNewOnSuggestionAndHonoursCancellation(t *testing.T) {
	want, have := drifted24()
	t.Run("suggested", func(t *testing.T) {
		n := &fakeNode{guests: have}
		env := newHostEnv(t, n)
		env.RegisterDelayedCallback(func() { env.SetContinueAsNewSuggested(true) }, 3*time.Minute+30*time.Second)
		env.RegisterDelayedCallback(env.CancelWorkflow, time.Hour)
		env.ExecuteWorkflow(HostWorkflow, HostInput{Host: "pve1", Interval: time.Minute, Desired: want, MaxHistoryEvents: 1 << 30})
		if _, ok := continuedHostInput(t, env); !ok || n.passes != 4 {
			t.Errorf("ended with %v after %d passes, want continue-as-new after 4", env.GetWorkflowError(), n.passes)
		}
	})
	t.Run("cancelled past the bound", func(t *testing.T) {
		n := &fakeNode{guests: have}
		env := newHostEnv(t, n)
		env.RegisterDelayedCallback(func() {
			env.SetCurrentHistoryLength(1 << 20)
			env.CancelWorkflow()
		}, 90*time.Second)
		env.ExecuteWorkflow(HostWorkflow, HostInput{Host: "pve1", Interval: time.Hour, Desired: want, MaxHistoryEvents: 1 << 30})
		if err := env.GetWorkflowError(); !temporal.IsCanceledError(err) {
			t.Errorf("ended with %v, want cancelled", err)
		}
	})
}

// A changed interval, sent by a worker that starts with a new
// configuration, reaches the running workflow: the next pass is due one new
// interval after the last one, not one old interval. Desired-state notices
// change the desired set between passes.
func TestHostTakesItsSettingsAndNoticesWhileRunning(t *testing.T) {
	want, have := drifted24()
	n := &fakeNode{guests: have}
	env := newHostEnv(t, n)
	env.RegisterDelayedCallback(func() {
		if n.passes != 1 {
			t.Errorf("%d passes in the first hour's wait, want 1", n.passes)
		}
		env.SignalWorkflow(SignalConfigure, HostSettings{Interval: time.Minute})
		env.SignalWorkflow(SignalDesiredChanged, DesiredNotice{VMID: 124})
	}, 10*time.Minute)
	env.RegisterDelayedCallback(func() {
		if n.passes != 12 {
			t.Errorf("%d passes 20 minutes in, want 12: one at the start, one when the interval changed at the tenth minute (overdue), then one a minute", n.passes)
		}
		st := queryHostStatus(t, env)
		if st.Interval != time.Minute || len(st.Managed) != 23 || slices.Contains(st.Drifted, 124) {
			t.Errorf("status %+v, want interval 1m and 23 managed guests without 124", st)
		}
		env.CancelWorkflow()
	}, 20*time.Minute+30*time.Second)
	env.ExecuteWorkflow(HostWorkflow, HostInput{Host: "pve1", Interval: time.Hour, Desired: want})
	if err := env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Errorf("ended with %v, want cancelled", err)
	}
}

// Since versionHostFromGuests a pass judges the listing against the desired
// states the guest workflows publish, with no notice sent: a published
// desired state takes precedence over one announced earlier, and a guest
// with neither is unmanaged, reported and never woken.
func TestHostJudgesAgainstPublishedDesiredStates(t *testing.T) {
	want, have := drifted24()
	published := map[int]desired.Spec{}
	for key, spec := range want {
		vmid, _ := strconv.Atoi(key)
		if vmid > 110 {
			published[vmid] = spec
		}
	}
	// 101 was announced running, and its workflow now publishes stopped,
	// as the listing shows it: no drift.
	published[101] = desired.Spec{Host: "pve1", VMID: 101, Kind: desired.QEMU, State: desired.Stopped}
	announced := map[string]desired.Spec{"101": want["101"], "102": want["102"]}
	n := &fakeNode{guests: have, holding: []int{124, 130}, published: published}
	env := newHostEnv(t, n)
	var st HostStatus
	env.RegisterDelayedCallback(func() {
		st = queryHostStatus(t, env)
		env.CancelWorkflow()
	}, 30*time.Second)
	env.ExecuteWorkflow(HostWorkflow, HostInput{Host: "pve1", Interval: time.Minute, Desired: announced})
	if err := env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("ended with %v, want cancelled", err)
	}
	var wantDrifted, wantManaged []int
	wantManaged = append(wantManaged, 101, 102)
	wantDrifted = append(wantDrifted, 102)
	for vmid := 111; vmid <= 124; vmid++ {
		wantManaged = append(wantManaged, vmid)
		wantDrifted = append(wantDrifted, vmid)
	}
	wantUnmanaged := []int{103, 104, 105, 106, 107, 108, 109, 110}
	if !slices.Equal(st.Managed, wantManaged) || !slices.Equal(st.Drifted, wantDrifted) ||
		!slices.Equal(st.Unmanaged, wantUnmanaged) || !slices.Equal(st.Holding, []int{124}) {
		t.Errorf("status managed %v, drifted %v, unmanaged %v, holding %v; want %v, %v, %v, [124]",
			st.Managed, st.Drifted, st.Unmanaged, st.Holding, wantManaged, wantDrifted, wantUnmanaged)
	}
	if len(n.wakes) != 1 || !slices.Equal(n.wakes[0], wantDrifted[:len(wantDrifted)-1]) {
		t.Errorf("woke %v, want once the drifted guests but 124, which holds", n.wakes)
	}
}

// A run continued from another shows the verdict it carried until its own
// first pass.
func TestHostShowsTheCarriedVerdictUntilItsFirstPass(t *testing.T) {
	n := &fakeNode{}
	env := newHostEnv(t, n)
	verdict := &ListGuestsResult{Managed: []int{101, 102}, Drifted: []int{102}, Unmanaged: []int{150}, Holding: []int{101}}
	env.RegisterDelayedCallback(func() {
		st := queryHostStatus(t, env)
		if n.passes != 0 || !slices.Equal(st.Managed, verdict.Managed) || !slices.Equal(st.Drifted, verdict.Drifted) ||
			!slices.Equal(st.Unmanaged, verdict.Unmanaged) || !slices.Equal(st.Holding, verdict.Holding) {
			t.Errorf("after %d passes the status is %+v, want the carried verdict %+v", n.passes, st, *verdict)
		}
		env.CancelWorkflow()
	}, 10*time.Minute)
	start := env.Now()
	env.ExecuteWorkflow(HostWorkflow, HostInput{Host: "pve1", Interval: time.Hour, LastPass: start, LastVerdict: verdict})
	if err := env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Errorf("ended with %v, want cancelled", err)
	}
}
