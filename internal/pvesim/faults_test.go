package pvesim_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestFaultsOnStart(t *testing.T) {
	startPath := "/nodes/*/qemu/*/status/start"
	tests := []struct {
		name        string
		fault       pvesim.Fault
		wantErr     string // substring of go-proxmox's error; "" for none
		wantExit    string // task exit status when a task came back
		wantRunning bool   // the side effect happened
		wantStatus  int    // recorded HTTP status
	}{
		{"http 500", pvesim.Fault{Path: startPath, Kind: pvesim.FaultHTTPError, Message: "pvedaemon is restarting"},
			"500 pvedaemon is restarting", "", false, 500},
		{"http 596 busy proxy", pvesim.Fault{Path: startPath, Kind: pvesim.FaultHTTPError, Status: 596, Message: "Connection timed out"},
			"unexpected end of JSON input", "", false, 596},
		{"http 595", pvesim.Fault{Path: startPath, Kind: pvesim.FaultHTTPError, Status: 595, Message: "Errors during connection establishment, proxy handshake failed"},
			"unexpected end of JSON input", "", false, 595},
		{"task error", pvesim.Fault{Path: startPath, Kind: pvesim.FaultTaskError, Message: "start failed: QEMU exited with code 1"},
			"", "start failed: QEMU exited with code 1", false, 200},
		{"task warnings", pvesim.Fault{Path: startPath, Kind: pvesim.FaultTaskWarnings},
			"", "WARNINGS: 1", true, 200},
		{"task warnings count", pvesim.Fault{Path: startPath, Kind: pvesim.FaultTaskWarnings, Message: "WARNINGS: 3"},
			"", "WARNINGS: 3", true, 200},
		{"drop before", pvesim.Fault{Path: startPath, Kind: pvesim.FaultDropBefore},
			"EOF", "", false, 0},
		{"596 after the side effect", pvesim.Fault{Path: startPath, Kind: pvesim.FaultHTTPErrorAfter},
			"unexpected end of JSON input", "", true, 596},
		{"drop after the side effect", pvesim.Fault{Path: startPath, Kind: pvesim.FaultDropAfter},
			"EOF", "", true, 0},
		{"lock timeout in the task", pvesim.Fault{Path: startPath, Kind: pvesim.FaultLockTimeout},
			"", "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout", false, 200},
		{"permission denied", pvesim.Fault{Path: startPath, Kind: pvesim.FaultHTTPError, Status: 403, Message: "Permission check failed (/vms/101, VM.PowerMgmt)"},
			proxmox.ErrNotAuthorized.Error(), "", false, 403},
		{"other guest unaffected", pvesim.Fault{VMID: 102, Kind: pvesim.FaultHTTPError},
			"", "OK", true, 200},
		{"other method unaffected", pvesim.Fault{Method: "GET", Path: startPath, Kind: pvesim.FaultHTTPError},
			"", "OK", true, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 102}))
			vm := vmOf(t, client, 101)
			srv.Inject(tt.fault)
			task, err := vm.Start(context.Background())
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && !strings.Contains(errText(err), tt.wantErr) {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if err == nil {
				if exit := finished(t, task); exit != tt.wantExit {
					t.Fatalf("exit %q, want %q", exit, tt.wantExit)
				}
				// go-proxmox counts pve's successful "WARNINGS: n" as a failure
				if strings.HasPrefix(tt.wantExit, "WARNINGS") && !task.IsFailed {
					t.Errorf("go-proxmox now treats %q as success: update the package doc", tt.wantExit)
				}
				log, err := task.Log(context.Background(), 0, 100)
				if err != nil {
					t.Fatal(err)
				}
				last := log[len(log)-1]
				if want := "TASK " + tt.wantExit; tt.wantExit != "OK" && !strings.HasPrefix(tt.wantExit, "WARNINGS") {
					if last != "TASK ERROR: "+tt.wantExit {
						t.Errorf("last log line %q", last)
					}
				} else if last != want {
					t.Errorf("last log line %q, want %q", last, want)
				}
			} else if reqs := srv.RequestsMatching("POST", "/nodes/pve1/qemu/101/status/start"); len(reqs) == 1 && reqs[0].UPID != "" {
				// a dropped start may still be running its task
				waitTaskDone(t, srv, reqs[0].UPID)
			}
			if g, _ := srv.Guest(101); (g.Status == "running") != tt.wantRunning {
				t.Fatalf("status %q, want running=%v", g.Status, tt.wantRunning)
			}
			reqs := srv.RequestsMatching("POST", "/nodes/pve1/qemu/101/status/start")
			if len(reqs) != 1 || reqs[0].Status != tt.wantStatus {
				t.Fatalf("recorded %+v, want one with status %d", reqs, tt.wantStatus)
			}
			if tt.fault.VMID == 0 && tt.fault.Method == "" && reqs[0].Fault != tt.fault.Kind {
				t.Errorf("recorded fault %q", reqs[0].Fault)
			}
			refusedBefore := tt.fault.VMID == 0 && tt.fault.Method == "" &&
				(tt.fault.Kind == pvesim.FaultHTTPError || tt.fault.Kind == pvesim.FaultDropBefore)
			if reqs[0].Served == refusedBefore {
				t.Errorf("recorded served=%v, want %v", reqs[0].Served, !refusedBefore)
			}
		})
	}
}

func TestFaultStatusLineAndBody(t *testing.T) {
	tests := []struct {
		name       string
		fault      pvesim.Fault
		wantStatus string
		wantBody   bool
	}{
		{"500 has body", pvesim.Fault{Kind: pvesim.FaultHTTPError, Message: "got timeout"}, "500 got timeout", true},
		{"596 has none", pvesim.Fault{Kind: pvesim.FaultHTTPError, Status: 596, Message: "Connection timed out"}, "596 Connection timed out", false},
		{"503 default text", pvesim.Fault{Kind: pvesim.FaultHTTPError, Status: 503}, "503 Service Unavailable", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newSim(t, pvesim.Config{})
			srv.Inject(tt.fault)
			got := raw(t, srv, http.MethodGet, "/version", nil, "")
			if got.Status != tt.wantStatus || (len(got.Body) > 0) != tt.wantBody {
				t.Fatalf("status %q body %q", got.Status, got.Body)
			}
		})
	}
}

// A 596 on a call without a result target is swallowed by go-proxmox:
// ConfigSync reports success though nothing changed.
func TestFault596LostByConfigSync(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, MemoryMiB: 2048}))
	vm := vmOf(t, client, 101)
	srv.Inject(pvesim.Fault{Method: "PUT", Kind: pvesim.FaultHTTPError, Status: 596, Message: "Connection timed out"})
	err := vm.ConfigSync(context.Background(), proxmox.VirtualMachineOption{Name: "memory", Value: 4096})
	if err != nil {
		t.Fatalf("go-proxmox now reports the 596 (%v): update the package doc", err)
	}
	if g, _ := srv.Guest(101); g.MemoryMiB != 2048 {
		t.Fatalf("memory %d: the faulted PUT took effect", g.MemoryMiB)
	}
}

func TestFaultTimesAndDelay(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	srv.Inject(pvesim.Fault{Path: "/version", Kind: pvesim.FaultHTTPError, Status: 500, Message: "busy", Times: 2})
	srv.Inject(pvesim.Fault{Path: "/version", Kind: pvesim.FaultDelay, Delay: 50 * time.Millisecond})
	ctx := context.Background()
	for i := range 2 {
		if _, err := client.Version(ctx); errText(err) != "500 busy" {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	start := time.Now()
	if _, err := client.Version(ctx); err != nil {
		t.Fatalf("third call: %v", err)
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Errorf("delay fault not applied")
	}
	if srv.PendingFaults() != 0 {
		t.Errorf("%d faults still armed", srv.PendingFaults())
	}
	srv.Inject(pvesim.Fault{Kind: pvesim.FaultHTTPError, Times: -1})
	for range 3 {
		if _, err := client.Version(ctx); err == nil {
			t.Fatal("unlimited fault stopped hitting")
		}
	}
	srv.ClearFaults()
	if _, err := client.Version(ctx); err != nil {
		t.Fatalf("after ClearFaults: %v", err)
	}
}

func TestFaultLockTimeoutOnSyncCall(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddContainer(pvesim.Guest{VMID: 200, MemoryMiB: 512}))
	srv.Inject(pvesim.Fault{VMID: 200, Method: "PUT", Kind: pvesim.FaultLockTimeout})
	_, err := ctOf(t, client, 200).Config(context.Background(), proxmox.ContainerOption{Name: "memory", Value: 1024})
	if want := "500 can't lock file '/run/lock/lxc/pve-config-200.lock' - got timeout"; errText(err) != want {
		t.Fatalf("error %q, want %q", errText(err), want)
	}
	if g, _ := srv.Guest(200); g.MemoryMiB != 512 {
		t.Fatalf("memory changed to %d", g.MemoryMiB)
	}
}

func TestDroppedConnectionIsANetworkError(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	srv.Inject(pvesim.Fault{Kind: pvesim.FaultDropBefore})
	_, err := client.Version(context.Background())
	if err == nil || errors.Is(err, proxmox.ErrNotAuthorized) {
		t.Fatalf("error %v, want a transport error", err)
	}
}

func TestSlowTasks(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{TaskDuration: time.Millisecond,
		TaskDurations: map[string]time.Duration{"qmshutdown": time.Hour}})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running"}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 102}))
	ctx := context.Background()
	shutdown, err := vmOf(t, client, 101).Shutdown(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srv.Inject(pvesim.Fault{VMID: 102, Kind: pvesim.FaultSlowTask, TaskDuration: time.Hour})
	start, err := vmOf(t, client, 102).Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A task of the normal duration, started after the slow ones, stops
	// while they still run.
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 103}))
	normal, err := vmOf(t, client, 103).Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitTaskDone(t, srv, string(normal.UPID))
	for _, task := range []*proxmox.Task{shutdown, start} {
		if err := task.Ping(ctx); err != nil || task.IsCompleted {
			t.Fatalf("%s completed=%v err=%v, want still running", task.Type, task.IsCompleted, err)
		}
		if err := task.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
	stop, err := vmOf(t, client, 102).Stop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if exit := finished(t, stop); exit != "OK" {
		t.Fatalf("normal task after the slow ones: %q", exit)
	}
}

func TestRawReplyFault(t *testing.T) {
	tests := []struct {
		name, body string
		call       func(*proxmox.Client) error
		wantErr    string
	}{
		{"malformed UPID", `{"data":"UPID:pve1:1:2:3:qmstart:101"}`, func(c *proxmox.Client) error {
			var upid proxmox.UPID
			err := c.Post(context.Background(), "/nodes/pve1/qemu/101/status/start", nil, &upid)
			if upid != "UPID:pve1:1:2:3:qmstart:101" {
				return fmt.Errorf("upid %q", upid)
			}
			return err
		}, ""},
		{"null status", `{"data":null}`, func(c *proxmox.Client) error {
			vm := &proxmox.VirtualMachine{}
			if err := c.Get(context.Background(), "/nodes/pve1/qemu/101/status/current", &vm); err != nil {
				return err
			}
			if vm != nil {
				return fmt.Errorf("data null did not reach the client: %+v", vm)
			}
			return nil
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
			srv.Inject(pvesim.Fault{Kind: pvesim.FaultRawReply, Message: tt.body})
			if err := tt.call(client); errText(err) != tt.wantErr {
				t.Fatalf("error %v", err)
			}
		})
	}
	// FaultRawReply serves nothing; FaultRawReplyAfter serves the call first.
	for kind, wantRunning := range map[pvesim.FaultKind]bool{pvesim.FaultRawReply: false, pvesim.FaultRawReplyAfter: true} {
		srv, client := newSim(t, pvesim.Config{})
		mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
		srv.Inject(pvesim.Fault{Method: "POST", Kind: kind, Message: `{"data":"UPID:pve1:1:2:3:qmstart:101"}`})
		var upid proxmox.UPID
		if err := client.Post(context.Background(), "/nodes/pve1/qemu/101/status/start", nil, &upid); err != nil {
			t.Fatal(err)
		}
		if wantRunning {
			reqs := srv.Requests()
			if len(reqs) != 1 || reqs[0].UPID == "" {
				t.Fatalf("%s: records %+v, want the start's task", kind, reqs)
			}
			waitTaskDone(t, srv, reqs[0].UPID)
			if g, _ := srv.Guest(101); g.Status != "running" {
				t.Fatalf("%s: status %q after the start's task", kind, g.Status)
			}
			continue
		}
		// A served call has its task in the list before the reply is sent.
		var active []map[string]any
		if err := client.Get(context.Background(), "/nodes/pve1/tasks?source=all", &active); err != nil {
			t.Fatal(err)
		}
		if g, _ := srv.Guest(101); g.Status != "stopped" || len(active) != 0 {
			t.Fatalf("%s: status %q, tasks %v; want nothing done", kind, g.Status, active)
		}
	}
}

// A client that gives up while the simulator delays the reply saw an error
// for a call that took effect (FaultDelayAfter); one that gives up during
// FaultDelay did not cause anything. The client gives up as soon as the
// simulator has its request.
func TestClientGivingUpBeforeAndAfterTheSideEffect(t *testing.T) {
	tests := []struct {
		kind        pvesim.FaultKind
		wantRunning bool
	}{
		{pvesim.FaultDelay, false},
		{pvesim.FaultDelayAfter, true},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
			vm := vmOf(t, client, 101)
			hook := pvesim.NewHook()
			srv.Inject(pvesim.Fault{Method: "POST", Kind: tt.kind, Delay: time.Minute, Hook: hook})
			ctx, cancel := context.WithCancel(context.Background())
			res := startAsync(ctx, vm)
			awaitHit(t, hook, res)
			cancel()
			if err := <-res; err == nil {
				t.Fatal("the abandoned start reported success")
			}
			// The simulator gives up the delay when the client goes, long
			// before the minute is over.
			<-hook.Done()
			if tt.wantRunning {
				reqs := srv.Requests()
				if len(reqs) != 1 || reqs[0].UPID == "" {
					t.Fatalf("records %+v, want the start's task", reqs)
				}
				waitTaskDone(t, srv, reqs[0].UPID)
				if g, _ := srv.Guest(101); g.Status != "running" {
					t.Fatalf("status %q, want the start's effect", g.Status)
				}
				return
			}
			if g, _ := srv.Guest(101); g.Status != "stopped" {
				t.Fatalf("status %q: the abandoned request took effect", g.Status)
			}
			if reqs := srv.Requests(); len(reqs) != 1 || reqs[0].Status != 0 || reqs[0].UPID != "" {
				t.Fatalf("records %+v", reqs)
			}
		})
	}
}

func TestFaultOnAVolumeIDWithASlash(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	archive, err := srv.AddBackup(pvesim.KindQEMU, pvesim.Guest{VMID: 101})
	if err != nil {
		t.Fatal(err)
	}
	srv.Inject(pvesim.Fault{Method: "DELETE", Path: "/nodes/*/storage/*/content/**", Kind: pvesim.FaultHTTPError, Message: "storage busy"})
	st, err := nodeOf(t, client).Storage(context.Background(), "local")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.DeleteContent(context.Background(), archive); errText(err) != "500 storage busy" {
		t.Fatalf("delete %s: %v", archive, err)
	}
	if got := srv.RequestsMatching("DELETE", "/nodes/pve1/storage/local/content/**"); len(got) != 1 || got[0].Path != "/nodes/pve1/storage/local/content/"+archive {
		t.Fatalf("recorded %+v", got)
	}
}

// A fault "after the side effect" on a request the route refuses (a
// synchronous config change of a locked guest): the client gets the 596 all
// the same, but nothing happened, and the record says so.
func TestFaultAfterARefusedRequestRecordsItUnserved(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{StrictPVE: true})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Cores: 1, Lock: "snapshot"}))
	srv.Inject(pvesim.Fault{Path: "/nodes/*/qemu/101/config", Kind: pvesim.FaultHTTPErrorAfter})
	// (go-proxmox reports no error for a bodiless 596 to a request whose
	// answer it does not read; the record holds the status.)
	_ = client.Put(context.Background(), "/nodes/pve1/qemu/101/config", map[string]any{"cores": 2}, nil)
	reqs := srv.RequestsMatching("PUT", "/nodes/*/qemu/101/config")
	if len(reqs) != 1 || reqs[0].Status != 596 || reqs[0].Fault != pvesim.FaultHTTPErrorAfter || reqs[0].Served {
		t.Fatalf("recorded %+v, want one 596 after the fact, not served", reqs)
	}
	if g, _ := srv.Guest(101); g.Cores != 1 {
		t.Fatalf("the locked guest has %d cores, want 1", g.Cores)
	}
}
