package pvesim

import (
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

// FaultKind says what an injected fault does to the request it hits.
type FaultKind string

const (
	// FaultHTTPError answers Status (default 500) with Message as the reason
	// phrase, without any side effect. 595/596 replies have an empty body,
	// as pveproxy's own errors do.
	FaultHTTPError FaultKind = "http_error"
	// FaultHTTPErrorAfter serves the request (the guest changes, the task
	// starts) and then answers Status (default 596) with Message, as
	// pveproxy does when pvedaemon took longer than the proxy's 30 s to
	// answer a call it went on to execute.
	FaultHTTPErrorAfter FaultKind = "http_error_after"
	// FaultDelay only delays the request by Delay; it is then served normally.
	FaultDelay FaultKind = "delay"
	// FaultDelayAfter serves the request at once and delays only the reply
	// by Delay: a client that times out meanwhile saw an error for a call
	// that took effect.
	FaultDelayAfter FaultKind = "delay_after"
	// FaultTaskError lets the call start its task, which then stops with
	// exit status Message (default "command failed") without its effect.
	// Like the other task-level kinds it never hits a GET, but is used up by
	// any other matching call, even one that starts no task.
	FaultTaskError FaultKind = "task_error"
	// FaultTaskWarnings lets the task do its work and stop with exit status
	// "WARNINGS: N" (Message overrides), which Proxmox counts as success.
	FaultTaskWarnings FaultKind = "task_warnings"
	// FaultDropBefore closes the connection without a reply and without
	// serving the request.
	FaultDropBefore FaultKind = "drop_before"
	// FaultDropAfter serves the request (the guest changes, the task starts)
	// and then closes the connection without a reply.
	FaultDropAfter FaultKind = "drop_after"
	// FaultRawReply answers 200 with Message as the raw body without serving
	// the request (no side effect, no task): `{"data":null}` for a status
	// that go-proxmox dereferences, or a UPID with too few fields
	// (`{"data":"UPID:pve1:1:2:3:qmstart:101"}`), on which its NewTask panics.
	FaultRawReply FaultKind = "raw_reply"
	// FaultRawReplyAfter serves the request (side effect, task) and then
	// answers 200 with Message as the raw body.
	FaultRawReplyAfter FaultKind = "raw_reply_after"
	// FaultSlowTask makes the task the call starts run for TaskDuration
	// instead of the configured duration, e.g. to crash a client mid-task.
	FaultSlowTask FaultKind = "slow_task"
	// FaultLockTimeout makes the call's wait for the guest's config lock fail
	// at once with pve's "can't lock file ... - got timeout": a 500 for
	// synchronous calls, a failed task for asynchronous ones.
	FaultLockTimeout FaultKind = "lock_timeout"
	// FaultHold holds the request before serving it until the fault's Hook
	// is released; it is then served normally. A client that goes away
	// meanwhile (or the server closing) drops it unserved. Hook.Hit says
	// when the request is held, so a test acts at that exact point: a
	// client killed while its first task-status poll is held, say.
	FaultHold FaultKind = "hold"
	// FaultHoldAfter serves the request at once and holds only the reply
	// until the Hook is released: a client that dies meanwhile sent a call
	// that took effect and never saw its answer.
	FaultHoldAfter FaultKind = "hold_after"
	// FaultHoldTask answers the call normally, and the task it starts,
	// once it holds the guest's config lock and passed its checks, keeps
	// running until the Hook is released; it then does its work. Hook.Hit
	// says when the task is held: a test queues another call behind a
	// running task, or changes the guest under it, at that exact point.
	FaultHoldTask FaultKind = "hold_task"
)

// Hook lets a test see, and with FaultHold and FaultHoldAfter steer, the
// requests a fault hits. Make one with NewHook and set it in Fault.Hook.
type Hook struct {
	hit, done, release         chan struct{}
	hitOnce, doneOnce, relOnce sync.Once
}

// NewHook returns a hook that has not been hit and is not released.
func NewHook() *Hook {
	return &Hook{hit: make(chan struct{}), done: make(chan struct{}), release: make(chan struct{})}
}

// Hit is closed when the first request the fault hits has reached the
// point where the fault acts: for FaultHold it is held unserved, for
// FaultHoldAfter it has been served and its reply is held.
func (h *Hook) Hit() <-chan struct{} { return h.hit }

// Done is closed when that first request has been answered or dropped,
// its record (Requests) complete.
func (h *Hook) Done() <-chan struct{} { return h.done }

// Release lets every held request go on, now and later.
func (h *Hook) Release() { h.relOnce.Do(func() { close(h.release) }) }

func (h *Hook) hitNow() {
	if h != nil {
		h.hitOnce.Do(func() { close(h.hit) })
	}
}

func (h *Hook) doneNow() {
	if h != nil {
		h.doneOnce.Do(func() { close(h.done) })
	}
}

// Fault describes a failure to inject. The empty Method, Path and VMID match
// anything.
type Fault struct {
	// Method is the HTTP method to match ("POST"), "" for any.
	Method string
	// Path is a path.Match pattern relative to the API root, where "*" is one
	// path segment, e.g. "/nodes/*/qemu/*/status/start"; a trailing "/**"
	// matches one or more further segments (volume ids such as
	// "local:backup/vzdump-..." span two). "" matches any path.
	Path string
	// VMID restricts the fault to requests about this guest (path or vmid
	// parameter). 0 for any.
	VMID int
	Kind FaultKind
	// Status is the HTTP status for FaultHTTPError (500, 595, 596...).
	Status int
	// Message is the reason phrase (FaultHTTPError) or the task exit status
	// (FaultTaskError, FaultTaskWarnings).
	Message string
	// Delay is waited before the request is handled (after it, for
	// FaultDelayAfter).
	Delay time.Duration
	// TaskDuration is how long the started task runs, for FaultSlowTask.
	TaskDuration time.Duration
	// Times is how many matching requests the fault hits: 0 means once, a
	// negative number means until ClearFaults.
	Times int
	// Hook, when not nil, reports when the fault hits (any kind) and
	// releases the requests FaultHold and FaultHoldAfter hold, and the
	// task FaultHoldTask holds; those three kinds need one.
	Hook *Hook
}

// taskLevel kinds act on the task or the config lock of a call, so reads
// never use them up.
func (k FaultKind) taskLevel() bool {
	switch k {
	case FaultTaskError, FaultTaskWarnings, FaultSlowTask, FaultLockTimeout, FaultHoldTask:
		return true
	}
	return false
}

type activeFault struct {
	Fault
	left int // <0: unlimited
}

// Inject arms a fault. Faults are tried in the order injected; the first
// match hits the request.
func (s *Server) Inject(f Fault) {
	left := f.Times
	if left == 0 {
		left = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &activeFault{Fault: f, left: left})
}

// ClearFaults disarms every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// PendingFaults is how many armed faults have not been used up.
func (s *Server) PendingFaults() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.faults)
}

// takeFault returns the first armed fault matching the request and uses one
// of its occurrences.
func (s *Server) takeFault(method, p string, vmid int) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if !matchRequest(f.Method, f.Path, method, p) {
			continue
		}
		if f.VMID != 0 && f.VMID != vmid {
			continue
		}
		if f.Kind.taskLevel() && method == http.MethodGet {
			continue // reads start no task and take no lock
		}
		if f.left > 0 {
			f.left--
			if f.left == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		hit := f.Fault
		return &hit
	}
	return nil
}

func matchRequest(wantMethod, pattern, method, p string) bool {
	if wantMethod != "" && !strings.EqualFold(wantMethod, method) {
		return false
	}
	if pattern == "" {
		return true
	}
	if prefix, ok := strings.CutSuffix(pattern, "/**"); ok {
		// everything below prefix, e.g. volume ids that contain "/"
		want := strings.Split(strings.Trim(prefix, "/"), "/")
		have := strings.Split(strings.Trim(p, "/"), "/")
		if len(have) <= len(want) {
			return false
		}
		ok, err := path.Match(prefix, "/"+strings.Join(have[:len(want)], "/"))
		return err == nil && ok
	}
	ok, err := path.Match(pattern, p)
	return err == nil && ok
}

func (f *Fault) httpError() *apiError {
	status := f.Status
	switch {
	case status == 0 && f.Kind == FaultHTTPErrorAfter:
		status = 596
	case status == 0:
		status = http.StatusInternalServerError
	}
	msg := f.Message
	if msg == "" {
		msg = http.StatusText(status)
		if msg == "" {
			msg = "injected failure"
		}
	}
	return &apiError{Status: status, Message: msg}
}
