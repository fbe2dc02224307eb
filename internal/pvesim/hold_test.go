package pvesim_test

import (
	"context"
	"testing"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// allTasks lists the node's tasks, running or finished, as the API shows them.
func allTasks(t *testing.T, client *proxmox.Client) []map[string]any {
	t.Helper()
	var rows []map[string]any
	if err := client.Get(context.Background(), "/nodes/pve1/tasks?source=all", &rows); err != nil {
		t.Fatal(err)
	}
	return rows
}

// startAsync starts vm in a goroutine and returns where its error arrives.
func startAsync(ctx context.Context, vm *proxmox.VirtualMachine) <-chan error {
	res := make(chan error, 1)
	go func() {
		_, err := vm.Start(ctx)
		res <- err
	}()
	return res
}

// awaitHit waits until the simulator has the request whose answer arrives
// on res, failing the test when the call ends first.
func awaitHit(t *testing.T, hook *pvesim.Hook, res <-chan error) {
	t.Helper()
	select {
	case <-hook.Hit():
	case err := <-res:
		t.Fatalf("the call ended before the simulator had it: %v", err)
	}
}

// A held request is not served until the hook is released, then served as
// usual; Hit and Done mark both ends.
func TestFaultHoldServesOnRelease(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	vm := vmOf(t, client, 101)
	hook := pvesim.NewHook()
	srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/*/status/start", Kind: pvesim.FaultHold, Hook: hook})

	res := startAsync(context.Background(), vm)
	awaitHit(t, hook, res)
	if rows := allTasks(t, client); len(rows) != 0 {
		t.Fatalf("tasks while the start is held: %v", rows)
	}
	if reqs := srv.Requests(); len(reqs) != 1 || reqs[0].Status != 0 || reqs[0].UPID != "" {
		t.Fatalf("records while held: %+v", reqs)
	}
	select {
	case <-hook.Done():
		t.Fatal("Done before the release")
	case err := <-res:
		t.Fatalf("the client got an answer while held: %v", err)
	default:
	}
	hook.Release()
	if err := <-res; err != nil {
		t.Fatalf("start after the release: %v", err)
	}
	<-hook.Done()
	reqs := srv.Requests()
	if len(reqs) != 1 || reqs[0].Status != 200 || reqs[0].UPID == "" || reqs[0].Fault != pvesim.FaultHold {
		t.Fatalf("records after the release: %+v", reqs)
	}
	done, ok := srv.TaskDone(reqs[0].UPID)
	if !ok {
		t.Fatalf("TaskDone does not know %s", reqs[0].UPID)
	}
	<-done
	if g, _ := srv.Guest(101); g.Status != "running" {
		t.Fatalf("status %q after the released start's task", g.Status)
	}
}

// A client that goes away while its request is held caused nothing
// (FaultHold); one that goes away while the reply is held sent a call that
// took effect (FaultHoldAfter).
func TestFaultHoldClientGoesAway(t *testing.T) {
	for kind, tookEffect := range map[pvesim.FaultKind]bool{pvesim.FaultHold: false, pvesim.FaultHoldAfter: true} {
		t.Run(string(kind), func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
			vm := vmOf(t, client, 101)
			hook := pvesim.NewHook()
			srv.Inject(pvesim.Fault{Method: "POST", Kind: kind, Hook: hook})

			ctx, cancel := context.WithCancel(context.Background())
			res := startAsync(ctx, vm)
			awaitHit(t, hook, res)
			cancel()
			if err := <-res; err == nil {
				t.Fatal("the abandoned start reported success")
			}
			<-hook.Done() // the server saw the client go, without a release
			reqs := srv.Requests()
			if len(reqs) != 1 || reqs[0].Status != 0 || (reqs[0].UPID != "") != tookEffect {
				t.Fatalf("records %+v, want one dropped (status 0), with a task: %v", reqs, tookEffect)
			}
			if !tookEffect {
				if rows := allTasks(t, client); len(rows) != 0 {
					t.Fatalf("the abandoned held request started tasks: %v", rows)
				}
				if g, _ := srv.Guest(101); g.Status != "stopped" {
					t.Fatalf("status %q: the abandoned request took effect", g.Status)
				}
				return
			}
			done, ok := srv.TaskDone(reqs[0].UPID)
			if !ok {
				t.Fatalf("TaskDone does not know %s", reqs[0].UPID)
			}
			<-done
			if g, _ := srv.Guest(101); g.Status != "running" {
				t.Fatalf("status %q, want the start's effect", g.Status)
			}
		})
	}
}

// Any fault kind reports through its hook.
func TestFaultHookReportsOtherKinds(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	hook := pvesim.NewHook()
	srv.Inject(pvesim.Fault{Path: "/version", Kind: pvesim.FaultHTTPError, Message: "busy", Hook: hook})
	select {
	case <-hook.Hit():
		t.Fatal("Hit before any request")
	default:
	}
	if _, err := client.Version(context.Background()); errText(err) != "500 busy" {
		t.Fatalf("error %v", err)
	}
	<-hook.Hit()
	<-hook.Done()
}

func TestTaskDoneOfAnUnknownTask(t *testing.T) {
	srv, _ := newSim(t, pvesim.Config{})
	if _, ok := srv.TaskDone("UPID:pve1:00001007:00100000:65432100:qmstart:101:root@pam!felhom:"); ok {
		t.Fatal("TaskDone knows a task that never ran")
	}
}
