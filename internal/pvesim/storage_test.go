package pvesim_test

import (
	"context"
	"slices"
	"testing"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestVolumeDelete(t *testing.T) {
	tests := []struct {
		name     string
		volid    string
		wantErr  string
		wantGone bool
	}{
		{"orphan image", "local-lvm:vm-150-disk-0", "", true},
		{"image of an existing guest", "local-lvm:vm-101-disk-0",
			"500 Cannot remove image, a guest with VMID '101' exists! You can delete the image from the guest's hardware pane", false},
		{"missing volume", "local-lvm:vm-777-disk-0", "500 volume 'local-lvm:vm-777-disk-0' does not exist", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}}))
			if err := srv.AddVolume("local-lvm:vm-150-disk-0", 4<<30); err != nil {
				t.Fatal(err)
			}
			storage, err := nodeOf(t, client).Storage(context.Background(), "local-lvm")
			if err != nil {
				t.Fatalf("storage: %v", err)
			}
			task, err := storage.DeleteContent(context.Background(), tt.volid)
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if err == nil {
				if exit := finished(t, task); exit != "OK" || task.Type != "imgdel" {
					t.Fatalf("task %s ended %q", task.Type, exit)
				}
			}
			if gone := !slices.Contains(srv.Volumes(), tt.volid); gone != tt.wantGone {
				t.Fatalf("volume gone=%v, want %v (%v)", gone, tt.wantGone, srv.Volumes())
			}
		})
	}
}

func TestDiskDetachThenWipeThroughConfig(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Disks: map[string]string{
		"scsi0": "local-lvm:vm-101-disk-0,size=8G", "scsi1": "local-lvm:vm-101-disk-1,size=100G"}}))
	ctx := context.Background()
	// detaching keeps the data as unused0
	if err := vmOf(t, client, 101).ConfigSync(ctx, proxmox.VirtualMachineOption{Name: "delete", Value: "scsi1"}); err != nil {
		t.Fatalf("detach: %v", err)
	}
	cfg := vmOf(t, client, 101).VirtualMachineConfig
	if _, still := cfg.SCSIs["scsi1"]; still || cfg.Unuseds["unused0"] != "local-lvm:vm-101-disk-1" {
		t.Fatalf("after detach scsi=%v unused=%v", cfg.SCSIs, cfg.Unuseds)
	}
	if !slices.Contains(srv.Volumes(), "local-lvm:vm-101-disk-1") {
		t.Fatal("detach destroyed the volume")
	}
	// removing the unused entry destroys the volume
	task, err := vmOf(t, client, 101).Config(ctx, proxmox.VirtualMachineOption{Name: "delete", Value: "unused0"})
	if err != nil {
		t.Fatal(err)
	}
	finished(t, task)
	if slices.Contains(srv.Volumes(), "local-lvm:vm-101-disk-1") {
		t.Fatal("volume still there after deleting unused0")
	}
	if cfg := vmOf(t, client, 101).VirtualMachineConfig; len(cfg.Unuseds) != 0 {
		t.Fatalf("unused left: %v", cfg.Unuseds)
	}
}

func TestStorageContentListing(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}}))
	archive, err := srv.AddBackup(pvesim.KindQEMU, pvesim.Guest{VMID: 101, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		storage string
		want    string
		format  string
	}{
		{"local-lvm", "local-lvm:vm-101-disk-0", "raw"},
		{"local", archive, "vma.zst"},
	}
	for _, tt := range tests {
		st, err := nodeOf(t, client).Storage(context.Background(), tt.storage)
		if err != nil {
			t.Fatal(err)
		}
		content, err := st.GetContent(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(content) != 1 || content[0].Volid != tt.want || content[0].Format != tt.format || content[0].Size == 0 || content[0].VMID != 101 {
			t.Errorf("%s content %+v", tt.storage, content)
		}
	}
}

func TestUnlinkDisk(t *testing.T) {
	tests := []struct {
		name       string
		force      bool
		wantUnused bool
	}{
		{"detach", false, true},
		{"force removes the data", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Disks: map[string]string{
				"scsi0": "local-lvm:vm-101-disk-0,size=8G", "scsi1": "local-lvm:vm-101-disk-1,size=100G"}}))
			task, err := vmOf(t, client, 101).UnlinkDisk(context.Background(), "scsi1", tt.force)
			if err != nil || task != nil {
				t.Fatalf("unlink: task %v err %v; pve answers null", task, err)
			}
			cfg := vmOf(t, client, 101).VirtualMachineConfig
			if _, still := cfg.SCSIs["scsi1"]; still {
				t.Fatal("scsi1 still attached")
			}
			if has := cfg.Unuseds["unused0"] == "local-lvm:vm-101-disk-1"; has != tt.wantUnused {
				t.Fatalf("unused0 = %q", cfg.Unuseds["unused0"])
			}
			if live := slices.Contains(srv.Volumes(), "local-lvm:vm-101-disk-1"); live != tt.wantUnused {
				t.Fatalf("volume present=%v", live)
			}
		})
	}
}
