package main

import (
	"fmt"
	"slices"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// A hidden guest disappears from the token's view and comes back when it is
// shown again; the other guests stay visible meanwhile.
func TestHideAndShowAGuest(t *testing.T) {
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: "soak1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	for _, vmid := range []int{101, 102} {
		if err := sim.AddVM(pvesim.Guest{VMID: vmid, MemoryMiB: 512, Cores: 1}); err != nil {
			t.Fatal(err)
		}
	}
	h := &host{id: "soak1", sim: sim, chaos: hostChaos{locks: map[int]string{}, hidden: map[int]bool{}}}
	if h.chaos.privileges, err = tokenPrivileges(h); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(h.chaos.privileges, "VM.Audit") || !slices.Contains(h.chaos.privileges, "VM.Allocate") {
		t.Fatalf("privileges %v", h.chaos.privileges)
	}
	visible := func(vmid int) bool {
		var cfg struct {
			Data map[string]any `json:"data"`
		}
		return simGet(h, fmt.Sprintf("/nodes/soak1/qemu/%d/config", vmid), &cfg) == nil
	}
	h.chaos.hidden[101] = true
	sim.SetTokenACL(h.chaos.acl())
	if visible(101) || !visible(102) {
		t.Errorf("hidden: 101 visible %v, 102 visible %v; want false, true", visible(101), visible(102))
	}
	h.unhide(101)
	if !visible(101) || !visible(102) {
		t.Errorf("shown again: 101 visible %v, 102 visible %v", visible(101), visible(102))
	}
}
