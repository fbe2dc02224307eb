package pvesim_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestRestoreOverExistingGuest(t *testing.T) {
	tests := []struct {
		name     string
		kind     pvesim.Kind
		current  pvesim.Guest
		force    bool
		wantErr  string
		wantExit string
		wantName string
	}{
		{"qemu forced", pvesim.KindQEMU, pvesim.Guest{Name: "now"}, true, "", "OK", "then"},
		{"qemu without force", pvesim.KindQEMU, pvesim.Guest{Name: "now"}, false,
			"500 unable to restore VM 101 - VM 101 already exists on node 'pve1'", "", "now"},
		{"qemu protected", pvesim.KindQEMU, pvesim.Guest{Name: "now", Protection: true}, true,
			"", "unable to restore VM 101 - - protection mode enabled", "now"},
		{"qemu running", pvesim.KindQEMU, pvesim.Guest{Name: "now", Status: "running"}, true,
			"", "unable to restore VM 101 - vm is running", "now"},
		{"lxc forced", pvesim.KindLXC, pvesim.Guest{Name: "now"}, true, "", "OK", "then"},
		{"lxc without force", pvesim.KindLXC, pvesim.Guest{Name: "now"}, false,
			"500 CT 101 already exists on node 'pve1'", "", "now"},
		{"lxc running", pvesim.KindLXC, pvesim.Guest{Name: "now", Status: "running"}, true,
			"500 can't overwrite running container", "", "now"},
		{"lxc protected", pvesim.KindLXC, pvesim.Guest{Name: "now", Protection: true}, true,
			"500 unable to restore CT 101 - protection mode enabled", "", "now"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			disk := "scsi0"
			if tt.kind == pvesim.KindLXC {
				disk = "rootfs"
			}
			then := pvesim.Guest{VMID: 101, Name: "then", MemoryMiB: 1024, Disks: map[string]string{disk: "local-lvm:vm-101-disk-0,size=8G"}}
			archive, err := srv.AddBackup(tt.kind, then)
			if err != nil {
				t.Fatal(err)
			}
			tt.current.VMID = 101
			tt.current.Disks = map[string]string{disk: "local-lvm:vm-101-disk-0,size=8G", "unused0": "local-lvm:vm-101-disk-1,size=2G"}
			var params map[string]any
			path := "/nodes/pve1/qemu"
			if tt.kind == pvesim.KindLXC {
				mustAdd(t, srv.AddContainer(tt.current))
				params = map[string]any{"vmid": 101, "ostemplate": archive, "restore": 1}
				path = "/nodes/pve1/lxc"
			} else {
				mustAdd(t, srv.AddVM(tt.current))
				params = map[string]any{"vmid": 101, "archive": archive}
			}
			if tt.force {
				params["force"] = 1
			}
			task, err := postTask(t, client, path, params)
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if err == nil {
				if exit := finished(t, task); exit != tt.wantExit {
					t.Fatalf("exit %q, want %q", exit, tt.wantExit)
				}
			}
			g, ok := srv.Guest(101)
			if !ok || g.Name != tt.wantName || g.Lock != "" {
				t.Fatalf("guest after restore: %+v", g)
			}
			restored := tt.wantName == "then"
			if hasUnused := slices.Contains(srv.Volumes(), "local-lvm:vm-101-disk-1"); hasUnused == restored {
				t.Errorf("old unused disk present=%v after restore=%v: %v", hasUnused, restored, srv.Volumes())
			}
			if restored && fmt.Sprint(g.Disks) != fmt.Sprintf("map[%s:local-lvm:vm-101-disk-0,size=8G]", disk) {
				t.Errorf("disks %v", g.Disks)
			}
		})
	}
}

func TestQEMURestoreRefusesDiskOptions(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	archive, err := srv.AddBackup(pvesim.KindQEMU, pvesim.Guest{VMID: 101})
	if err != nil {
		t.Fatal(err)
	}
	_, err = postTask(t, client, "/nodes/pve1/qemu", map[string]any{"vmid": 101, "archive": archive, "scsi0": "local-lvm:8"})
	if want := `bad request: 400 Parameter verification failed. - {"scsi0":"option conflicts with option 'archive'"}`; errText(err) != want {
		t.Fatalf("error %q, want %q", errText(err), want)
	}
	if _, ok := srv.Guest(101); ok {
		t.Fatal("guest created")
	}
}
