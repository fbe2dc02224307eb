package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/killpoint"
)

// Gate decides whether an action may run; *gate.Gate implements it.
type Gate interface {
	Decide(ctx context.Context, req gate.Request) (gate.Decision, error)
	Readmit(ctx context.Context, req gate.Request) (gate.Decision, error)
	NonceSpent(approval *gate.Approval) (spent, known bool)
}

// Guest kinds, as Proxmox names them in API paths.
const (
	KindQEMU = "qemu"
	KindLXC  = "lxc"
)

// DefaultPollInterval is the longest time between two polls of a running
// Proxmox task (see NextPoll).
const DefaultPollInterval = time.Second

// Proxmox holds the activities acting on one Proxmox node. Register a
// *Proxmox with the worker; every exported method is an activity.
type Proxmox struct {
	// Client must come from pveclient.New: it never retries inside the client
	// and reports every non-2xx answer with its status.
	Client *proxmox.Client
	// Node is the Proxmox node name this worker acts on.
	Node string
	// HostID is the agent's host id, the host_id of signed ops.
	HostID string
	// Ledger is the host-local provenance ledger.
	Ledger *ledger.Ledger
	// Gate verifies destructive steps on this host.
	Gate Gate
	// Log receives one line per mutation (slog.Default when nil).
	Log *slog.Logger
	// PollInterval is the longest time between two task status polls
	// (DefaultPollInterval when zero); shorter tasks are polled sooner
	// (NextPoll).
	PollInterval time.Duration
	// Clock is the host's clock (time.Now when nil).
	Clock func() time.Time
	// CreateWait bounds a create's wait for a create task of its guest
	// still under way (DefaultCreateWait when zero).
	CreateWait time.Duration
	// StateWait bounds a power step's wait, after its task ended, for the
	// guest to reach the state it asked for (DefaultStateWait when zero).
	StateWait time.Duration
	// OnTaskWait, when set, is told of every wait on a Proxmox task: the
	// task type ("qmstart", ...), how it ended ("ok", "failed", "cancelled",
	// "worker_stopping", "error") and how long this attempt waited.
	OnTaskWait func(taskType, outcome string, waited time.Duration)

	// confirmed remembers the guests a confirmed listing read (listing.go).
	confirmed confirmCache
	// watch waits on the node's tasks for every wait at once (taskwatch.go).
	watch     *TaskWatch
	watchOnce sync.Once
}

// Progress is the heartbeat detail of a mutating activity: the Proxmox task
// it is waiting on. A retried attempt resumes from it instead of POSTing
// again.
type Progress struct {
	Phase string `json:"phase"`
	UPID  string `json:"upid"`
}

// TaskResult is the outcome of a mutating activity.
type TaskResult struct {
	// UPID of the task that did the work ("" when nothing had to be done or
	// the call was synchronous).
	UPID string `json:"upid,omitempty"`
	// ExitStatus of that task: "OK" or "WARNINGS: n".
	ExitStatus string `json:"exit_status,omitempty"`
	// AlreadyDone is true when the guest was already in the requested state,
	// so nothing was sent to Proxmox.
	AlreadyDone bool `json:"already_done,omitempty"`
	// Resumed is true when this attempt resumed a task a previous attempt
	// had started.
	Resumed bool `json:"resumed,omitempty"`
}

func (a *Proxmox) log() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.Default()
}

func (a *Proxmox) guestPath(kind string, vmid int) string {
	return fmt.Sprintf("/nodes/%s/%s/%d", url.PathEscape(a.Node), kind, vmid)
}

// postTask sends a mutating request and returns the UPID Proxmox answered
// with ("" for a synchronous call that answers null).
func (a *Proxmox) postTask(ctx context.Context, method, path string, params map[string]any) (string, error) {
	var upid *string
	var err error
	switch method {
	case "POST":
		err = a.Client.Post(ctx, path, params, &upid)
	case "PUT":
		err = a.Client.Put(ctx, path, params, &upid)
	case "DELETE":
		if len(params) > 0 {
			q := url.Values{}
			for k, v := range params {
				q.Set(k, fmt.Sprint(v))
			}
			path += "?" + q.Encode()
		}
		err = a.Client.Delete(ctx, path, &upid)
	default:
		return "", fmt.Errorf("unsupported method %s", method)
	}
	if err != nil {
		return "", err
	}
	if upid == nil {
		return "", nil
	}
	if _, err := parseUPID(*upid); err != nil {
		// Never heartbeated: a retry decides from the guest's state and the
		// task list, as after a lost answer.
		return "", malformed("%s %s answered a %v", method, path, err)
	}
	return *upid, nil
}

// upidInfo is what the agent reads from a UPID:
// UPID:node:pid:pstart:starttime:type:id:user:
type upidInfo struct {
	Node, Type, ID string
	Start          time.Time // the task's start, the node's clock
}

func parseUPID(s string) (upidInfo, error) {
	f := strings.Split(s, ":")
	if len(f) < 8 || f[0] != "UPID" || f[1] == "" {
		return upidInfo{}, fmt.Errorf("malformed UPID %q", s)
	}
	info := upidInfo{Node: f[1], Type: f[5], ID: f[6]}
	if start, err := strconv.ParseInt(f[4], 16, 64); err == nil {
		info.Start = time.Unix(start, 0)
	}
	return info, nil
}

type taskStatus struct {
	Status     string `json:"status"`
	ExitStatus string `json:"exitstatus"`
	UPID       string `json:"upid"`
	Node       string `json:"node"`
}

// resumed returns the progress a previous attempt recorded, if any.
func resumed(ctx context.Context) (Progress, bool) {
	if !activity.HasHeartbeatDetails(ctx) {
		return Progress{}, false
	}
	var p Progress
	if err := activity.GetHeartbeatDetails(ctx, &p); err != nil || p.UPID == "" {
		return Progress{}, false
	}
	return p, true
}

// launch sends the mutating request and records its UPID as the heartbeat
// before doing anything else: from here on a retry waits instead of posting.
func (a *Proxmox) launch(ctx context.Context, phase, method, path string, params map[string]any) (string, error) {
	if err := a.startAct(ctx); err != nil {
		return "", err
	}
	killpoint.Reach(killpoint.BeforePost, phase)
	upid, err := a.postTask(ctx, method, path, params)
	if err != nil {
		return "", err
	}
	killpoint.Reach(killpoint.AfterPost, phase)
	if upid != "" {
		recordProgress(ctx, Progress{Phase: phase, UPID: upid})
	}
	a.log().Info("proxmox request sent", "phase", phase, "method", method, "path", path, "upid", upid)
	return upid, nil
}

// wait reads the task's status until it stops: at once, then each time
// the node's TaskWatch says the task no longer runs (as soon as its own
// polls by NextPoll would have seen it), and at least every
// KeepAliveEvery, heartbeating on every read. It returns a *TaskError when
// the task failed. It honours ctx: a cancelled or timed out activity stops waiting at
// once (the task itself keeps running on the host, and the next attempt
// resumes waiting on it).
func (a *Proxmox) wait(ctx context.Context, phase, upid string) (res TaskResult, err error) {
	info, err := parseUPID(upid)
	if err != nil {
		return TaskResult{}, err
	}
	if a.OnTaskWait != nil {
		start := time.Now()
		defer func() { a.OnTaskWait(info.Type, waitOutcome(ctx, err), time.Since(start)) }()
	}
	path := fmt.Sprintf("/nodes/%s/tasks/%s/status", url.PathEscape(info.Node), url.PathEscape(upid))
	started := time.Now()
	alive := time.NewTicker(KeepAliveEvery)
	defer alive.Stop()
	check, stop := closedCheck, func() {}
	defer func() { stop() }()
	for {
		select {
		case <-ctx.Done():
			return TaskResult{}, ctx.Err()
		case <-activity.GetWorkerStopChannel(ctx):
			// Failing now, while the worker can still report it, lets the
			// retry start on the next worker at once instead of after the
			// heartbeat timeout; it resumes waiting on the recorded task.
			return TaskResult{}, temporal.NewApplicationError(
				fmt.Sprintf("%s: worker stopping while task %s runs; the next attempt resumes it", phase, upid), ErrTypeWorkerStopping)
		case <-alive.C:
			// Read anyway: a listing can lag (a task whose pvedaemon
			// restarted before it reaped the task stays listed as running
			// until the node's next task), and the read heartbeats.
		case <-check:
		}
		stop()
		var st *taskStatus
		if err := a.Client.Get(ctx, path, &st); err != nil {
			return TaskResult{}, err
		}
		if st == nil {
			return TaskResult{}, malformed("status of task %s is null", upid)
		}
		if st.Status == "" {
			// Proxmox always says running or stopped: an answer without it
			// would otherwise be waited on for as long as it lasts.
			return TaskResult{}, malformed("status of task %s has no status", upid)
		}
		recordProgress(ctx, Progress{Phase: phase, UPID: upid})
		if st.Status != "running" {
			if !taskSucceeded(st.ExitStatus) {
				return TaskResult{}, &TaskError{UPID: upid, ExitStatus: st.ExitStatus}
			}
			killpoint.Reach(killpoint.TaskDone, phase)
			return TaskResult{UPID: upid, ExitStatus: st.ExitStatus}, nil
		}
		killpoint.Reach(killpoint.TaskWait, phase)
		check, stop = a.tasks(info.Node).Await(upid, started)
	}
}

// closedCheck is a check that is due at once.
var closedCheck = func() <-chan struct{} { c := make(chan struct{}); close(c); return c }()

// tasks returns the watch of node's tasks: the worker's own node's, shared
// by all its waits. A recorded UPID of another node is never resumed
// (resumeTask), so only a Proxmox answer naming another node could ask
// for one; it gets a watch of its own for this wait.
func (a *Proxmox) tasks(node string) *TaskWatch {
	a.watchOnce.Do(func() { a.watch = NewTaskWatch(a.Client, a.Node, a.PollInterval) })
	if node != a.Node {
		return NewTaskWatch(a.Client, node, a.PollInterval)
	}
	return a.watch
}

// waitOutcome names how a wait ended, for OnTaskWait.
func waitOutcome(ctx context.Context, err error) string {
	var te *TaskError
	var ae *temporal.ApplicationError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &te):
		return "failed"
	case ctx.Err() != nil:
		return "cancelled"
	case errors.As(err, &ae) && ae.Type() == ErrTypeWorkerStopping:
		return "worker_stopping"
	}
	return "error"
}

// runTask launches a request and waits for its task.
func (a *Proxmox) runTask(ctx context.Context, phase, method, path string, params map[string]any) (TaskResult, error) {
	upid, err := a.launch(ctx, phase, method, path, params)
	if err != nil || upid == "" {
		return TaskResult{}, err
	}
	return a.wait(ctx, phase, upid)
}

// taskType is Proxmox's task type for an action on a guest ("qmstart",
// "vzshutdown", ...).
func taskType(kind, action string) string {
	if kind == KindLXC {
		return "vz" + action
	}
	return "qm" + action
}

type taskListEntry struct {
	UPID      string      `json:"upid"`
	StartTime json.Number `json:"starttime"`
	EndTime   json.Number `json:"endtime"`
	Status    string      `json:"status"`
}

// inFlight looks for a task of type typ on guest vmid that a previous
// attempt may have started without living to record its UPID: one still
// running, or (recent) one started since the activity was first scheduled.
// vmid 0 does not filter by guest. Task start times are the host's clock in
// whole seconds and the schedule time is the Temporal server's: a host clock
// running behind can miss a finished reboot or restore (it is then done
// again), one running ahead can take one started just before the activity.
// Waiting on it is exactly what that attempt would have done.
func (a *Proxmox) inFlight(ctx context.Context, vmid int, typ string, recent bool) (string, error) {
	q := url.Values{"typefilter": {typ}, "source": {"active"}, "limit": {"20"}}
	if vmid > 0 {
		q.Set("vmid", strconv.Itoa(vmid))
	}
	if recent {
		q.Set("source", "all")
	}
	var list []taskListEntry
	if err := a.Client.Get(ctx, fmt.Sprintf("/nodes/%s/tasks?%s", url.PathEscape(a.Node), q.Encode()), &list); err != nil {
		return "", err
	}
	since := activity.GetInfo(ctx).ScheduledTime.Unix()
	for _, t := range list { // newest first
		if _, err := parseUPID(t.UPID); err != nil {
			continue
		}
		// pve lists a running task with status "RUNNING" (older versions:
		// without a status) and no end time.
		if t.EndTime == "" && (t.Status == "" || strings.EqualFold(t.Status, "running")) {
			return t.UPID, nil
		}
		if start, err := t.StartTime.Int64(); recent && err == nil && !activity.GetInfo(ctx).ScheduledTime.IsZero() && start >= since &&
			!retryableTaskFailure(&TaskError{ExitStatus: t.Status}) {
			// A finished task that failed on a lock, or was lost, did
			// nothing to adopt.
			return t.UPID, nil
		}
	}
	return "", nil
}

// runGuestTask is runTask for an action on a guest that first adopts a task
// of the same type already under way (see inFlight) instead of posting.
func (a *Proxmox) runGuestTask(ctx context.Context, phase, typ string, vmid int, recent bool, method, path string, params map[string]any) (TaskResult, error) {
	upid, err := a.inFlight(ctx, vmid, typ, recent)
	if err != nil {
		return TaskResult{}, err
	}
	if upid == "" {
		return a.runTask(ctx, phase, method, path, params)
	}
	recordProgress(ctx, Progress{Phase: phase, UPID: upid})
	a.log().Info("adopting proxmox task already under way", "phase", phase, "upid", upid)
	res, err := a.wait(ctx, phase, upid)
	res.Resumed = err == nil
	return res, err
}

// resumeTask waits on the task a previous attempt recorded for phase. ok is
// false when there is nothing to resume, or when Proxmox no longer knows the
// task (then the caller decides from the guest's real state).
//
// The recorded UPID is heartbeat detail, a claim the Temporal server hands
// back: it is resumed only if it names a task of one of types, on this node,
// for guest vmid (vmid 0: any id). Any other UPID is ignored, as if nothing
// had been recorded, and the caller decides from Proxmox's state. So is a
// recorded task that failed on a lock or was lost (retryableTaskFailure):
// it did not do the step, and the caller sends it again if the guest's
// state still asks for it.
func (a *Proxmox) resumeTask(ctx context.Context, p Progress, hasProgress bool, phase string, vmid int, types ...string) (TaskResult, bool, error) {
	if !hasProgress || p.Phase != phase {
		return TaskResult{}, false, nil
	}
	info, err := parseUPID(p.UPID)
	if err != nil {
		return TaskResult{}, true, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("resume %s: the recorded task id cannot be parsed: %v", phase, err), ErrTypeMalformedUPID, err)
	}
	if info.Node != a.Node || !slices.Contains(types, info.Type) || (vmid > 0 && info.ID != vmidString(vmid)) {
		a.log().Warn("recorded task is not this step's; deciding from the guest's state", "phase", phase, "upid", p.UPID,
			"want_types", types, "want_vmid", vmid, "node", a.Node)
		return TaskResult{}, false, nil
	}
	a.log().Info("resuming proxmox task", "phase", phase, "upid", p.UPID)
	res, err := a.wait(ctx, phase, p.UPID)
	if err != nil {
		if code, msg, ok := httpStatus(err); ok && (code == 404 || ((code == 400 || code == 500) && contains(msg, "no such task", "unable to open file", "does not exist"))) {
			a.log().Warn("recorded task unknown to proxmox; deciding from the guest's state", "upid", p.UPID, "err", err)
			return TaskResult{}, false, nil
		}
		if retryableTaskFailure(err) {
			a.log().Warn("recorded task failed on a lock or was lost; deciding from the guest's state", "upid", p.UPID, "err", err)
			return TaskResult{}, false, nil
		}
		return TaskResult{}, true, err
	}
	res.Resumed = true
	return res, true, nil
}

func vmidString(vmid int) string { return strconv.Itoa(vmid) }

func validKind(kind string) bool { return kind == KindQEMU || kind == KindLXC }
