package activities

import (
	"context"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"

	"github.com/felhom/felhom-agent/internal/killpoint"
)

// Heartbeats of an attempt.
//
// Temporal times an attempt out when it has not heartbeaten for the
// activity's HeartbeatTimeout, counted from the attempt's start, and starts
// the next attempt beside it if the first is only slow. So an attempt
// heartbeats before Proxmox requests (pveclient calls KeepAlive), while a
// request waits for one of the host's request slots, and while it waits on
// a task; the Proxmox client's timeout is kept below the heartbeat timeout
// (worker/config.go), so no single request outlasts it.
//
// A heartbeat replaces the details the server holds: a mutating step's
// Progress names the Proxmox task a retry resumes. Every heartbeat therefore
// sends the attempt's current Progress: the previous attempt's until this
// attempt records its own. A retry heartbeats as it starts, with the
// previous attempt's details; a first attempt, which has none to keep and
// whose heartbeat timeout has only begun, does not (each heartbeat is a
// write of the workflow on the server). A heartbeat that only says the
// attempt is alive is sent at most every KeepAliveEvery, through the SDK,
// which batches heartbeats and gives each one as long as its batch lasts
// (most of the heartbeat timeout) to reach the server before it takes the
// attempt for timed out and cancels it. When the interceptor has a client, a
// new Progress goes straight to the server at once
// (client.RecordActivityHeartbeat, bounded by KeepAliveEvery), so that the
// server knows a task's UPID before the task is first polled; one that did
// not arrive is sent again at the attempt's next heartbeat. Once the SDK has
// been handed a heartbeat in the attempt it may hold one batched, so from
// then on a new Progress goes through the SDK as well, where it replaces
// the batched one: an older Progress can never overwrite a newer one.

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
	// deliver sends a new Progress straight to the server (nil: the SDK's
	// batch only); undelivered says the last one did not arrive.
	deliver     func(context.Context, Progress) error
	undelivered bool
	// viaSDK says the SDK was handed a heartbeat in this attempt, so it may
	// hold a batched one that a new Progress must replace.
	viaSDK bool
}

type attemptKey struct{}

// recordHeartbeat sends a heartbeat, and heartbeatClock tells the time;
// tests replace them.
var (
	recordHeartbeat = activity.RecordHeartbeat
	heartbeatClock  = time.Now
)

// HeartbeatInterceptor makes every activity attempt heartbeat as soon as it
// starts, with the details the previous attempt recorded, and lets
// KeepAlive heartbeat during the attempt without losing them. With c, a new
// Progress also goes straight to the server (see above); c may be nil.
// Register it in the worker's options.
func HeartbeatInterceptor(c client.Client) interceptor.WorkerInterceptor {
	if c == nil {
		return &heartbeatInterceptor{}
	}
	return &heartbeatInterceptor{deliver: directHeartbeat(c)}
}

type heartbeatInterceptor struct {
	interceptor.WorkerInterceptorBase
	deliver func(context.Context, Progress) error // nil: through the SDK only
}

func (i *heartbeatInterceptor) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &heartbeatInbound{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}, deliver: i.deliver}
}

type heartbeatInbound struct {
	interceptor.ActivityInboundInterceptorBase
	deliver func(context.Context, Progress) error
}

func (i *heartbeatInbound) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	res, err := i.Next.ExecuteActivity(startAttempt(ctx, i.deliver), in)
	if err == nil {
		killpoint.Reach(killpoint.ActivityDone, activity.GetInfo(ctx).ActivityType.Name)
	}
	return res, err
}

// directHeartbeat records p as the activity's heartbeat on the server now,
// by its task token, waiting at most KeepAliveEvery.
func directHeartbeat(c client.Client) func(context.Context, Progress) error {
	return func(ctx context.Context, p Progress) error {
		dctx, cancel := context.WithTimeout(ctx, KeepAliveEvery)
		defer cancel()
		err := c.RecordActivityHeartbeat(dctx, activity.GetInfo(ctx).TaskToken, p)
		if err != nil {
			activity.GetLogger(ctx).Warn("heartbeat with the step's progress did not reach the server; sent again with the next one", "phase", p.Phase, "upid", p.UPID, "error", err)
		}
		return err
	}
}

// startAttempt heartbeats once with the previous attempt's details, if it
// left any, and returns ctx carrying them for KeepAlive and recordProgress.
//
// Whether there are details is the server's word; it decides nothing but
// this heartbeat. Withheld, the attempt heartbeats later (at its first
// Progress or KeepAlive) and what the server held stays as it was.
func startAttempt(ctx context.Context, deliver func(context.Context, Progress) error) context.Context {
	at := &attemptProgress{known: true, deliver: deliver}
	ctx = context.WithValue(ctx, attemptKey{}, at)
	at.mu.Lock()
	defer at.mu.Unlock()
	if !activity.HasHeartbeatDetails(ctx) {
		// The heartbeat timeout has just begun: the start is the attempt's
		// first sign of life.
		at.sent = heartbeatClock()
		return ctx
	}
	// Details this package did not write are left alone: they cannot be
	// sent back as they were.
	at.known = activity.GetHeartbeatDetails(ctx, &at.p) == nil
	at.send(ctx, heartbeatClock())
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
	fresh := !at.known || p != at.p || at.undelivered
	if !fresh && now.Sub(at.sent) < KeepAliveEvery {
		return
	}
	at.p, at.known = p, true
	direct := fresh && at.deliver != nil
	if direct && !at.viaSDK {
		// The SDK holds nothing that could overwrite it: one write, straight
		// to the server.
		at.sent = now
	} else {
		at.send(ctx, now)
	}
	if direct {
		at.undelivered = at.deliver(ctx, p) != nil
	}
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
	at.sent, at.viaSDK = now, true
}
