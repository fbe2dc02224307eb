package pvesim_test

import (
	"context"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// Protection keeps a guest's disks: qemu-server refuses to remove a drive
// or an unused volume of a protected VM (in the config task), pve-container
// to remove or set a mount point of a protected container.
func TestProtectionKeepsDisks(t *testing.T) {
	vmDisks := map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G", "scsi1": "local-lvm:vm-101-disk-1,size=8G",
		"unused0": "local-lvm:vm-101-disk-2"}
	ctDisks := map[string]string{"rootfs": "local-lvm:subvol-101-disk-0,size=8G", "mp0": "local-lvm:subvol-101-disk-1,mp=/data,size=8G",
		"unused0": "local-lvm:subvol-101-disk-2"}
	tests := []struct {
		name     string
		kind     pvesim.Kind
		method   string
		params   map[string]any
		wantErr  string // the request's error
		wantExit string // or its task's
	}{
		{"qemu detach", pvesim.KindQEMU, "POST", map[string]any{"delete": "scsi1"}, "", "can't remove drive 'scsi1' - protection mode enabled"},
		{"qemu free unused", pvesim.KindQEMU, "POST", map[string]any{"delete": "unused0"}, "",
			"can't remove unused disk 'local-lvm:vm-101-disk-2' - protection mode enabled"},
		{"qemu detach, synchronous", pvesim.KindQEMU, "PUT", map[string]any{"delete": "scsi1"}, "500 can't remove drive 'scsi1' - protection mode enabled", ""},
		{"qemu other keys", pvesim.KindQEMU, "POST", map[string]any{"delete": "tags", "cores": 2}, "", "OK"},
		{"lxc detach", pvesim.KindLXC, "PUT", map[string]any{"delete": "mp0"}, "500 can't remove CT 101 drive 'mp0' - protection mode enabled", ""},
		{"lxc free unused", pvesim.KindLXC, "PUT", map[string]any{"delete": "unused0"}, "500 can't remove CT 101 drive 'unused0' - protection mode enabled", ""},
		{"lxc new mount point", pvesim.KindLXC, "PUT", map[string]any{"mp1": "local-lvm:4,mp=/more"}, "500 can't update CT 101 drive 'mp1' - protection mode enabled", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{StrictPVE: true})
			g := pvesim.Guest{VMID: 101, Protection: true, Cores: 1}
			if tt.kind == pvesim.KindLXC {
				g.Disks = ctDisks
				mustAdd(t, srv.AddContainer(g))
			} else {
				g.Disks = vmDisks
				mustAdd(t, srv.AddVM(g))
			}
			path := "/nodes/pve1/" + string(tt.kind) + "/101/config"
			exit := ""
			var err error
			if tt.method == "POST" {
				task, perr := postTask(t, client, path, tt.params)
				if err = perr; err == nil {
					exit = finished(t, task)
				}
			} else {
				err = client.Put(context.Background(), path, tt.params, nil)
			}
			if errText(err) != tt.wantErr || exit != tt.wantExit {
				t.Fatalf("error %q exit %q, want %q %q", errText(err), exit, tt.wantErr, tt.wantExit)
			}
			after, _ := srv.Guest(101)
			if len(after.Disks) != 3 {
				t.Fatalf("disks %v, want them kept", after.Disks)
			}
		})
	}
}
