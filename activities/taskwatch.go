package activities

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"
)

// TaskWatch waits on the running Proxmox tasks of one node together. One
// listing of the node's active tasks (GET /nodes/{node}/tasks?source=active)
// answers for every task waited on, where each wait polling its own task's
// status would cost a request per task per poll: with tens of guest steps
// under way on a host, tens of times fewer requests to pveproxy, and as
// many fewer wake-ups of the worker.
//
// A listing only tells that a task still runs; how a task ended is its own
// status, which its waiter reads when told. A waiter is told when its task
// is no longer listed as running, or when a listing fails (its own read
// then says what is wrong), so a listing can only cost a read, never hide
// an end. Listings go out when the waiter due first would have polled its
// own task (NextPoll of its time waited), so each task is seen to end as
// soon as if it were polled alone, and each listing answers for all.
type TaskWatch struct {
	client *proxmox.Client
	path   string
	max    time.Duration

	mu      sync.Mutex
	waiters map[*taskWaiter]struct{}
	running bool
	joined  chan struct{} // a waiter joined: the next listing may be due sooner
}

type taskWaiter struct {
	upid   string
	since  time.Time     // when its wait began
	joined time.Time     // when it joined the watch
	due    time.Time     // when it would next poll its own task
	check  chan struct{} // closed when its task's status should be read
}

// activeTasksLimit bounds a listing's rows. pve lists 50 by default; a node
// runs far fewer tasks at once, and a task beyond the limit is only told to
// read its status.
const activeTasksLimit = 1000

// NewTaskWatch watches the tasks of node through client, listing them at
// least every max (DefaultPollInterval when zero or less).
func NewTaskWatch(client *proxmox.Client, node string, max time.Duration) *TaskWatch {
	if max <= 0 {
		max = DefaultPollInterval
	}
	return &TaskWatch{
		client:  client,
		path:    fmt.Sprintf("/nodes/%s/tasks?source=active&limit=%d", url.PathEscape(node), activeTasksLimit),
		max:     max,
		waiters: map[*taskWaiter]struct{}{},
		joined:  make(chan struct{}, 1),
	}
}

// Await returns a channel that is closed when the task upid, waited on
// since since and seen running just now, should have its status read. The
// caller must call stop once it no longer waits, told or not.
func (w *TaskWatch) Await(upid string, since time.Time) (check <-chan struct{}, stop func()) {
	now := time.Now()
	wt := &taskWaiter{upid: upid, since: since, joined: now, due: now.Add(NextPoll(now.Sub(since), w.max)), check: make(chan struct{})}
	w.mu.Lock()
	w.waiters[wt] = struct{}{}
	if !w.running {
		w.running = true
		go w.run()
	}
	w.mu.Unlock()
	select {
	case w.joined <- struct{}{}:
	default:
	}
	return wt.check, func() {
		w.mu.Lock()
		delete(w.waiters, wt)
		w.mu.Unlock()
	}
}

// run lists the node's active tasks while anyone waits, each time the
// first waiter is due.
func (w *TaskWatch) run() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		w.mu.Lock()
		if len(w.waiters) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		var next time.Time
		for wt := range w.waiters {
			if next.IsZero() || wt.due.Before(next) {
				next = wt.due
			}
		}
		w.mu.Unlock()
		timer.Reset(time.Until(next))
		select {
		case <-timer.C:
		case <-w.joined:
			continue
		}
		sent := time.Now()
		running, err := w.list()
		now := time.Now()
		w.mu.Lock()
		for wt := range w.waiters {
			if wt.joined.After(sent) {
				continue // the listing may predate its task
			}
			if err != nil || !running[wt.upid] {
				close(wt.check)
				delete(w.waiters, wt)
				continue
			}
			wt.due = now.Add(NextPoll(now.Sub(wt.since), w.max))
		}
		w.mu.Unlock()
	}
}

// list returns the UPIDs of the node's running tasks. pve lists a task it
// has not yet archived even after it ended, with its end status; "RUNNING"
// (or, from older versions, no status) marks one that still runs.
func (w *TaskWatch) list() (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTaskListTimeout)
	defer cancel()
	var rows []struct {
		UPID   string `json:"upid"`
		Status string `json:"status"`
	}
	if err := w.client.Get(ctx, w.path, &rows); err != nil {
		return nil, err
	}
	running := make(map[string]bool, len(rows))
	for _, r := range rows {
		if r.Status == "" || r.Status == "RUNNING" {
			running[r.UPID] = true
		}
	}
	return running, nil
}

// DefaultTaskListTimeout bounds one listing of a node's active tasks; the
// client's own per-request timeout applies too.
const DefaultTaskListTimeout = 30 * time.Second
