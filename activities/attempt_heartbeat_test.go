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

// Every attempt heartbeats as it starts with what the previous attempt
// recorded; a new Progress is sent at once, the same one again only as a
// keep-alive, at most every KeepAliveEvery; and every heartbeat keeps the
// attempt's current Progress: one that only says the attempt is alive never
// erases a recorded task.
func TestAttemptHeartbeatsKeepTheRecordedProgress(t *testing.T) {
	recorded := Progress{Phase: "start", UPID: "UPID:pve1:00001:00002:00003:qmstart:101:root@pam:"}
	next := Progress{Phase: "destroy", UPID: "UPID:pve1:00004:00005:00006:qmdestroy:101:root@pam:"}
	tests := []struct {
		name     string
		previous any   // heartbeat details of the previous attempt; nil for a first attempt
		atStart  int   // heartbeats sent before the activity's code runs
		want     []any // heartbeats sent, in order
	}{
		{"first attempt", nil, 1, []any{nil, nil, next, next, next}},
		{"retry of a step that recorded a task", recorded, 1, []any{recorded, recorded, next, next, next}},
		// Details this package cannot read are left to the server as they
		// are until the attempt records its own.
		{"details of another shape", []string{"not", "progress"}, 0, []any{recorded, recorded, next, next, next}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sent := sentHeartbeats(t)
			clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			heartbeatClock = func() time.Time { return clock }
			t.Cleanup(func() { heartbeatClock = time.Now })
			var suite testsuite.WorkflowTestSuite
			env := suite.NewTestActivityEnvironment()
			env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{HeartbeatInterceptor(nil)}})
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
				clock = clock.Add(KeepAliveEvery)
				KeepAlive(ctx) // alive, a while later
				recordProgress(ctx, next)
				recordProgress(ctx, next) // a poll of the same task at once: nothing
				clock = clock.Add(KeepAliveEvery)
				recordProgress(ctx, next) // the same task, a while later
				KeepAlive(ctx)            // right after it: nothing
				clock = clock.Add(KeepAliveEvery)
				KeepAlive(ctx)
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
				t.Errorf("heartbeats %v, want %v", got, tt.want)
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

// A new Progress goes to the server directly as well as through the SDK's
// batch; one whose direct delivery failed (a slow server) is sent again at
// the next recordProgress, even when it is the same Progress.
func TestNewProgressIsDeliveredUntilItArrives(t *testing.T) {
	sent := sentHeartbeats(t)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	heartbeatClock = func() time.Time { return clock }
	t.Cleanup(func() { heartbeatClock = time.Now })
	var delivered []any
	failures := 1
	at := &attemptProgress{known: true, deliver: func(_ context.Context, p Progress) error {
		delivered = append(delivered, p)
		if failures > 0 {
			failures--
			return errors.New("context deadline exceeded")
		}
		return nil
	}}
	ctx := context.WithValue(context.Background(), attemptKey{}, at)
	p := Progress{Phase: "start", UPID: "UPID:pve1:00001:00002:00003:qmstart:101:root@pam:"}

	recordProgress(ctx, p) // new: through the SDK and directly, which fails
	recordProgress(ctx, p) // not delivered yet: both again
	recordProgress(ctx, p) // delivered, within KeepAliveEvery: nothing
	if want := []any{p, p}; !reflect.DeepEqual(delivered, want) || !reflect.DeepEqual(sent(), want) {
		t.Fatalf("delivered %v, sent through the SDK %v; want %v both", delivered, sent(), want)
	}
	clock = clock.Add(KeepAliveEvery)
	recordProgress(ctx, p) // a keep-alive: through the SDK only
	if len(delivered) != 2 || len(sent()) != 3 {
		t.Fatalf("keep-alive: delivered %v, sent %v; want it through the SDK only", delivered, sent())
	}
}
