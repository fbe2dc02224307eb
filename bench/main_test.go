package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/testtool"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChildWorker())
	}
	testscript.Main(m, map[string]func(){"bench": main})
}

// TestScripts runs testdata/*.txtar: the flags, their errors and --help.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata"})
}

// TestConvergeCountsAreConsistent runs the converge phase for a tiny fleet
// (one host, three guests; the workers in child processes of this test
// binary) and checks the counts, not the timings.
func TestConvergeCountsAreConsistent(t *testing.T) {
	testtool.Need(t, "ssh-keygen")
	o, err := parseFlags([]string{"--hosts", "1", "--guests", "3", "--task", "10ms-50ms", "--db", "memory", "--phases", "converge"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e, err := startEnv(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	r := &report{}
	res, err := e.converge(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if res.guests != 3 {
		t.Errorf("%d guests, want 3", res.guests)
	}
	// Every guest was created and started: at least two mutations each,
	// reads besides them, and at least one workflow task and activity.
	if res.mutations < 2*res.guests {
		t.Errorf("%d mutations for %d guests", res.mutations, res.guests)
	}
	if res.calls <= int64(res.mutations) {
		t.Errorf("%d Proxmox calls for %d mutations: reads were not counted", res.calls, res.mutations)
	}
	if res.hist.workflowTasks < res.guests || res.hist.activities < res.guests {
		t.Errorf("%d workflow tasks and %d activities for %d guests", res.hist.workflowTasks, res.hist.activities, res.guests)
	}
	if res.requests <= 0 {
		t.Errorf("%v worker requests", res.requests)
	}
	var byOp float64
	for _, v := range res.ops {
		byOp += v
	}
	if byOp != res.requests {
		t.Errorf("worker requests by operation sum to %v, all of them are %v", byOp, res.requests)
	}
	if res.ops["RespondWorkflowTaskCompleted"] < float64(res.guests) {
		t.Errorf("%v RespondWorkflowTaskCompleted for %d guests", res.ops["RespondWorkflowTaskCompleted"], res.guests)
	}
	// Each guest's time is split into its stages, and its steps include
	// its tasks.
	for name, times := range map[string][]time.Duration{"to first step": res.hist.toFirstStep, "in steps": res.hist.inSteps, "to converged": res.hist.toConverged} {
		if len(times) != res.guests {
			t.Errorf("%s: %d guests' times, want %d", name, len(times), res.guests)
		}
	}
	for _, d := range res.hist.inSteps {
		if d < 20*time.Millisecond {
			t.Errorf("a guest spent %s in steps, less than its two tasks of at least 10ms", d)
		}
	}
	if res.workerCPU <= 0 || res.serverCPU <= 0 {
		t.Errorf("CPU used while converging: workers %s, server and simulators %s; want both above zero", res.workerCPU, res.serverCPU)
	}
	if res.submitted <= 0 || res.submitted > res.elapsed {
		t.Errorf("last desired state accepted after %s of a %s converge", res.submitted, res.elapsed)
	}
	// The direct loop made exactly the agent's mutations.
	if res.loopMutations != res.mutations {
		t.Errorf("direct loop made %d mutations, the agent %d", res.loopMutations, res.mutations)
	}
	if res.polls < 1 || res.polls >= res.calls {
		t.Errorf("%d task polls of %d calls", res.polls, res.calls)
	}
	// The loop only sends the mutations and polls their tasks.
	if res.loopCalls != int64(res.loopMutations)+res.loopPolls {
		t.Errorf("direct loop: %d calls for %d mutations and %d task polls", res.loopCalls, res.loopMutations, res.loopPolls)
	}
	if res.loopCalls < int64(res.loopMutations) {
		t.Errorf("direct loop: %d calls for %d mutations", res.loopCalls, res.loopMutations)
	}
	// Each guest ran at least two tasks of at least 10ms.
	if res.critical < 20*time.Millisecond || res.critical > 5*50*time.Millisecond {
		t.Errorf("critical path %s, want the sum of a few tasks of 10ms-50ms", res.critical)
	}
	if res.floorRequests <= 0 || res.floorElapsed <= 0 {
		t.Errorf("floor: %d requests in %s", res.floorRequests, res.floorElapsed)
	}
	for _, f := range []string{"time", "rate", "proxmox calls per guest"} {
		if v, ok := r.value("converge", f); !ok || v <= 0 {
			t.Errorf("converge %s = %v (present %v)", f, v, ok)
		}
	}
	if _, ok := r.value("ratio", "agent / direct loop"); !ok {
		t.Error("no ratio agent / direct loop")
	}
}

func TestTaskClockIsSeededAndSumsPerGuest(t *testing.T) {
	a := newTaskClock(7, "pve01", time.Second, 3*time.Second)
	b := newTaskClock(7, "pve01", time.Second, 3*time.Second)
	other := newTaskClock(8, "pve01", time.Second, 3*time.Second)
	var sum time.Duration
	differs := false
	for i, typ := range []string{"qmcreate", "qmstart", "qmcreate", "qmstart"} {
		vmid := 1000 + i%2
		d := a.duration(typ, vmid)
		if d < time.Second || d > 3*time.Second {
			t.Fatalf("%s of %d: %s outside 1s-3s", typ, vmid, d)
		}
		if d2 := b.duration(typ, vmid); d2 != d {
			t.Fatalf("same seed drew %s and %s", d, d2)
		}
		if other.duration(typ, vmid) != d {
			differs = true
		}
		if vmid == 1000 {
			sum += d
		}
	}
	if !differs {
		t.Error("another seed drew the same four durations")
	}
	if cp := a.criticalPath(); cp < sum {
		t.Errorf("critical path %s shorter than guest 1000's sum %s", cp, sum)
	}
	a.reset()
	if cp := a.criticalPath(); cp != 0 {
		t.Errorf("critical path %s after reset", cp)
	}
	if zero := newTaskClock(1, "h", 0, 0).duration("qmstart", 1); zero != 0 {
		t.Errorf("range 0 drew %s", zero)
	}
}

func TestDuplicates(t *testing.T) {
	req := func(method, path string, vmid, status int) pvesim.Request {
		return pvesim.Request{Method: method, Path: path, VMID: vmid, Status: status}
	}
	tests := []struct {
		name string
		reqs []pvesim.Request
		want int
	}{
		{"create and start of two guests", []pvesim.Request{
			req("POST", "/nodes/h/qemu", 1000, 200), req("POST", "/nodes/h/qemu", 1001, 200),
			req("POST", "/nodes/h/qemu/1000/status/start", 1000, 200),
		}, 0},
		{"a start sent twice", []pvesim.Request{
			req("POST", "/nodes/h/qemu/1000/status/start", 1000, 200), req("POST", "/nodes/h/qemu/1000/status/start", 1000, 200),
		}, 1},
		{"a create sent twice", []pvesim.Request{req("POST", "/nodes/h/qemu", 1000, 200), req("POST", "/nodes/h/qemu", 1000, 200)}, 1},
		{"a refused retry is no duplicate", []pvesim.Request{
			req("POST", "/nodes/h/qemu", 1000, 200), req("POST", "/nodes/h/qemu", 1000, 500),
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := duplicates(tt.reqs); got != tt.want {
				t.Errorf("duplicates = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestParseRange(t *testing.T) {
	tests := []struct {
		in      string
		lo, hi  time.Duration
		wantErr bool
	}{
		{"0", 0, 0, false},
		{"2s", 2 * time.Second, 2 * time.Second, false},
		{"1s-3s", time.Second, 3 * time.Second, false},
		{"500ms-1s", 500 * time.Millisecond, time.Second, false},
		{"3s-1s", 0, 0, true},
		{"fast", 0, 0, true},
		{"1s-", 0, 0, true},
	}
	for _, tt := range tests {
		lo, hi, err := parseRange(tt.in)
		if (err != nil) != tt.wantErr || (err == nil && (lo != tt.lo || hi != tt.hi)) {
			t.Errorf("parseRange(%q) = %s, %s, %v", tt.in, lo, hi, err)
		}
	}
}

func TestLabel(t *testing.T) {
	for _, tc := range []struct {
		labels, name, want string
		ok                 bool
	}{
		{`namespace="default",operation="PollWorkflowTaskQueue"} 3`, "operation", "PollWorkflowTaskQueue", true},
		{`operation="Check",x="y"} 1`, "operation", "Check", true},
		{`suboperation="No",operation="Yes"} 1`, "operation", "Yes", true},
		{`suboperation="No"} 1`, "operation", "", false},
		{`} 1`, "operation", "", false},
	} {
		got, ok := label(tc.labels, tc.name)
		if got != tc.want || ok != tc.ok {
			t.Errorf("label(%q, %q) = %q, %v; want %q, %v", tc.labels, tc.name, got, ok, tc.want, tc.ok)
		}
	}
}
