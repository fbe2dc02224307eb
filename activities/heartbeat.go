package activities

import (
	"context"
	"sync"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/interceptor"
)

// Heartbeats of an attempt.
//
// Temporal times an attempt out when it has not heartbeaten for the
// activity's HeartbeatTimeout, and starts the next attempt beside it if the
// first is only slow. So an attempt heartbeats as it starts, before every
// Proxmox request (pveclient calls KeepAlive), and while a request waits
// for one of the host's request slots; the Proxmox client's timeout is kept
// below the heartbeat timeout (worker/config.go), so no single request
// outlasts it.
//
// A heartbeat replaces the details the server holds: a mutating step's
// Progress names the Proxmox task a retry resumes. Every heartbeat therefore
// sends the attempt's current Progress: the previous attempt's until this
// attempt records its own.

// attemptProgress is the Progress the running attempt heartbeats with.
type attemptProgress struct {
	mu    sync.Mutex
	p     Progress
	known bool // false: the previous attempt's details could not be read; do not overwrite them
}

type attemptKey struct{}

// recordHeartbeat sends a heartbeat; tests replace it to see what is sent.
var recordHeartbeat = activity.RecordHeartbeat

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
	KeepAlive(ctx)
	return ctx
}

// KeepAlive heartbeats the activity ctx belongs to with the attempt's
// current Progress. It does nothing outside an activity or in one that did
// not start through HeartbeatInterceptor, where it could not tell which
// details to keep.
func KeepAlive(ctx context.Context) {
	at, ok := ctx.Value(attemptKey{}).(*attemptProgress)
	if !ok || !activity.IsActivity(ctx) {
		return
	}
	at.mu.Lock()
	p, known := at.p, at.known
	at.mu.Unlock()
	switch {
	case !known:
	case p == (Progress{}):
		recordHeartbeat(ctx)
	default:
		recordHeartbeat(ctx, p)
	}
}

// recordProgress makes p the attempt's heartbeat details and sends them: a
// retry resumes from here.
func recordProgress(ctx context.Context, p Progress) {
	if at, ok := ctx.Value(attemptKey{}).(*attemptProgress); ok {
		at.mu.Lock()
		at.p, at.known = p, true
		at.mu.Unlock()
	}
	recordHeartbeat(ctx, p)
}
