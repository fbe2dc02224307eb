package pvesim_test

import (
	"context"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestResizeGrowsAndNeverShrinks(t *testing.T) {
	tests := []struct {
		name     string
		kind     pvesim.Kind
		disk     string
		size     string
		wantExit string
		wantSpec string
	}{
		{"qemu grow", pvesim.KindQEMU, "scsi0", "+8G", "OK", "local-lvm:vm-101-disk-0,size=40G"},
		{"qemu absolute", pvesim.KindQEMU, "scsi0", "64G", "OK", "local-lvm:vm-101-disk-0,size=64G"},
		{"qemu shrink", pvesim.KindQEMU, "scsi0", "16G", "shrinking disks is not supported", "local-lvm:vm-101-disk-0,size=32G"},
		{"qemu missing disk", pvesim.KindQEMU, "scsi5", "+1G", "disk 'scsi5' does not exist", "local-lvm:vm-101-disk-0,size=32G"},
		{"lxc grow", pvesim.KindLXC, "rootfs", "+8G", "OK", "local-lvm:vm-101-disk-0,size=40G"},
		{"lxc shrink", pvesim.KindLXC, "rootfs", "8G", "unable to shrink disk size", "local-lvm:vm-101-disk-0,size=32G"},
		{"lxc same size", pvesim.KindLXC, "rootfs", "32G", "disk is already at specified size", "local-lvm:vm-101-disk-0,size=32G"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			disk := "scsi0"
			add := srv.AddVM
			if tt.kind == pvesim.KindLXC {
				disk, add = "rootfs", srv.AddContainer
			}
			mustAdd(t, add(pvesim.Guest{VMID: 101, Disks: map[string]string{disk: "local-lvm:vm-101-disk-0,size=32G"}}))
			var err error
			var exit string
			if tt.kind == pvesim.KindQEMU {
				tk, e := vmOf(t, client, 101).ResizeDisk(context.Background(), tt.disk, tt.size)
				err = e
				if e == nil {
					exit = finished(t, tk)
				}
			} else {
				tk, e := ctOf(t, client, 101).Resize(context.Background(), tt.disk, tt.size)
				err = e
				if e == nil {
					exit = finished(t, tk)
				}
			}
			if err != nil {
				t.Fatalf("resize: %v", err)
			}
			if exit != tt.wantExit {
				t.Fatalf("exit %q, want %q", exit, tt.wantExit)
			}
			if g, _ := srv.Guest(101); g.Disks[disk] != tt.wantSpec {
				t.Fatalf("%s = %q, want %q", disk, g.Disks[disk], tt.wantSpec)
			}
		})
	}
}
