package pvesim_test

import (
	"context"
	"strings"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestConfigLockRefusesChanges(t *testing.T) {
	tests := []struct {
		name    string
		kind    pvesim.Kind
		change  func(t *testing.T, c *proxmox.Client, archive string) error
		wantErr string
	}{
		{"qemu config POST", pvesim.KindQEMU, func(t *testing.T, c *proxmox.Client, archive string) error {
			_, err := vmOf(t, c, 101).Config(context.Background(), proxmox.VirtualMachineOption{Name: "cores", Value: 4})
			return err
		}, "500 VM is locked (backup)"},
		{"qemu config PUT", pvesim.KindQEMU, func(t *testing.T, c *proxmox.Client, archive string) error {
			return vmOf(t, c, 101).ConfigSync(context.Background(), proxmox.VirtualMachineOption{Name: "cores", Value: 4})
		}, "500 VM is locked (backup)"},
		{"lxc config PUT", pvesim.KindLXC, func(t *testing.T, c *proxmox.Client, archive string) error {
			_, err := ctOf(t, c, 101).Config(context.Background(), proxmox.ContainerOption{Name: "cores", Value: 4})
			return err
		}, "500 CT is locked (backup)"},
		{"qemu restore over it", pvesim.KindQEMU, func(t *testing.T, c *proxmox.Client, archive string) error {
			_, err := nodeOf(t, c).NewVirtualMachine(context.Background(), 101,
				proxmox.VirtualMachineOption{Name: "archive", Value: archive},
				proxmox.VirtualMachineOption{Name: "force", Value: 1})
			return err
		}, "500 unable to restore VM 101 - VM is locked (backup)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			g := pvesim.Guest{VMID: 101, Cores: 2, Lock: "backup"}
			if tt.kind == pvesim.KindLXC {
				mustAdd(t, srv.AddContainer(g))
			} else {
				mustAdd(t, srv.AddVM(g))
			}
			archive, err := srv.AddBackup(tt.kind, pvesim.Guest{VMID: 101})
			if err != nil {
				t.Fatal(err)
			}
			err = tt.change(t, client, archive)
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if after, _ := srv.Guest(101); after.Cores != 2 || after.Lock != "backup" {
				t.Fatalf("guest changed under lock: %+v", after)
			}
		})
	}
}

func TestRunningTaskHoldsTheConfigLock(t *testing.T) {
	tests := []struct {
		name        string
		lockTimeout time.Duration
		wantErr     string
		wantCores   int
	}{
		{"waits for the task", 5 * time.Second, "", 4},
		{"gives up after the lock timeout", 20 * time.Millisecond, "500 can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			duration := 300 * time.Millisecond
			if tt.wantErr != "" {
				// long enough that a loaded machine still sends the PUT in time
				duration = 5 * time.Second
			}
			srv, client := newSim(t, pvesim.Config{TaskDuration: duration, LockTimeout: tt.lockTimeout})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Cores: 2}))
			vm := vmOf(t, client, 101)
			start, err := vm.Start(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			err = vm.ConfigSync(context.Background(), proxmox.VirtualMachineOption{Name: "cores", Value: 4})
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if tt.wantErr == "" {
				// it only got the lock once the start had finished
				if err := start.Ping(context.Background()); err != nil || !start.IsCompleted {
					t.Fatalf("config applied while start task still running (%v)", err)
				}
			}
			if tt.wantErr != "" {
				if err := start.Stop(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			finished(t, start)
			if g, _ := srv.Guest(101); g.Cores != tt.wantCores && len(g.Pending) == 0 {
				t.Fatalf("cores %d pending %v, want %d", g.Cores, g.Pending, tt.wantCores)
			}
		})
	}
}

func TestSecondTaskOnBusyGuestTimesOutInTask(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{TaskDuration: time.Millisecond, LockTimeout: 20 * time.Millisecond,
		TaskDurations: map[string]time.Duration{"qmshutdown": 2 * time.Second}})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running"}))
	vm := vmOf(t, client, 101)
	first, err := vm.Shutdown(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	second, err := vm.Stop(context.Background())
	if err != nil {
		t.Fatalf("stop is accepted and fails in its task, got %v", err)
	}
	if exit := finished(t, second); exit != "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout" {
		t.Fatalf("second task %q", exit)
	}
	if err := first.Ping(context.Background()); err != nil || first.IsCompleted {
		t.Fatalf("first task completed=%v (%v), want still running", first.IsCompleted, err)
	}
	if err := first.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestVzdumpHoldsBackupLock(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{TaskDuration: time.Millisecond,
		TaskDurations: map[string]time.Duration{"vzdump": time.Second}})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running", Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}}))
	ctx := context.Background()
	node := nodeOf(t, client)
	backup, err := node.Vzdump(ctx, &proxmox.VirtualMachineBackupOptions{VMID: 101, Storage: "local", Mode: "snapshot"})
	if err != nil {
		t.Fatalf("vzdump: %v", err)
	}
	vm := vmOf(t, client, 101)
	if vm.Lock != "backup" {
		t.Fatalf("lock during backup %q", vm.Lock)
	}
	stop, err := vm.Stop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if exit := finished(t, stop); exit != "VM is locked (backup)" {
		t.Fatalf("stop during backup %q", exit)
	}
	if exit := finished(t, backup); exit != "OK" {
		t.Fatalf("backup %q", exit)
	}
	if vm := vmOf(t, client, 101); vm.Lock != "" {
		t.Fatalf("lock after backup %q", vm.Lock)
	}
	found := false
	for _, v := range srv.Volumes() {
		found = found || strings.HasPrefix(v, "local:backup/vzdump-qemu-101-") && strings.HasSuffix(v, ".vma.zst")
	}
	if !found {
		t.Fatalf("no archive among %v", srv.Volumes())
	}
}

func TestTaskQueuedBehindADestroy(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{TaskDuration: time.Millisecond,
		TaskDurations: map[string]time.Duration{"qmdestroy": time.Second}})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	vm := vmOf(t, client, 101)
	destroy, err := vm.Delete(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	start, err := vm.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if exit := finished(t, destroy); exit != "OK" {
		t.Fatalf("destroy %q", exit)
	}
	if exit := finished(t, start); exit != "Configuration file 'nodes/pve1/qemu-server/101.conf' does not exist" {
		t.Fatalf("start after destroy: %q (upids %s then %s)", exit, destroy.UPID, start.UPID)
	}
}

// qemu-server's asynchronous config update checks the lock and the digest
// once before it forks and again in its worker, under the config lock: what
// changed in between fails the task, not the request.
func TestQEMUConfigPOSTChecksAgainInItsTask(t *testing.T) {
	tests := []struct {
		name string
		// meanwhile runs while the first task holds the config lock, after
		// the second update was accepted.
		meanwhile  func(t *testing.T, srv *pvesim.Server)
		withDigest bool
		lockWait   time.Duration
		// timesOut: the second task gives up waiting for the lock while the
		// first still holds it.
		timesOut bool
		wantExit string
	}{
		{name: "a lock set meanwhile", meanwhile: func(t *testing.T, srv *pvesim.Server) { mustAdd(t, srv.SetLock(101, "backup")) },
			lockWait: 5 * time.Second, wantExit: "VM is locked (backup)"},
		{name: "the config changed meanwhile", withDigest: true,
			lockWait: 5 * time.Second, wantExit: "checksum mismatch (file change by other user?)"},
		{name: "the lock not free in time", lockWait: 20 * time.Millisecond, timesOut: true,
			wantExit: "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{LockTimeout: tt.lockWait})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Cores: 2, MemoryMiB: 512}))
			vm := vmOf(t, client, 101)
			hook := pvesim.NewHook()
			srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/101/config", Kind: pvesim.FaultHoldTask, Hook: hook})
			first, err := postTask(t, client, "/nodes/pve1/qemu/101/config", map[string]any{"memory": "1024"})
			if err != nil {
				t.Fatal(err)
			}
			<-hook.Hit()
			params := map[string]any{"cores": 4}
			if tt.withDigest {
				params["digest"] = vm.VirtualMachineConfig.Digest
			}
			second, err := postTask(t, client, "/nodes/pve1/qemu/101/config", params)
			if err != nil {
				t.Fatalf("the update is accepted and checked again in its task, got %v", err)
			}
			if tt.meanwhile != nil {
				tt.meanwhile(t, srv)
			}
			if tt.timesOut {
				waitTaskDone(t, srv, string(second.UPID))
			}
			hook.Release()
			if exit := finished(t, first); exit != "OK" {
				t.Fatalf("first update %q", exit)
			}
			if exit := finished(t, second); exit != tt.wantExit {
				t.Fatalf("second update %q, want %q", exit, tt.wantExit)
			}
			if g, _ := srv.Guest(101); g.Cores != 2 {
				t.Fatalf("cores %d after a failed update", g.Cores)
			}
		})
	}
}
