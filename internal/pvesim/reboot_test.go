package pvesim_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// A node that goes down under its tasks: pve finds each of them stopped
// with "unexpected status" (their logs have no final line), and the guests
// as the dead workers left them.
func TestRebootNodeLosesRunningTasks(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, srv *pvesim.Server)
		path  string
		send  func(t *testing.T, client *proxmox.Client) (*proxmox.Task, error)
		// check looks at guest 101 and the volumes afterwards.
		check func(t *testing.T, g pvesim.Guest, exists bool, volumes []string)
	}{
		{name: "qemu create", path: "/nodes/*/qemu",
			send: func(t *testing.T, c *proxmox.Client) (*proxmox.Task, error) {
				return postTask(t, c, "/nodes/pve1/qemu", map[string]any{"vmid": 101, "name": "app", "memory": "512",
					"scsi0": "local-lvm:8", "description": "felhom-instance: 0123"})
			},
			check: func(t *testing.T, g pvesim.Guest, exists bool, volumes []string) {
				if !exists || g.Lock != "create" || g.Name != "" || g.Description != "" || len(g.Disks) != 0 {
					t.Fatalf("half-created guest %+v (exists %v), want only the lock create", g, exists)
				}
				if !slices.Contains(volumes, "local-lvm:vm-101-disk-0") {
					t.Fatalf("volumes %v: the create's disk is gone", volumes)
				}
			}},
		{name: "lxc create", path: "/nodes/*/lxc",
			send: func(t *testing.T, c *proxmox.Client) (*proxmox.Task, error) {
				return postTask(t, c, "/nodes/pve1/lxc", map[string]any{"vmid": 101, "hostname": "app",
					"ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst", "rootfs": "local-lvm:8"})
			},
			check: func(t *testing.T, g pvesim.Guest, exists bool, volumes []string) {
				if !exists || g.Lock != "create" || g.Name != "" || len(g.Disks) != 0 {
					t.Fatalf("half-created container %+v (exists %v), want only the lock create", g, exists)
				}
				if !slices.Contains(volumes, "local-lvm:vm-101-disk-0") {
					t.Fatalf("volumes %v: the create's disk is gone", volumes)
				}
			}},
		{name: "qemu destroy", path: "/nodes/*/qemu/101",
			setup: func(t *testing.T, srv *pvesim.Server) {
				mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}}))
			},
			send: func(t *testing.T, c *proxmox.Client) (*proxmox.Task, error) {
				return vmOf(t, c, 101).Delete(context.Background(), nil)
			},
			check: func(t *testing.T, g pvesim.Guest, exists bool, volumes []string) {
				if !exists || g.Lock != "destroyed" || len(g.Disks) != 0 || g.Name != "" {
					t.Fatalf("remnant %+v (exists %v), want only the lock destroyed", g, exists)
				}
				if len(volumes) != 0 {
					t.Fatalf("volumes %v, want the destroy's disks freed", volumes)
				}
			}},
		{name: "start", path: "/nodes/*/qemu/101/status/start",
			setup: func(t *testing.T, srv *pvesim.Server) { mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Name: "g"})) },
			send: func(t *testing.T, c *proxmox.Client) (*proxmox.Task, error) {
				return vmOf(t, c, 101).Start(context.Background())
			},
			check: func(t *testing.T, g pvesim.Guest, exists bool, volumes []string) {
				if !exists || g.Lock != "" || g.Status != "stopped" || g.Name != "g" {
					t.Fatalf("guest %+v, want it stopped as it was", g)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{StrictPVE: true})
			if tt.setup != nil {
				tt.setup(t, srv)
			}
			hook := pvesim.NewHook()
			srv.Inject(pvesim.Fault{Path: tt.path, Kind: pvesim.FaultHoldTask, Hook: hook})
			task, err := tt.send(t, client)
			if err != nil {
				t.Fatal(err)
			}
			<-hook.Hit()
			srv.RebootNode()
			if exit := finished(t, task); exit != "unexpected status" {
				t.Fatalf("exit %q, want unexpected status", exit)
			}
			log, err := task.Log(context.Background(), 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(log) > 0 && strings.HasPrefix(log[len(log)-1], "TASK ") {
				t.Fatalf("log ends %q: a lost task has no final status line", log[len(log)-1])
			}
			g, exists := srv.Guest(101)
			tt.check(t, g, exists, srv.Volumes())
			hook.Release()
		})
	}
}

// A reboot stops every guest; pve-guests starts those with onboot=1 again.
func TestRebootNodeStartsOnbootGuests(t *testing.T) {
	srv, _ := newSim(t, pvesim.Config{StrictPVE: true})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running", Config: map[string]string{"onboot": "1"}}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 102, Status: "running"}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 103, Status: "running", Lock: "backup", Config: map[string]string{"onboot": "1"}}))
	srv.RebootNode()
	for vmid, want := range map[int]string{101: "running", 102: "stopped", 103: "stopped"} {
		if g, _ := srv.Guest(vmid); g.Status != want {
			t.Errorf("guest %d %s after the reboot, want %s", vmid, g.Status, want)
		}
	}
}

// The node's status gives its uptime on the node's clock, so that now
// minus it is the last boot: a day at Start, zero again after a reboot.
func TestRebootNodeRestartsUptime(t *testing.T) {
	var mu sync.Mutex
	at := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return at }
	advance := func(d time.Duration) { mu.Lock(); at = at.Add(d); mu.Unlock() }
	srv, client := newSim(t, pvesim.Config{StrictPVE: true, Clock: clock})
	uptime := func() uint64 {
		t.Helper()
		n, err := client.Node(context.Background(), "pve1")
		if err != nil {
			t.Fatal(err)
		}
		return n.Uptime
	}
	advance(90 * time.Second)
	if got, want := uptime(), uint64(86400+90); got != want {
		t.Fatalf("uptime %d before the reboot, want %d", got, want)
	}
	srv.RebootNode()
	if got := uptime(); got != 0 {
		t.Fatalf("uptime %d right after the reboot, want 0", got)
	}
	advance(1500 * time.Millisecond)
	if got := uptime(); got != 1 {
		t.Fatalf("uptime %d 1.5s after the reboot, want 1 (whole seconds)", got)
	}
}

// Root clears a lost destroy's remnant on the node's shell: the guest and
// its disks go, the VMID is free, and nothing reaches the request log.
func TestPurgeAsRootClearsARemnant(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{StrictPVE: true})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}}))
	hook := pvesim.NewHook()
	srv.Inject(pvesim.Fault{Path: "/nodes/*/qemu/101", Kind: pvesim.FaultHoldTask, Hook: hook})
	task, err := vmOf(t, client, 101).Delete(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	<-hook.Hit()
	srv.RebootNode()
	finished(t, task)
	hook.Release()
	if g, _ := srv.Guest(101); g.Lock != "destroyed" {
		t.Fatalf("guest %+v, want the remnant locked destroyed", g)
	}
	logged := len(srv.Requests())
	if err := srv.PurgeAsRoot(101); err != nil {
		t.Fatal(err)
	}
	if g, exists := srv.Guest(101); exists {
		t.Fatalf("guest %+v still there after root purged it", g)
	}
	if n := len(srv.Requests()); n != logged {
		t.Fatalf("%d requests logged by root's shell commands, want none", n-logged)
	}
	if err := srv.PurgeAsRoot(101); err == nil {
		t.Fatal("purging a guest that is gone: no error")
	}
}

// A create lost in a reboot leaves a config locked "create" and the disks
// it had allocated, which no config names: root's purge takes both. While
// the create runs, its guest looks the same, and root's purge refuses.
func TestPurgeAsRootClearsALostCreateNotARunningOne(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{StrictPVE: true})
	hook := pvesim.NewHook()
	srv.Inject(pvesim.Fault{Path: "/nodes/*/qemu", Kind: pvesim.FaultHoldTask, Hook: hook})
	task, err := postTask(t, client, "/nodes/pve1/qemu", map[string]any{"vmid": 101, "name": "app", "memory": "512",
		"scsi0": "local-lvm:8"})
	if err != nil {
		t.Fatal(err)
	}
	<-hook.Hit()
	if err := srv.PurgeAsRoot(101); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("purge during the create: %v, want a refusal naming the running task", err)
	}
	srv.RebootNode()
	finished(t, task)
	hook.Release()
	if g, _ := srv.Guest(101); g.Lock != "create" || !slices.Contains(srv.Volumes(), "local-lvm:vm-101-disk-0") {
		t.Fatalf("guest %+v, volumes %v: want the lost create's remnant and its disk", g, srv.Volumes())
	}
	if err := srv.PurgeAsRoot(101); err != nil {
		t.Fatal(err)
	}
	if _, exists := srv.Guest(101); exists || slices.Contains(srv.Volumes(), "local-lvm:vm-101-disk-0") {
		t.Fatalf("after root's purge: guest there %v, volumes %v", exists, srv.Volumes())
	}
}
