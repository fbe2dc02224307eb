package activities

import (
	"context"
	"reflect"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
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
		{VMID: 101, Kind: "qemu", Name: "a", Status: "stopped", MemoryMiB: 1024, MaxCPU: 1},
		{VMID: 102, Kind: "qemu", Name: "b", Status: "running", MemoryMiB: 4096, MaxCPU: 4, Tags: []string{"x"}},
		{VMID: 200, Kind: "lxc", Name: "c", Status: "stopped", MemoryMiB: 256, MaxCPU: 1},
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

// TestListingConfirmedByReads: the node's listing lags a pvestatd cycle
// behind and is shaped unlike a desired state; the host workflow's listing
// reads each guest, so that it says what the guest is now.
func TestListingConfirmedByReads(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	h := newHarness(t, pvesim.Config{Clock: func() time.Time { return time.Unix(0, now.Load()) }})
	h.addVM(pvesim.Guest{VMID: 101, Name: "web", Status: "running", MemoryMiB: 1024, Cores: 2, Config: map[string]string{"sockets": "2"}})
	if _, err := run[ListGuestsResult](h, h.act.ListGuests, ListGuestsInput{}); err != nil {
		t.Fatal(err)
	}
	// Within the same pvestatd cycle: a memory change that waits for the
	// next start, a stop behind the agent's back, a new unnamed guest.
	if _, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"memory": 2048}}); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.SetStatus(101, "stopped"); err != nil {
		t.Fatal(err)
	}
	h.addVM(pvesim.Guest{VMID: 102, MemoryMiB: 512})

	raw, err := run[ListGuestsResult](h, h.act.ListGuests, ListGuestsInput{})
	if err != nil {
		t.Fatal(err)
	}
	wantRaw := []GuestSummary{
		{VMID: 101, Kind: "qemu", Name: "web", Status: "running", MemoryMiB: 1024, MaxCPU: 4},
		{VMID: 102, Kind: "qemu", Status: "unknown"},
	}
	if !reflect.DeepEqual(raw.Guests, wantRaw) {
		t.Fatalf("the listing =\n %+v\nwant what pvestatd last saw\n %+v", raw.Guests, wantRaw)
	}
	want := []workflows.GuestSummary{
		{VMID: 101, Kind: "qemu", Name: "web", Status: "stopped", MemoryMiB: 2048, Cores: 2},
		{VMID: 102, Kind: "qemu", Status: "stopped", MemoryMiB: 512, Cores: 1},
	}
	val, err := h.hostEnv().ExecuteActivity((&Host{Proxmox: h.act}).ListGuests, workflows.ListGuestsInput{})
	if err != nil {
		t.Fatal(err)
	}
	var got workflows.ListGuestsResult
	if err := val.Get(&got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Guests, want) {
		t.Fatalf("the host workflow's listing =\n %+v\nwant the guests as they are\n %+v", got.Guests, want)
	}
}

// Proxmox writes no memory into a VM created without one; it runs with the
// schema's 512 MiB, and that is what the agent reads.
func TestReadGuestMemoryDefault(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	upid, err := h.act.postTask(context.Background(), "POST", "/nodes/pve1/qemu", map[string]any{"vmid": 150, "name": "bare"})
	if err != nil {
		t.Fatal(err)
	}
	waitTaskDone(t, h, upid)
	g, err := run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 150})
	if err != nil {
		t.Fatal(err)
	}
	if _, set := g.Config["memory"]; set || g.MemoryMiB != 512 || g.Cores != 1 {
		t.Fatalf("memory %d (config %q), cores %d; want Proxmox's defaults 512 and 1 read for unset keys", g.MemoryMiB, g.Config["memory"], g.Cores)
	}
}

// An idle node costs the host workflow's pass two Proxmox calls, however
// many guests it has: the listing, and one guest's configuration read in
// turn. A guest is read again when its row changed; a change the listing
// cannot show (a pending memory change of a running VM) is found by the
// turn's read of its configuration within as many passes as there are
// guests.
func TestIdleListingCostsTwoCallsPerPass(t *testing.T) {
	for _, guests := range []int{3, 40} {
		t.Run(strconv.Itoa(guests), func(t *testing.T) {
			h := newHarness(t, pvesim.Config{RecordReads: true})
			for i := range guests {
				h.addVM(pvesim.Guest{VMID: 100 + i, Name: "g" + strconv.Itoa(i), Status: "running", MemoryMiB: 512, Cores: 1})
			}
			h.srv.RefreshStats()
			pass := func() (int, []GuestSummary) {
				t.Helper()
				h.srv.ResetRequests()
				res, err := run[ListGuestsResult](h, h.act.ListGuests, ListGuestsInput{Confirm: true})
				if err != nil {
					t.Fatal(err)
				}
				return len(h.srv.Reads()), res.Guests
			}
			if n, list := pass(); n != 1+2*guests || len(list) != guests {
				t.Fatalf("first pass: %d calls for %d guests listed, want %d: the listing and every guest's status and configuration", n, len(list), 1+2*guests)
			}
			for i := range 2 * guests {
				if n, list := pass(); n != 2 || len(list) != guests || list[1].MemoryMiB != 512 {
					t.Fatalf("idle pass %d: %d calls, %d guests; want 2 calls and the %d guests as they are", i, n, len(list), guests)
				}
			}

			// A stop shows in the listing after pvestatd's next cycle: that
			// guest alone is read again.
			if err := h.srv.SetStatus(100, "stopped"); err != nil {
				t.Fatal(err)
			}
			h.srv.RefreshStats()
			n, list := pass()
			if n != 4 || list[0].Status != "stopped" {
				t.Fatalf("after a stop: %d calls, guest 100 %q; want 4 calls (listing, its status and configuration, the turn's) and stopped", n, list[0].Status)
			}

			// A pending memory change of a running VM does not show in the
			// listing: the turn's read finds it.
			if _, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"memory": 2048}}); err != nil {
				t.Fatal(err)
			}
			h.srv.RefreshStats()
			for i := 0; ; i++ {
				if i > guests {
					t.Fatalf("the pending change of guest 101 was not found in %d passes", i)
				}
				n, list := pass()
				if n != 2 {
					t.Fatalf("pass %d after the change: %d calls, want 2", i, n)
				}
				if list[1].MemoryMiB == 2048 {
					break
				}
			}
		})
	}
}

// The host's listing reads no guest whose workflow is converging (it reads
// the guest itself, and is not woken): a fleet converging costs the
// listing nothing per guest. Such a guest is listed as the row shows it,
// and read at the first pass after it converged.
func TestListingSkipsConvergingGuests(t *testing.T) {
	h := newHarness(t, pvesim.Config{RecordReads: true})
	for i := range 5 {
		h.addVM(pvesim.Guest{VMID: 100 + i, Name: "g" + strconv.Itoa(i), Status: "stopped", MemoryMiB: 512, Cores: 1})
	}
	h.srv.RefreshStats()
	e := h.env()
	skip := []int{100, 101, 102, 103, 104}
	e.RegisterActivityWithOptions(func(ctx context.Context) ([]GuestSummary, error) {
		list, _, err := h.act.listGuestsSkipping(ctx, skip)
		return list, err
	}, activity.RegisterOptions{Name: "listSkipping"})
	h.srv.ResetRequests()
	val, err := e.ExecuteActivity("listSkipping")
	if err != nil {
		t.Fatal(err)
	}
	var list []GuestSummary
	if err := val.Get(&list); err != nil {
		t.Fatal(err)
	}
	if n := len(h.srv.Reads()); n != 1 || len(list) != 5 || list[0].Confirmed {
		t.Fatalf("%d calls, %d guests (first %+v); want the listing alone, 5 guests as listed", n, len(list), list[0])
	}
	skip = nil
	h.srv.ResetRequests()
	if _, err := e.ExecuteActivity("listSkipping"); err != nil {
		t.Fatal(err)
	}
	if n := len(h.srv.Reads()); n != 1+2*5 {
		t.Fatalf("%d calls once the guests converged, want the listing and each guest's read", n)
	}
}

// What the guest workflows' steps read or left is remembered for the
// host's listing: a guest the agent just created and started is not read
// again once the listing shows it as the steps left it.
func TestListingTakesWhatTheStepsLeft(t *testing.T) {
	h := newHarness(t, pvesim.Config{RecordReads: true})
	host := &Host{Proxmox: h.act}
	ref := workflows.GuestRef{Host: hostID, VMID: 101}
	if _, err := runIn[workflows.ExecuteResult](h.hostEnv(), host.CreateGuest, workflows.CreateGuestInput{GuestRef: ref, Kind: "qemu", Name: "web", MemoryMiB: 1024, Cores: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := runIn[workflows.ExecuteResult](h.hostEnv(), host.StartGuest, workflows.StartGuestInput{GuestRef: ref}); err != nil {
		t.Fatal(err)
	}
	h.srv.RefreshStats()
	h.srv.ResetRequests()
	val, err := h.hostEnv().ExecuteActivity(host.ListGuests, workflows.ListGuestsInput{})
	if err != nil {
		t.Fatal(err)
	}
	var got workflows.ListGuestsResult
	if err := val.Get(&got); err != nil {
		t.Fatal(err)
	}
	want := []workflows.GuestSummary{{VMID: 101, Kind: "qemu", Name: "web", Status: "running", MemoryMiB: 1024, Cores: 2}}
	if !reflect.DeepEqual(got.Guests, want) {
		t.Fatalf("listing %+v, want %+v", got.Guests, want)
	}
	// The listing and the configuration read in turn; no status read.
	if n := len(h.srv.ReadsMatching("/nodes/*/qemu/101/status/current")); n != 0 {
		t.Fatalf("the listing read the guest's status %d times, want none", n)
	}
}
