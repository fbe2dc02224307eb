package activities

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/testwait"
)

// watchedWait waits on upid as Proxmox.wait does, counting the reads of its
// status: at once, then each time the watch says so.
func watchedWait(t *testing.T, h *harness, w *TaskWatch, upid string) (reads int) {
	t.Helper()
	path := fmt.Sprintf("/nodes/pve1/tasks/%s/status", url.PathEscape(upid))
	started := time.Now()
	for {
		var st taskStatus
		if err := h.act.Client.Get(context.Background(), path, &st); err != nil {
			t.Errorf("status of %s: %v", upid, err)
			return reads
		}
		reads++
		if st.Status != "running" {
			if st.ExitStatus != "OK" {
				t.Errorf("task %s ended %q", upid, st.ExitStatus)
			}
			return reads
		}
		check, stop := w.Await(upid, started)
		select {
		case <-check:
		case <-time.After(10 * time.Second):
			stop()
			t.Errorf("task %s: never told to read its status", upid)
			return reads
		}
	}
}

// startGuests starts n stopped guests and returns their tasks' UPIDs.
func startGuests(t *testing.T, h *harness, n int) []string {
	t.Helper()
	var upids []string
	for i := range n {
		vmid := 101 + i
		h.addVM(pvesim.Guest{VMID: vmid, Name: "g", Status: "stopped", MemoryMiB: 512})
		var upid string
		if err := h.act.Client.Post(context.Background(), fmt.Sprintf("/nodes/pve1/qemu/%d/status/start", vmid), nil, &upid); err != nil {
			t.Fatal(err)
		}
		upids = append(upids, upid)
	}
	return upids
}

// Twenty tasks waited on at once cost one listing per poll for all of
// them, not a poll each; each task's status is read twice, while it runs
// and once it ended: the listing never tells a waiter too soon.
func TestTaskWatchListsForAllWaits(t *testing.T) {
	const n, length, interval = 20, 300 * time.Millisecond, 20 * time.Millisecond
	h := newHarness(t, pvesim.Config{TaskDuration: length, RecordReads: true})
	w := NewTaskWatch(h.act.Client, "pve1", interval)
	upids := startGuests(t, h, n)
	h.srv.ResetRequests()

	var wg sync.WaitGroup
	reads := make([]int, n)
	for i, upid := range upids {
		wg.Go(func() { reads[i] = watchedWait(t, h, w, upid) })
	}
	wg.Wait()
	for i, r := range reads {
		if r != 2 {
			t.Errorf("task %d: its status was read %d times, want 2 (running, then ended)", i, r)
		}
	}
	listings := len(h.srv.ReadsMatching("/nodes/*/tasks"))
	// Alone, each task would have been polled about length/interval times.
	if alone := int(length / interval); listings > alone+5 {
		t.Errorf("%d listings for %d tasks, want about %d (one task's polls), not %d", listings, n, alone, n*alone)
	}
	t.Logf("%d tasks of %s: %d listings, %d status reads", n, length, listings, len(h.srv.ReadsMatching("/nodes/*/tasks/*/status")))

	// With no one waiting, the watch stops listing.
	waitFor(t, "the watch to stop", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return !w.running })
}

// A listing that fails tells every waiter to read its own status, which
// decides: a task that still runs is waited on again, and the wait ends
// when it does, without an error.
func TestTaskWatchFailedListingTellsWaiters(t *testing.T) {
	h := newHarness(t, pvesim.Config{TaskDuration: 300 * time.Millisecond, RecordReads: true})
	w := NewTaskWatch(h.act.Client, "pve1", 20*time.Millisecond)
	upids := startGuests(t, h, 1)
	h.srv.Inject(pvesim.Fault{Method: "GET", Path: "/nodes/*/tasks", Kind: pvesim.FaultHTTPError, Status: 500, Message: "proxy loop", Times: 2})
	h.srv.ResetRequests()

	if reads := watchedWait(t, h, w, upids[0]); reads < 3 {
		t.Errorf("the status was read %d times, want at least 3 (at once, after a failed listing, at the end)", reads)
	}
	if g, _ := h.guest(101); g.Status != "running" {
		t.Errorf("guest is %s, want running", g.Status)
	}
}

// A waiter that stops waiting is forgotten: it is never told, and the
// watch lists nothing for it.
func TestTaskWatchStop(t *testing.T) {
	h := newHarness(t, pvesim.Config{TaskDuration: time.Hour, RecordReads: true})
	w := NewTaskWatch(h.act.Client, "pve1", 20*time.Millisecond)
	upids := startGuests(t, h, 1)
	h.srv.ResetRequests()
	check, stop := w.Await(upids[0], time.Now())
	stop()
	waitFor(t, "the watch to stop", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return !w.running })
	select {
	case <-check:
		t.Error("a waiter that stopped was told")
	case <-time.After(100 * time.Millisecond):
	}
	if n := len(h.srv.ReadsMatching("/nodes/*/tasks")); n > 1 {
		t.Errorf("%d listings for a waiter that stopped at once, want at most 1", n)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.For(t, what, 10*time.Second, 5*time.Millisecond, cond)
}
