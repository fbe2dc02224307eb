package pvesim_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestQEMUPowerActions(t *testing.T) {
	tests := []struct {
		name       string
		guest      pvesim.Guest
		action     string
		params     map[string]any
		wantErr    string // synchronous error from go-proxmox
		wantExit   string // task exit status
		wantStatus string // power state afterwards
	}{
		{"start stopped", pvesim.Guest{Status: "stopped"}, "start", nil, "", "OK", "running"},
		{"start running fails in the task", pvesim.Guest{Status: "running"}, "start", nil, "", "VM 101 already running", "running"},
		{"stop running", pvesim.Guest{Status: "running"}, "stop", nil, "", "OK", "stopped"},
		{"stop stopped is fine", pvesim.Guest{Status: "stopped"}, "stop", nil, "", "OK", "stopped"},
		{"shutdown running", pvesim.Guest{Status: "running"}, "shutdown", map[string]any{"timeout": 30}, "", "OK", "stopped"},
		{"shutdown stopped is fine", pvesim.Guest{Status: "stopped"}, "shutdown", nil, "", "OK", "stopped"},
		{"shutdown ignored times out", pvesim.Guest{Status: "running", IgnoresShutdown: true}, "shutdown",
			map[string]any{"timeout": 5}, "", "VM quit/powerdown failed - got timeout", "running"},
		{"shutdown ignored with forceStop", pvesim.Guest{Status: "running", IgnoresShutdown: true}, "shutdown",
			map[string]any{"timeout": 5, "forceStop": true}, "", "WARNINGS: 1", "stopped"},
		{"reboot running", pvesim.Guest{Status: "running"}, "reboot", nil, "", "OK", "running"},
		{"reboot stopped refused at once", pvesim.Guest{Status: "stopped"}, "reboot", nil, "500 VM 101 not running", "", "stopped"},
		{"start under backup lock", pvesim.Guest{Status: "stopped", Lock: "backup"}, "start", nil, "", "VM is locked (backup)", "stopped"},
		{"stop under backup lock", pvesim.Guest{Status: "running", Lock: "backup"}, "stop", nil, "", "VM is locked (backup)", "running"},
		{"stop of a stopped VM under backup lock", pvesim.Guest{Status: "stopped", Lock: "backup"}, "stop", nil, "", "OK", "stopped"},
		{"shutdown of a stopped VM under backup lock", pvesim.Guest{Status: "stopped", Lock: "backup"}, "shutdown", nil, "", "OK", "stopped"},
		{"stop with skiplock", pvesim.Guest{Status: "running", Lock: "backup"}, "stop", map[string]any{"skiplock": 1}, "", "OK", "stopped"},
		{"start a template", pvesim.Guest{Config: map[string]string{"template": "1"}}, "start", nil, "", "you can't start a vm if it's a template", "stopped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			tt.guest.VMID = 101
			mustAdd(t, srv.AddVM(tt.guest))
			task, err := postTask(t, client, "/nodes/pve1/qemu/101/status/"+tt.action, tt.params)
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if tt.wantErr == "" {
				if got := finished(t, task); got != tt.wantExit {
					t.Fatalf("exit status %q, want %q", got, tt.wantExit)
				}
			}
			g, _ := srv.Guest(101)
			if g.Status != tt.wantStatus {
				t.Fatalf("status %q, want %q", g.Status, tt.wantStatus)
			}
			if vm := vmOf(t, client, 101); vm.Status != tt.wantStatus {
				t.Fatalf("status/current %q, want %q", vm.Status, tt.wantStatus)
			}
		})
	}
}

func TestQEMUConfigDigest(t *testing.T) {
	tests := []struct {
		name    string
		sync    bool
		digest  func(current string) string
		wantErr string
		wantMiB int
	}{
		{"async with current digest", false, func(d string) string { return d }, "", 4096},
		{"async without digest", false, func(string) string { return "" }, "", 4096},
		{"async stale digest", false, func(string) string { return strings.Repeat("0", 40) },
			"500 checksum mismatch (file change by other user?)", 2048},
		{"sync with current digest", true, func(d string) string { return d }, "", 4096},
		{"sync stale digest", true, func(string) string { return strings.Repeat("0", 40) },
			"500 checksum mismatch (file change by other user?)", 2048},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, MemoryMiB: 2048}))
			vm := vmOf(t, client, 101)
			opts := []proxmox.VirtualMachineOption{{Name: "memory", Value: 4096}}
			if d := tt.digest(vm.VirtualMachineConfig.Digest); d != "" {
				opts = append(opts, proxmox.VirtualMachineOption{Name: "digest", Value: d})
			}
			var err error
			if tt.sync {
				err = vm.ConfigSync(context.Background(), opts...)
			} else {
				var task *proxmox.Task
				task, err = vm.Config(context.Background(), opts...)
				if err == nil {
					if exit := finished(t, task); exit != "OK" {
						t.Fatalf("config task %q", exit)
					}
					if task.Type != "qmconfig" {
						t.Errorf("task type %q", task.Type)
					}
				}
			}
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			after := vmOf(t, client, 101)
			if int(after.VirtualMachineConfig.Memory) != tt.wantMiB {
				t.Fatalf("memory %d MiB, want %d", after.VirtualMachineConfig.Memory, tt.wantMiB)
			}
			changed := after.VirtualMachineConfig.Digest != vm.VirtualMachineConfig.Digest
			if changed != (tt.wantErr == "") {
				t.Errorf("digest changed=%v after error %q", changed, tt.wantErr)
			}
		})
	}
}

func TestQEMUPendingChangesOnRunningVM(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running", MemoryMiB: 2048, Cores: 2}))
	ctx := context.Background()
	vm := vmOf(t, client, 101)
	task, err := vm.Config(ctx,
		proxmox.VirtualMachineOption{Name: "memory", Value: 8192},
		proxmox.VirtualMachineOption{Name: "tags", Value: "web;prod"})
	if err != nil {
		t.Fatal(err)
	}
	finished(t, task)

	var current, pending map[string]any
	if err := client.Get(ctx, "/nodes/pve1/qemu/101/config?current=1", &current); err != nil {
		t.Fatal(err)
	}
	if err := client.Get(ctx, "/nodes/pve1/qemu/101/config", &pending); err != nil {
		t.Fatal(err)
	}
	if current["memory"] != "2048" || pending["memory"] != "8192" {
		t.Fatalf("memory current=%v pending view=%v, want 2048 / 8192", current["memory"], pending["memory"])
	}
	if current["tags"] != "prod;web" {
		t.Errorf("hot-pluggable tags not applied at once: %v", current["tags"])
	}
	vm = vmOf(t, client, 101)
	if vm.MaxMem != 2048<<20 {
		t.Errorf("running VM maxmem %d, want the current 2 GiB", vm.MaxMem)
	}
	if g, _ := srv.Guest(101); g.Pending["memory"] != "8192" {
		t.Errorf("snapshot pending = %v", g.Pending)
	}
	var rows []map[string]any
	if err := client.Get(ctx, "/nodes/pve1/qemu/101/pending", &rows); err != nil {
		t.Fatal(err)
	}
	memoryRow := false
	for _, r := range rows {
		if r["key"] == "memory" {
			memoryRow = r["value"] == "2048" && r["pending"] == "8192"
		}
		if r["key"] == "tags" && r["pending"] != nil {
			t.Errorf("applied key listed as pending: %v", r)
		}
	}
	if !memoryRow {
		t.Errorf("no memory 2048 -> 8192 row in %v", rows)
	}

	task, err = vm.Reboot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	finished(t, task)
	vm = vmOf(t, client, 101)
	if vm.MaxMem != 8192<<20 || int(vm.VirtualMachineConfig.Memory) != 8192 {
		t.Fatalf("after reboot maxmem %d config %d", vm.MaxMem, vm.VirtualMachineConfig.Memory)
	}
	if g, _ := srv.Guest(101); len(g.Pending) != 0 {
		t.Errorf("pending left after reboot: %v", g.Pending)
	}
}

func TestQEMUConfigParameterChecks(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	tests := []struct {
		name    string
		opt     proxmox.VirtualMachineOption
		wantErr string
	}{
		{"unknown key", proxmox.VirtualMachineOption{Name: "memoryMiB", Value: 1}, `"memoryMiB":"property is not defined in schema`},
		{"not an integer", proxmox.VirtualMachineOption{Name: "cores", Value: "two"}, `"cores":"type check ('integer') failed - got 'two'"`},
		{"too little memory", proxmox.VirtualMachineOption{Name: "memory", Value: 8}, `"memory":"invalid format - current: value must have a minimum value of 16"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := vmOf(t, client, 101).Config(context.Background(), tt.opt)
			if err == nil || !strings.Contains(err.Error(), "400 Parameter verification failed.") ||
				!strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want a 400 naming %s", err, tt.wantErr)
			}
		})
	}
}

func TestQEMUCreate(t *testing.T) {
	_, client := newSim(t, pvesim.Config{})
	node := nodeOf(t, client)
	ctx := context.Background()
	task, err := node.NewVirtualMachine(ctx, 150,
		proxmox.VirtualMachineOption{Name: "name", Value: "fresh"},
		proxmox.VirtualMachineOption{Name: "memory", Value: 1024},
		proxmox.VirtualMachineOption{Name: "cores", Value: 2},
		proxmox.VirtualMachineOption{Name: "scsi0", Value: "local-lvm:16"},
		proxmox.VirtualMachineOption{Name: "tags", Value: "Scratch,felhom;scratch"})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if task.Type != "qmcreate" {
		t.Errorf("task type %q", task.Type)
	}
	if exit := finished(t, task); exit != "OK" {
		t.Fatalf("create task %q", exit)
	}
	vm := vmOf(t, client, 150)
	cfg := vm.VirtualMachineConfig
	if cfg.Name != "fresh" || int(cfg.Memory) != 1024 || *cfg.Cores != 2 || cfg.Tags != "felhom;scratch" {
		t.Errorf("config = name %q memory %d cores %d tags %q", cfg.Name, cfg.Memory, *cfg.Cores, cfg.Tags)
	}
	if cfg.SCSIs["scsi0"] != "local-lvm:vm-150-disk-0,size=16G" {
		t.Errorf("scsi0 = %q", cfg.SCSIs["scsi0"])
	}
	if vm.Status != "stopped" || cfg.Lock != "" {
		t.Errorf("status %q lock %q", vm.Status, cfg.Lock)
	}

	_, err = node.NewVirtualMachine(ctx, 150, proxmox.VirtualMachineOption{Name: "memory", Value: 512})
	if want := "500 unable to create VM 150 - VM 150 already exists on node 'pve1'"; errText(err) != want {
		t.Fatalf("second create: %q, want %q", errText(err), want)
	}
}

func TestQEMUCreateIsLockedWhileRunning(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{TaskDuration: 200 * time.Millisecond})
	task, err := nodeOf(t, client).NewVirtualMachine(context.Background(), 150,
		proxmox.VirtualMachineOption{Name: "memory", Value: 1024})
	if err != nil {
		t.Fatal(err)
	}
	g, ok := srv.Guest(150)
	if !ok || g.Lock != "create" {
		t.Fatalf("during create: exists=%v lock=%q", ok, g.Lock)
	}
	finished(t, task)
	if g, _ := srv.Guest(150); g.Lock != "" || g.MemoryMiB != 1024 {
		t.Fatalf("after create: %+v", g)
	}
}

func TestQEMUDestroy(t *testing.T) {
	disks := map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G", "unused0": "local-lvm:vm-101-disk-1"}
	tests := []struct {
		name         string
		guest        pvesim.Guest
		opts         *proxmox.VirtualMachineDeleteOptions
		wantErr      string
		wantExit     string
		wantGone     bool
		wantVolumes  []string
		extraVolumes bool
	}{
		{"stopped", pvesim.Guest{}, nil, "", "OK", true, []string{"local-lvm:vm-101-disk-9"}, true},
		{"with unreferenced disks", pvesim.Guest{}, &proxmox.VirtualMachineDeleteOptions{Purge: true, DestroyUnreferencedDisks: true},
			"", "OK", true, nil, true},
		{"protected", pvesim.Guest{Protection: true}, nil, "500 can't remove VM 101 - protection mode enabled", "", false, nil, false},
		{"running", pvesim.Guest{Status: "running"}, nil, "500 VM 101 is running - destroy failed", "", false, nil, false},
		{"backup lock", pvesim.Guest{Lock: "backup"}, nil, "", "VM is locked (backup)", false, nil, false},
		{"missing", pvesim.Guest{VMID: 555}, nil, "500 Configuration file 'nodes/pve1/qemu-server/101.conf' does not exist", "", true, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			g := tt.guest
			if g.VMID == 0 {
				g.VMID = 101
				g.Disks = disks
			}
			mustAdd(t, srv.AddVM(g))
			if tt.extraVolumes {
				// an image owned by 101 that its config does not name
				if err := srv.AddVolume("local-lvm:vm-101-disk-9", 1<<30); err != nil {
					t.Fatal(err)
				}
			}
			var upid proxmox.UPID
			err := client.DeleteWithParams(context.Background(), "/nodes/pve1/qemu/101", tt.opts, &upid)
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if err == nil {
				if exit := finished(t, proxmox.NewTask(upid, client)); exit != tt.wantExit {
					t.Fatalf("exit %q, want %q", exit, tt.wantExit)
				}
			}
			_, exists := srv.Guest(101)
			if exists == tt.wantGone {
				t.Fatalf("guest exists=%v, want gone=%v", exists, tt.wantGone)
			}
			if tt.wantGone && tt.guest.VMID == 0 {
				if got := srv.Volumes(); fmt.Sprint(got) != fmt.Sprint(tt.wantVolumes) && !(len(got) == 0 && len(tt.wantVolumes) == 0) {
					t.Fatalf("volumes left %v, want %v", got, tt.wantVolumes)
				}
			}
		})
	}
}

// qemu-server accepts memory as a property string; go-proxmox v0.8.2 can
// only parse a plain number, so a "current=N" value breaks its VM reads.
func TestQEMUMemoryPropertyString(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, MemoryMiB: 2048}))
	ctx := context.Background()
	if err := vmOf(t, client, 101).ConfigSync(ctx, proxmox.VirtualMachineOption{Name: "memory", Value: "current=4096"}); err != nil {
		t.Fatal(err)
	}
	if g, _ := srv.Guest(101); g.MemoryMiB != 4096 {
		t.Fatalf("memory %d MiB", g.MemoryMiB)
	}
	var cfg map[string]any
	if err := client.Get(ctx, "/nodes/pve1/qemu/101/config", &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["memory"] != "current=4096" {
		t.Fatalf("memory %v", cfg["memory"])
	}
	if _, err := nodeOf(t, client).VirtualMachine(ctx, 101); err == nil {
		t.Fatal("go-proxmox now parses memory property strings: update the package doc")
	}
	var status map[string]any
	if err := client.Get(ctx, "/nodes/pve1/qemu/101/status/current", &status); err != nil {
		t.Fatal(err)
	}
	if status["maxmem"] != float64(4096<<20) {
		t.Errorf("maxmem %v", status["maxmem"])
	}
}

func TestQEMUStoresValuesTheWayPveReadsThemBack(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	tests := []struct {
		key, value, want string
	}{
		{"tags", "Web,prod;web prod", "prod;web"},
		{"description", "customer db\nowner: ops\n\n", "customer db\nowner: ops"},
		{"name", "db-1", "db-1"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if err := vmOf(t, client, 101).ConfigSync(context.Background(), proxmox.VirtualMachineOption{Name: tt.key, Value: tt.value}); err != nil {
				t.Fatal(err)
			}
			var cfg map[string]any
			if err := client.Get(context.Background(), "/nodes/pve1/qemu/101/config", &cfg); err != nil {
				t.Fatal(err)
			}
			if cfg[tt.key] != tt.want {
				t.Fatalf("%s = %q, want %q", tt.key, cfg[tt.key], tt.want)
			}
		})
	}
}

func TestQEMUDestroyLeavesOtherGuestsVolumes(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Disks: map[string]string{
		"scsi0": "local-lvm:vm-101-disk-0,size=8G", "scsi1": "local-lvm:vm-150-disk-0,size=8G"}}))
	task, err := vmOf(t, client, 101).Delete(context.Background(), &proxmox.VirtualMachineDeleteOptions{DestroyUnreferencedDisks: true})
	if err != nil {
		t.Fatal(err)
	}
	finished(t, task)
	if got := srv.Volumes(); fmt.Sprint(got) != "[local-lvm:vm-150-disk-0]" {
		t.Fatalf("volumes left %v, want VM 150's disk only", got)
	}
}

func TestQEMUHotplugOnARunningVM(t *testing.T) {
	tests := []struct {
		name, key, value string
		wantNow          bool // applied at once, else pending
	}{
		{"name is fast-plugged", "name", "renamed", true},
		{"boot waits", "boot", "order=net0", false},
		{"cores wait", "cores", "8", false},
		{"cpulimit is hot", "cpulimit", "2", true},
		{"scsi disk is hot-plugged", "scsi1", "local-lvm:4", true},
		{"sata disk waits", "sata1", "local-lvm:4", false},
		{"nic is hot-plugged", "net1", "virtio=BC:24:11:00:00:01,bridge=vmbr0", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running", Cores: 2,
				Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}}))
			if err := vmOf(t, client, 101).ConfigSync(context.Background(), proxmox.VirtualMachineOption{Name: tt.key, Value: tt.value}); err != nil {
				t.Fatal(err)
			}
			var current map[string]any
			if err := client.Get(context.Background(), "/nodes/pve1/qemu/101/config?current=1", &current); err != nil {
				t.Fatal(err)
			}
			_, now := current[tt.key]
			if tt.key == "cores" {
				now = current["cores"] == float64(8)
			}
			g, _ := srv.Guest(101)
			_, pending := g.Pending[tt.key]
			if now != tt.wantNow || pending == tt.wantNow {
				t.Fatalf("applied now=%v pending=%v, want now=%v", now, pending, tt.wantNow)
			}
		})
	}
}

func TestQEMUReplacingADiskKeepsTheOldOneUnused(t *testing.T) {
	tests := []struct {
		name, value, wantScsi0, wantUnused string
	}{
		{"new volume", "local-lvm:16", "local-lvm:vm-101-disk-1,size=16G", "local-lvm:vm-101-disk-0"},
		{"same volume, new options", "local-lvm:vm-101-disk-0,cache=writeback,size=8G", "local-lvm:vm-101-disk-0,cache=writeback,size=8G", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}}))
			if err := vmOf(t, client, 101).ConfigSync(context.Background(), proxmox.VirtualMachineOption{Name: "scsi0", Value: tt.value}); err != nil {
				t.Fatal(err)
			}
			cfg := vmOf(t, client, 101).VirtualMachineConfig
			if cfg.SCSIs["scsi0"] != tt.wantScsi0 || cfg.Unuseds["unused0"] != tt.wantUnused {
				t.Fatalf("scsi0 %q unused0 %q", cfg.SCSIs["scsi0"], cfg.Unuseds["unused0"])
			}
		})
	}
}

func TestQEMUFailedCreateLeavesNothing(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu", Kind: pvesim.FaultTaskError, Message: "unable to create VM 150 - storage full"})
	task, err := nodeOf(t, client).NewVirtualMachine(context.Background(), 150,
		proxmox.VirtualMachineOption{Name: "scsi0", Value: "local-lvm:8"})
	if err != nil {
		t.Fatal(err)
	}
	if exit := finished(t, task); exit != "unable to create VM 150 - storage full" {
		t.Fatalf("exit %q", exit)
	}
	if _, ok := srv.Guest(150); ok || len(srv.Volumes()) != 0 {
		t.Fatalf("left behind: guest=%v volumes=%v", ok, srv.Volumes())
	}
}
