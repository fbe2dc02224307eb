package activities

import (
	"context"
	"reflect"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestReadGuest(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 101, Name: "web", Status: "running", MemoryMiB: 2048, Cores: 2, Tags: "prod;Web",
		Protection: true, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=32G"},
		Config: map[string]string{"ide2": "none,media=cdrom", "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0"}})
	h.addCT(pvesim.Guest{VMID: 201, Name: "db", MemoryMiB: 512, Cores: 1,
		Disks: map[string]string{"rootfs": "local-lvm:subvol-201-disk-0,size=8G", "mp0": "local-lvm:subvol-201-disk-1,size=16G,mp=/data"}})

	tests := []struct {
		name string
		in   ReadGuestInput
		want Guest
	}{
		{"vm with kind", ReadGuestInput{VMID: 101, Kind: "qemu"}, Guest{VMID: 101, Exists: true, Kind: "qemu", Node: "pve1",
			Status: "running", Name: "web", MemoryMiB: 2048, Cores: 2, Tags: []string{"prod", "web"}, Protection: true,
			Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=32G"}}},
		{"container, kind looked up", ReadGuestInput{VMID: 201}, Guest{VMID: 201, Exists: true, Kind: "lxc", Node: "pve1",
			Status: "stopped", Name: "db", MemoryMiB: 512, Cores: 1,
			Disks: map[string]string{"rootfs": "local-lvm:subvol-201-disk-0,size=8G", "mp0": "local-lvm:subvol-201-disk-1,size=16G,mp=/data"}}},
		{"missing, kind looked up", ReadGuestInput{VMID: 999}, Guest{VMID: 999}},
		{"missing, kind given", ReadGuestInput{VMID: 999, Kind: "qemu"}, Guest{VMID: 999}},
		{"container asked as vm", ReadGuestInput{VMID: 201, Kind: "qemu"}, Guest{VMID: 201}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := run[Guest](h, h.act.ReadGuest, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got.Exists && got.Digest == "" {
				t.Error("no digest")
			}
			if got.Exists && got.Config["memory"] == "" {
				t.Error("raw config missing")
			}
			got.Digest, got.Config = "", nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ReadGuest =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}

	_, err := run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 101, Kind: "vmware"})
	wantErr(t, err, ErrTypeBadRequest, false)
}

func TestReadGuestMemoryForms(t *testing.T) {
	for in, want := range map[string]int{"2048": 2048, "current=4096": 4096, "current=1024,foo=bar": 1024, "": 0} {
		if got := parseMemoryMiB(in); got != want {
			t.Errorf("parseMemoryMiB(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestListGuests(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 102, Name: "b", Status: "running", MemoryMiB: 4096, Cores: 4, Tags: "x"})
	h.addVM(pvesim.Guest{VMID: 101, Name: "a", MemoryMiB: 1024, Cores: 1})
	h.addCT(pvesim.Guest{VMID: 200, Name: "c", MemoryMiB: 256, Cores: 1,
		Disks: map[string]string{"rootfs": "local-lvm:subvol-200-disk-0,size=4G"}})

	got, err := run[ListGuestsResult](h, h.act.ListGuests, ListGuestsInput{})
	if err != nil {
		t.Fatal(err)
	}
	want := []GuestSummary{
		{VMID: 101, Kind: "qemu", Name: "a", Status: "stopped", MemoryMiB: 1024, Cores: 1},
		{VMID: 102, Kind: "qemu", Name: "b", Status: "running", MemoryMiB: 4096, Cores: 4, Tags: []string{"x"}},
		{VMID: 200, Kind: "lxc", Name: "c", Status: "stopped", MemoryMiB: 256, Cores: 1},
	}
	if !reflect.DeepEqual(got.Guests, want) {
		t.Fatalf("ListGuests =\n %+v\nwant\n %+v", got.Guests, want)
	}

	empty := newHarness(t, pvesim.Config{})
	got, err = run[ListGuestsResult](empty, empty.act.ListGuests, ListGuestsInput{})
	if err != nil || got.Guests == nil || len(got.Guests) != 0 {
		t.Fatalf("empty node: %+v, %v; want an empty, non-nil list", got, err)
	}
}

// benchHarness is a harness for benchmarks: a node with n VMs.
func benchHarness(b *testing.B, n int) *Proxmox {
	h := newHarness(b, pvesim.Config{})
	for i := 0; i < n; i++ {
		if err := h.srv.AddVM(pvesim.Guest{VMID: 100 + i, Name: "g", MemoryMiB: 512, Cores: 1}); err != nil {
			b.Fatal(err)
		}
	}
	return h.act
}

// BenchmarkListGuests is the cost of one drift-detection pass over a node
// with 200 guests (one /cluster/resources call).
func BenchmarkListGuests(b *testing.B) {
	act := benchHarness(b, 200)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := act.ListGuests(ctx, ListGuestsInput{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadGuest is one guest read with its kind known (two calls).
func BenchmarkReadGuest(b *testing.B) {
	act := benchHarness(b, 1)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := act.ReadGuest(ctx, ReadGuestInput{VMID: 100, Kind: KindQEMU}); err != nil {
			b.Fatal(err)
		}
	}
}
