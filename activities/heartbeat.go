package activities

import (
	"context"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/interceptor"
)

// Heartbeats of an attempt.
//
// Temporal times an attempt out when it has not heartbeaten for the
// activity's HeartbeatTimeout, and starts the next attempt beside it if the
// first is only slow. So an attempt heartbeats as it starts, before Proxmox
// requests (pveclient calls KeepAlive), while a request waits for one of the
// host's request slots, and while it waits on a task; the Proxmox client's
// timeout is kept below the heartbeat timeout (worker/config.go), so no
// single request outlasts it.
//
// A heartbeat replaces the details the server holds: a mutating step's
// Progress names the Proxmox task a retry resumes. Every heartbeat therefore
// sends the attempt's current Progress: the previous attempt's until this
// attempt records its own. A new Progress is sent at once (the worker does
// not hold heartbeats back, see worker.HeartbeatThrottle), so that the
// server knows a task's UPID before the task is first polled; a heartbeat
// that only says the attempt is alive is sent at most every KeepAliveEvery.

// KeepAliveEvery is the least time between two heartbeats that repeat the
// same Progress: well within any step's heartbeat timeout, few enough for
// the server.
const KeepAliveEvery = 10 * time.Second

// attemptProgress is the Progress the running attempt heartbeats with.
type attemptProgress struct {
	mu    sync.Mutex
	p     Progress
	known bool // false: the previous attempt's details could not be read; do not overwrite them
	sent  time.Time
	// returned is when the last heartbeat call returned, on the wall clock.
	returned time.Time
}

// HeartbeatBatchWindow is how long after a heartbeat the next one waits at
// most before it is sent when it carries a new Progress. The SDK holds a
// heartbeat back, and sends it later from a goroutine of its own, when it
// comes within its throttle interval of the one before (the worker sets it
// to worker.HeartbeatThrottle, which must stay below this window); a new
// Progress names a task a retry must find, so it waits out that interval
// instead and is sent before the task is first polled. A step that posts
// right after the attempt's first heartbeat waits a few milliseconds.
const HeartbeatBatchWindow = 5 * time.Millisecond

type attemptKey struct{}

// recordHeartbeat sends a heartbeat, and heartbeatClock tells the time;
// tests replace them.
var (
	recordHeartbeat = activity.RecordHeartbeat
	heartbeatClock  = time.Now
)

// HeartbeatInterceptor makes every activity attempt heartbeat as soon as it
// starts, with the details the previous attempt recorded, and lets
// KeepAlive heartbeat during the attempt without losing them. Register it
// in the worker's options.
func HeartbeatInterceptor() interceptor.WorkerInterceptor { return &heartbeatInterceptor{} }

type heartbeatInterceptor struct {
	interceptor.WorkerInterceptorBase
}

func (*heartbeatInterceptor) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &heartbeatInbound{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}}
}

type heartbeatInbound struct {
	interceptor.ActivityInboundInterceptorBase
}

func (i *heartbeatInbound) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	return i.Next.ExecuteActivity(startAttempt(ctx), in)
}

// startAttempt heartbeats once with the previous attempt's details and
// returns ctx carrying them for KeepAlive and recordProgress.
func startAttempt(ctx context.Context) context.Context {
	at := &attemptProgress{known: true}
	if activity.HasHeartbeatDetails(ctx) {
		// Details this package did not write are left alone: they cannot be
		// sent back as they were.
		at.known = activity.GetHeartbeatDetails(ctx, &at.p) == nil
	}
	ctx = context.WithValue(ctx, attemptKey{}, at)
	at.mu.Lock()
	at.send(ctx, heartbeatClock())
	at.mu.Unlock()
	return ctx
}

// KeepAlive heartbeats the activity ctx belongs to with the attempt's
// current Progress, unless it did less than KeepAliveEvery ago. It does
// nothing outside an activity or in one that did not start through
// HeartbeatInterceptor, where it could not tell which details to keep.
func KeepAlive(ctx context.Context) {
	at, ok := ctx.Value(attemptKey{}).(*attemptProgress)
	if !ok || !activity.IsActivity(ctx) {
		return
	}
	at.mu.Lock()
	defer at.mu.Unlock()
	if now := heartbeatClock(); now.Sub(at.sent) >= KeepAliveEvery {
		at.send(ctx, now)
	}
}

// recordProgress makes p the attempt's heartbeat details and sends them: a
// retry resumes from here. The same Progress again is only a KeepAlive.
func recordProgress(ctx context.Context, p Progress) {
	at, ok := ctx.Value(attemptKey{}).(*attemptProgress)
	if !ok {
		recordHeartbeat(ctx, p)
		return
	}
	at.mu.Lock()
	defer at.mu.Unlock()
	now := heartbeatClock()
	if at.known && p == at.p && now.Sub(at.sent) < KeepAliveEvery {
		return
	}
	if p != at.p {
		if wait := HeartbeatBatchWindow - time.Since(at.returned); wait > 0 {
			time.Sleep(wait)
		}
	}
	at.p, at.known = p, true
	at.send(ctx, now)
}

// send heartbeats with the attempt's Progress; at.mu is held.
func (at *attemptProgress) send(ctx context.Context, now time.Time) {
	switch {
	case !at.known:
		return
	case at.p == (Progress{}):
		recordHeartbeat(ctx)
	default:
		recordHeartbeat(ctx, at.p)
	}
	at.sent, at.returned = now, time.Now()
}
