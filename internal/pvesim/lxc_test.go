package pvesim_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestLXCPowerActions(t *testing.T) {
	tests := []struct {
		name       string
		guest      pvesim.Guest
		act        func(*proxmox.Container, context.Context) (*proxmox.Task, error)
		wantErr    string
		wantExit   string
		wantStatus string
	}{
		{"start stopped", pvesim.Guest{}, (*proxmox.Container).Start, "", "OK", "running"},
		{"start running refused at once", pvesim.Guest{Status: "running"}, (*proxmox.Container).Start,
			"500 CT 200 already running", "", "running"},
		{"stop running", pvesim.Guest{Status: "running"}, (*proxmox.Container).Stop, "", "OK", "stopped"},
		{"stop stopped refused", pvesim.Guest{}, (*proxmox.Container).Stop, "500 CT 200 not running", "", "stopped"},
		{"shutdown", pvesim.Guest{Status: "running"}, func(c *proxmox.Container, ctx context.Context) (*proxmox.Task, error) {
			return c.Shutdown(ctx, false, 30)
		}, "", "OK", "stopped"},
		{"shutdown ignored", pvesim.Guest{Status: "running", IgnoresShutdown: true}, func(c *proxmox.Container, ctx context.Context) (*proxmox.Task, error) {
			return c.Shutdown(ctx, false, 30)
		}, "", "container did not stop", "running"},
		{"shutdown ignored forced", pvesim.Guest{Status: "running", IgnoresShutdown: true}, func(c *proxmox.Container, ctx context.Context) (*proxmox.Task, error) {
			return c.Shutdown(ctx, true, 30)
		}, "", "OK", "stopped"},
		{"reboot", pvesim.Guest{Status: "running"}, (*proxmox.Container).Reboot, "", "OK", "running"},
		{"reboot stopped, pve says VM", pvesim.Guest{}, (*proxmox.Container).Reboot, "500 VM 200 not running", "", "stopped"},
		{"start locked", pvesim.Guest{Lock: "backup"}, (*proxmox.Container).Start, "", "CT is locked (backup)", "stopped"},
		{"start a template", pvesim.Guest{Config: map[string]string{"template": "1"}}, (*proxmox.Container).Start, "", "you can't start a CT if it's a template", "stopped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			tt.guest.VMID = 200
			mustAdd(t, srv.AddContainer(tt.guest))
			task, err := tt.act(ctOf(t, client, 200), context.Background())
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if err == nil {
				if exit := finished(t, task); exit != tt.wantExit {
					t.Fatalf("exit %q, want %q", exit, tt.wantExit)
				}
			}
			if ct := ctOf(t, client, 200); ct.Status != tt.wantStatus {
				t.Fatalf("status %q, want %q", ct.Status, tt.wantStatus)
			}
		})
	}
}

func TestLXCConfigIsSynchronous(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddContainer(pvesim.Guest{VMID: 200, Name: "dns", Status: "running", MemoryMiB: 512,
		Disks: map[string]string{"rootfs": "local-lvm:vm-200-disk-0,size=8G"}}))
	ct := ctOf(t, client, 200)
	if *ct.ContainerConfig.Memory != 512 || ct.ContainerConfig.Hostname != "dns" || ct.ContainerConfig.RootFS != "local-lvm:vm-200-disk-0,size=8G" {
		t.Fatalf("config %+v", ct.ContainerConfig)
	}
	tests := []struct {
		name    string
		opts    []proxmox.ContainerOption
		wantErr string
		wantMiB int
	}{
		{"with digest", []proxmox.ContainerOption{{Name: "memory", Value: 1024}, {Name: "digest", Value: ct.ContainerConfig.Digest}}, "", 1024},
		{"stale digest", []proxmox.ContainerOption{{Name: "memory", Value: 2048}, {Name: "digest", Value: ct.ContainerConfig.Digest}},
			"500 detected modified configuration - file changed by other user? Try again.", 1024},
		{"no digest", []proxmox.ContainerOption{{Name: "memory", Value: 2048}}, "", 2048},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			task, err := ct.Config(context.Background(), tt.opts...)
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if task != nil {
				t.Errorf("a container config PUT started task %s; pve returns null", task.UPID)
			}
			// A running container takes the new limit at once.
			if got := ctOf(t, client, 200); got.MaxMem != uint64(tt.wantMiB)<<20 || *got.ContainerConfig.Memory != tt.wantMiB {
				t.Fatalf("maxmem %d memory %d, want %d MiB", got.MaxMem, *got.ContainerConfig.Memory, tt.wantMiB)
			}
		})
	}
	if got := srv.RequestsMatching("PUT", "/nodes/pve1/lxc/200/config"); len(got) != 3 || got[1].Status != 500 {
		t.Errorf("recorded PUTs %+v", got)
	}
}

func TestLXCCreateAndDestroy(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	ctx := context.Background()
	node := nodeOf(t, client)
	task, err := node.NewContainer(ctx, 210,
		proxmox.ContainerOption{Name: "ostemplate", Value: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"},
		proxmox.ContainerOption{Name: "hostname", Value: "cache"},
		proxmox.ContainerOption{Name: "memory", Value: 256},
		proxmox.ContainerOption{Name: "rootfs", Value: "local-lvm:4"},
		proxmox.ContainerOption{Name: "start", Value: 1})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if exit := finished(t, task); exit != "OK" || task.Type != "vzcreate" {
		t.Fatalf("create task %s ended %q", task.Type, exit)
	}
	ct := ctOf(t, client, 210)
	if ct.Status != "running" || ct.Name != "cache" || ct.ContainerConfig.RootFS != "local-lvm:vm-210-disk-0,size=4G" {
		t.Fatalf("container %q %q rootfs %q", ct.Status, ct.Name, ct.ContainerConfig.RootFS)
	}

	_, err = ct.Delete(ctx, nil)
	if want := "500 unable to destroy CT 210 - container is running"; errText(err) != want {
		t.Fatalf("delete running: %q, want %q", errText(err), want)
	}
	task, err = ct.Delete(ctx, &proxmox.ContainerDeleteOptions{Force: true, Purge: true})
	if err != nil {
		t.Fatal(err)
	}
	if exit := finished(t, task); exit != "OK" {
		t.Fatalf("destroy %q", exit)
	}
	if _, ok := srv.Guest(210); ok {
		t.Fatal("container still there")
	}
	for _, v := range srv.Volumes() {
		if strings.Contains(v, "vm-210-") {
			t.Errorf("volume %s left behind", v)
		}
	}
	_, err = node.Container(ctx, 210)
	if want := "500 Configuration file 'nodes/pve1/lxc/210.conf' does not exist"; errText(err) != want {
		t.Fatalf("get destroyed: %q, want %q", errText(err), want)
	}
}

func TestLXCProtectionRefusesDestroy(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddContainer(pvesim.Guest{VMID: 200, Protection: true}))
	_, err := ctOf(t, client, 200).Delete(context.Background(), nil)
	if want := "500 can't remove CT 200 - protection mode enabled"; errText(err) != want {
		t.Fatalf("error %q, want %q", errText(err), want)
	}
	if _, ok := srv.Guest(200); !ok {
		t.Fatal("protected container destroyed")
	}
}

func TestLXCDestroyChecksLockAtOnce(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddContainer(pvesim.Guest{VMID: 200, Lock: "backup"}))
	_, err := ctOf(t, client, 200).Delete(context.Background(), &proxmox.ContainerDeleteOptions{Force: true})
	if want := "500 CT is locked (backup)"; errText(err) != want {
		t.Fatalf("error %q, want %q", errText(err), want)
	}
	if _, ok := srv.Guest(200); !ok {
		t.Fatal("locked container destroyed")
	}
}

func TestLXCMountPointLifecycle(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddContainer(pvesim.Guest{VMID: 200, Disks: map[string]string{"rootfs": "local-lvm:vm-200-disk-0,size=8G"}}))
	ctx := context.Background()
	steps := []struct {
		name       string
		opts       []proxmox.ContainerOption
		wantErr    string
		wantKey    string
		wantValue  string
		wantVolume string
		volumeLive bool
	}{
		{"add mount point", []proxmox.ContainerOption{{Name: "mp0", Value: "local-lvm:2,mp=/data"}}, "",
			"mp0", "local-lvm:vm-200-disk-1,mp=/data,size=2G", "local-lvm:vm-200-disk-1", true},
		{"detach keeps the data", []proxmox.ContainerOption{{Name: "delete", Value: "mp0"}}, "",
			"unused0", "local-lvm:vm-200-disk-1", "local-lvm:vm-200-disk-1", true},
		{"delete unused frees it", []proxmox.ContainerOption{{Name: "delete", Value: "unused0"}}, "",
			"unused0", "", "local-lvm:vm-200-disk-1", false},
		{"rootfs cannot go", []proxmox.ContainerOption{{Name: "delete", Value: "rootfs"}}, "500 unable to delete required option 'rootfs'",
			"rootfs", "local-lvm:vm-200-disk-0,size=8G", "local-lvm:vm-200-disk-0", true},
		{"nothing to do", nil, "500 no options specified", "rootfs", "local-lvm:vm-200-disk-0,size=8G", "local-lvm:vm-200-disk-0", true},
	}
	for _, st := range steps {
		_, err := ctOf(t, client, 200).Config(ctx, st.opts...)
		if errText(err) != st.wantErr {
			t.Fatalf("%s: error %q, want %q", st.name, errText(err), st.wantErr)
		}
		var cfg map[string]any
		if err := client.Get(ctx, "/nodes/pve1/lxc/200/config", &cfg); err != nil {
			t.Fatal(err)
		}
		got, _ := cfg[st.wantKey].(string)
		if got != st.wantValue {
			t.Fatalf("%s: %s = %q, want %q", st.name, st.wantKey, got, st.wantValue)
		}
		if live := slices.Contains(srv.Volumes(), st.wantVolume); live != st.volumeLive {
			t.Fatalf("%s: volume %s present=%v", st.name, st.wantVolume, live)
		}
	}
}

func TestLXCPendingOnARunningContainer(t *testing.T) {
	tests := []struct {
		key, value string
		wantNow    bool
	}{
		{"memory", "1024", true},
		{"hostname", "renamed", true},
		{"nameserver", "10.0.0.1", false},
		{"features", "nesting=1", false},
		{"mp0", "local-lvm:1,mp=/data", true},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddContainer(pvesim.Guest{VMID: 200, Status: "running", MemoryMiB: 512,
				Disks: map[string]string{"rootfs": "local-lvm:vm-200-disk-0,size=8G"}}))
			if _, err := ctOf(t, client, 200).Config(context.Background(), proxmox.ContainerOption{Name: tt.key, Value: tt.value}); err != nil {
				t.Fatal(err)
			}
			g, _ := srv.Guest(200)
			_, pending := g.Pending[tt.key]
			if pending == tt.wantNow {
				t.Fatalf("pending=%v, want applied now=%v (%+v)", pending, tt.wantNow, g)
			}
			if !tt.wantNow {
				task, err := ctOf(t, client, 200).Reboot(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				finished(t, task)
				if g, _ := srv.Guest(200); g.Config[tt.key] != tt.value || len(g.Pending) != 0 {
					t.Fatalf("after reboot %s=%q pending %v", tt.key, g.Config[tt.key], g.Pending)
				}
			}
		})
	}
}
