package pvesim_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestTaskDurationFuncDecidesEachTask(t *testing.T) {
	type call struct {
		typ  string
		vmid int
	}
	var (
		mu          sync.Mutex
		calls       []call
		longStarted = make(chan struct{})
	)
	srv, client := newSim(t, pvesim.Config{
		TaskDuration: time.Hour, // overridden for every task
		TaskDurationFunc: func(typ string, vmid int) time.Duration {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, call{typ, vmid})
			if vmid == 101 {
				close(longStarted)
				return time.Hour
			}
			return 0
		},
	})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 102}))
	ctx := context.Background()

	quick, err := vmOf(t, client, 102).Start(ctx)
	if err != nil {
		t.Fatalf("start 102: %v", err)
	}
	waitTask(t, quick)
	if quick.ExitStatus != "OK" {
		t.Fatalf("task of 102 ended %q", quick.ExitStatus)
	}
	long, err := vmOf(t, client, 101).Start(ctx)
	if err != nil {
		t.Fatalf("start 101: %v", err)
	}
	<-longStarted // the function is called as the task starts running
	if err := long.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if long.Status != "running" {
		t.Fatalf("task given an hour is %q", long.Status)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []call{{"qmstart", 102}, {"qmstart", 101}}
	for i := range want {
		if calls[i] != want[i] {
			t.Fatalf("calls %v, want %v", calls, want)
		}
	}
}

func TestCallsCountsEveryRequest(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	before := srv.Calls()
	ctx := context.Background()
	vm := vmOf(t, client, 101) // GET node status and GET the VM's status and config
	reads := srv.Calls() - before
	if reads == 0 {
		t.Fatal("reads were not counted")
	}
	task, err := vm.Start(ctx)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	waitTask(t, task)
	if got := srv.Calls() - before; got < reads+2 {
		t.Fatalf("%d calls after %d reads, a start and its task polls", got, reads)
	}
	if polls := srv.TaskPolls(); polls < 1 || polls > srv.Calls()-before-reads-1 {
		t.Fatalf("%d task polls of %d calls after %d reads and a start", polls, srv.Calls()-before, reads)
	}
	if n := len(srv.Requests()); n != 1 {
		t.Fatalf("%d mutating requests recorded, want 1", n)
	}
}
