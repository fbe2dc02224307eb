package activities

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
)

// sentHeartbeats replaces recordHeartbeat for the test and returns what is
// sent: one entry per heartbeat, its details (nil for none).
func sentHeartbeats(t *testing.T) func() []any {
	var (
		mu   sync.Mutex
		sent []any
	)
	orig := recordHeartbeat
	recordHeartbeat = func(ctx context.Context, details ...any) {
		mu.Lock()
		defer mu.Unlock()
		var d any
		if len(details) > 0 {
			d = details[0]
		}
		sent = append(sent, d)
	}
	t.Cleanup(func() { recordHeartbeat = orig })
	return func() []any {
		mu.Lock()
		defer mu.Unlock()
		return append([]any(nil), sent...)
	}
}

// A retry heartbeats as it starts with what the previous attempt recorded
// (a first attempt has nothing to keep, and its heartbeat timeout has just
// begun); a new Progress is sent at once, the same one again only as a
// keep-alive, at most every KeepAliveEvery; and every heartbeat keeps the
// attempt's current Progress: one that only says the attempt is alive never
// erases a recorded task. With a direct path to the server, a new Progress
// goes only there until the SDK has been handed a heartbeat, then through
// both.
func TestAttemptHeartbeatsKeepTheRecordedProgress(t *testing.T) {
	recorded := Progress{Phase: "start", UPID: "UPID:pve1:00001:00002:00003:qmstart:101:root@pam:"}
	next := Progress{Phase: "destroy", UPID: "UPID:pve1:00004:00005:00006:qmdestroy:101:root@pam:"}
	later := Progress{Phase: "destroy", UPID: "UPID:pve1:00007:00008:00009:qmdestroy:101:root@pam:"}
	tests := []struct {
		name     string
		previous any   // heartbeat details of the previous attempt; nil for a first attempt
		direct   bool  // the interceptor has a client
		atStart  int   // heartbeats sent before the activity's code runs
		want     []any // heartbeats sent through the SDK, in order
		direct1  []any // sent straight to the server, in order
	}{
		{"first attempt", nil, false, 0, []any{next, next, next, later}, nil},
		{"retry of a step that recorded a task", recorded, false, 1, []any{recorded, next, next, next, later}, nil},
		// Details this package cannot read are left to the server as they
		// are until the attempt records its own.
		{"details of another shape", []string{"not", "progress"}, false, 0, []any{recorded, next, next, next, later}, nil},
		// The first Progress is one write; the keep-alive is the SDK's
		// first heartbeat, and from then on a new Progress goes both ways.
		{"first attempt with a client", nil, true, 0, []any{next, next, later}, []any{next, later}},
		{"retry with a client", recorded, true, 1, []any{recorded, next, next, next, later}, []any{next, later}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sent := sentHeartbeats(t)
			clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			heartbeatClock = func() time.Time { return clock }
			t.Cleanup(func() { heartbeatClock = time.Now })
			var direct []any
			hb := &heartbeatInterceptor{}
			if tt.direct {
				hb.deliver = func(_ context.Context, p Progress) error { direct = append(direct, p); return nil }
			}
			var suite testsuite.WorkflowTestSuite
			env := suite.NewTestActivityEnvironment()
			env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{hb}})
			if tt.previous != nil {
				env.SetHeartbeatDetails(tt.previous)
			}
			var atStart int
			step := func(ctx context.Context) error {
				atStart = len(sent())
				KeepAlive(ctx) // just after the start: nothing to add
				if tt.previous != nil {
					// The previous attempt's task, resumed: the same Progress
					// is a keep-alive; it goes (as the first real one) only
					// when the details could not be kept.
					recordProgress(ctx, recorded)
				}
				recordProgress(ctx, next) // a new task, at once
				recordProgress(ctx, next) // a poll of the same task at once: nothing
				clock = clock.Add(KeepAliveEvery)
				KeepAlive(ctx)            // alive, a while later
				recordProgress(ctx, next) // the same task, right after: nothing
				clock = clock.Add(KeepAliveEvery)
				recordProgress(ctx, next) // the same task, a while later
				KeepAlive(ctx)            // right after it: nothing
				recordProgress(ctx, later)
				return nil
			}
			env.RegisterActivity(step)
			if _, err := env.ExecuteActivity(step); err != nil {
				t.Fatal(err)
			}
			if atStart != tt.atStart {
				t.Errorf("%d heartbeats before the activity ran, want %d", atStart, tt.atStart)
			}
			if got := sent(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("heartbeats through the SDK %v, want %v", got, tt.want)
			}
			if !reflect.DeepEqual(direct, tt.direct1) {
				t.Errorf("heartbeats straight to the server %v, want %v", direct, tt.direct1)
			}
		})
	}
}

// Without the interceptor (as in the activity tests), KeepAlive sends
// nothing: it could not tell which details to keep.
func TestKeepAliveOutsideAnInterceptedAttemptSendsNothing(t *testing.T) {
	sent := sentHeartbeats(t)
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.SetHeartbeatDetails(Progress{Phase: "start", UPID: "UPID:pve1:1:2:3:qmstart:101:root@pam:"})
	step := func(ctx context.Context) error { KeepAlive(ctx); return nil }
	env.RegisterActivity(step)
	if _, err := env.ExecuteActivity(step); err != nil {
		t.Fatal(err)
	}
	KeepAlive(context.Background())
	if got := sent(); len(got) != 0 {
		t.Fatalf("heartbeats %v, want none", got)
	}
}

// A new Progress goes straight to the server; one whose delivery failed (a
// slow server) is sent again at the next recordProgress, even when it is the
// same Progress. A keep-alive goes through the SDK, and a new Progress after
// it both ways.
func TestNewProgressIsDeliveredUntilItArrives(t *testing.T) {
	sent := sentHeartbeats(t)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	heartbeatClock = func() time.Time { return clock }
	t.Cleanup(func() { heartbeatClock = time.Now })
	var delivered []any
	failures := 1
	at := &attemptProgress{known: true, sent: clock, deliver: func(_ context.Context, p Progress) error {
		delivered = append(delivered, p)
		if failures > 0 {
			failures--
			return errors.New("context deadline exceeded")
		}
		return nil
	}}
	ctx := context.WithValue(context.Background(), attemptKey{}, at)
	p := Progress{Phase: "start", UPID: "UPID:pve1:00001:00002:00003:qmstart:101:root@pam:"}
	q := Progress{Phase: "start", UPID: "UPID:pve1:00004:00005:00006:qmstart:101:root@pam:"}

	recordProgress(ctx, p) // new: straight to the server, which fails
	recordProgress(ctx, p) // not delivered yet: again
	recordProgress(ctx, p) // delivered, within KeepAliveEvery: nothing
	if want := []any{p, p}; !reflect.DeepEqual(delivered, want) || len(sent()) != 0 {
		t.Fatalf("delivered %v, sent through the SDK %v; want %v delivered, none through the SDK", delivered, sent(), want)
	}
	clock = clock.Add(KeepAliveEvery)
	recordProgress(ctx, p) // a keep-alive: through the SDK only
	if want := []any{p}; len(delivered) != 2 || !reflect.DeepEqual(sent(), want) {
		t.Fatalf("keep-alive: delivered %v, sent %v; want it through the SDK only", delivered, sent())
	}
	recordProgress(ctx, q) // new, with the SDK's batch open: both ways
	if want := []any{p, p, q}; !reflect.DeepEqual(delivered, want) || !reflect.DeepEqual(sent(), []any{p, q}) {
		t.Fatalf("after the keep-alive: delivered %v, sent through the SDK %v; want %v and [%v %v]", delivered, sent(), want, p, q)
	}
}
