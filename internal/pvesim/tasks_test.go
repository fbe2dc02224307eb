package pvesim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

var upidRE = regexp.MustCompile(`^UPID:pve1:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:([a-z]+):([^:]*):([^:]+):$`)

func TestTaskRunsThenStopsWithUPIDStatusAndLog(t *testing.T) {
	// long enough that even a loaded machine polls it while it runs
	srv, client := newSim(t, pvesim.Config{TaskDuration: time.Second})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Name: "web"}))
	ctx := context.Background()
	vm := vmOf(t, client, 101)

	task, err := vm.Start(ctx)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	m := upidRE.FindStringSubmatch(string(task.UPID))
	if m == nil || m[1] != "qmstart" || m[2] != "101" || m[3] != srv.TokenID() {
		t.Fatalf("UPID %q does not have pve's format", task.UPID)
	}
	if err := task.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if task.Status != "running" || task.IsCompleted {
		t.Fatalf("fresh task status %q completed=%v, want running", task.Status, task.IsCompleted)
	}

	// The status reply carries upid and node, which go-proxmox needs.
	status := raw(t, srv, "GET", "/nodes/pve1/tasks/"+string(task.UPID)+"/status", nil, "")
	var st map[string]any
	if err := json.Unmarshal(status.Data, &st); err != nil {
		t.Fatalf("status body %s: %v", status.Body, err)
	}
	if st["upid"] != string(task.UPID) || st["node"] != "pve1" || st["status"] != "running" {
		t.Fatalf("status reply %v", st)
	}
	if _, has := st["exitstatus"]; has {
		t.Errorf("running task has exitstatus: %v", st)
	}

	waitTask(t, task)
	if task.Status != "stopped" || task.ExitStatus != "OK" || !task.IsSuccessful {
		t.Fatalf("after wait: status %q exit %q", task.Status, task.ExitStatus)
	}
	log, err := task.Log(ctx, 0, 50)
	if err != nil {
		t.Fatalf("log: %v", err)
	}
	if len(log) == 0 || log[len(log)-1] != "TASK OK" {
		t.Fatalf("log = %v, want last line TASK OK", log)
	}
}

func TestTaskList(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{TaskDuration: time.Millisecond})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 102}))
	for _, id := range []int{101, 102} {
		task, err := vmOf(t, client, id).Start(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		waitTask(t, task)
	}
	tests := []struct {
		name, query string
		want        int
	}{
		{"all finished", "", 2},
		{"one guest", "?vmid=102", 1},
		{"type filter", "?typefilter=qmstop", 0},
		{"active only", "?source=active", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rows []map[string]any
			if err := client.Get(context.Background(), "/nodes/pve1/tasks"+tt.query, &rows); err != nil {
				t.Fatal(err)
			}
			if len(rows) != tt.want {
				t.Fatalf("got %d rows, want %d: %v", len(rows), tt.want, rows)
			}
			for _, r := range rows {
				if r["status"] != "OK" || !strings.HasPrefix(r["upid"].(string), "UPID:pve1:") {
					t.Errorf("row %v", r)
				}
			}
		})
	}
}

func TestTaskStopInterruptsIt(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{TaskDuration: time.Hour})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	task, err := vmOf(t, client, 101).Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Stop(context.Background()); err != nil {
		t.Fatalf("stop task: %v", err)
	}
	if got := finished(t, task); got != "interrupted by signal" {
		t.Fatalf("exit status %q", got)
	}
	if g, _ := srv.Guest(101); g.Status != "stopped" {
		t.Errorf("interrupted start still started the VM")
	}
}

func TestTaskStatusErrors(t *testing.T) {
	srv, _ := newSim(t, pvesim.Config{})
	tests := []struct {
		name, upid, want string
	}{
		{"malformed", "UPID:pve1:zz", "400 Parameter verification failed."},
		{"unknown", "UPID:pve1:00001234:00ABCDEF:6560A1B2:qmstart:101:root@pam:",
			"500 unable to open file '/var/log/pve/tasks/UPID:pve1:00001234:00ABCDEF:6560A1B2:qmstart:101:root@pam:' - No such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := raw(t, srv, "GET", "/nodes/pve1/tasks/"+tt.upid+"/status", nil, "")
			if got.Status != tt.want {
				t.Fatalf("status %q, want %q", got.Status, tt.want)
			}
		})
	}
}

// Config.Clock dates tasks: the UPID, the status and the list carry its time.
func TestTaskTimesFollowTheNodeClock(t *testing.T) {
	at := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	srv, client := newSim(t, pvesim.Config{TaskDuration: time.Millisecond, Clock: func() time.Time { return at }})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	task, err := vmOf(t, client, 101).Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	waitTask(t, task)
	if want := fmt.Sprintf(":%08X:qmstart:", at.Unix()); !strings.Contains(string(task.UPID), want) {
		t.Errorf("UPID %s does not carry the node's start time %s", task.UPID, want)
	}
	if task.StartTime.Unix() != at.Unix() || task.EndTime.Unix() != at.Unix() {
		t.Errorf("status start %v end %v, want %v", task.StartTime, task.EndTime, at)
	}
	var rows []map[string]any
	if err := client.Get(context.Background(), "/nodes/pve1/tasks", &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0]["starttime"] != float64(at.Unix()) || rows[0]["endtime"] != float64(at.Unix()) {
		t.Errorf("task list %v, want start and end at %d", rows, at.Unix())
	}
}
