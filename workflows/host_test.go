package workflows

import (
	"slices"
	"testing"

	"github.com/felhom/felhom-agent/workflows/desired"
)

func TestDrift(t *testing.T) {
	want := map[string]desired.Spec{
		"101": {VMID: 101, State: desired.Running, MemoryMiB: 1024, Cores: 2, Name: "web"},
		"102": {VMID: 102, State: desired.Stopped, MemoryMiB: 512, Cores: 1},
		"103": {VMID: 103, State: desired.Absent},
		"104": {VMID: 104, State: desired.Running, MemoryMiB: 512, Cores: 1},
		"105": {VMID: 105, State: desired.Running, MemoryMiB: 512, Cores: 1},
		"106": {VMID: 106, State: desired.Absent},
	}
	have := []GuestSummary{
		{VMID: 101, Status: "running", MemoryMiB: 1024, Cores: 2, Name: "web"}, // converged
		{VMID: 102, Status: "running", MemoryMiB: 512, Cores: 1},               // should be stopped
		{VMID: 103, Status: "stopped"},                                         // should be gone
		{VMID: 105, Status: "running", MemoryMiB: 2048, Cores: 1},              // memory differs
		// 104 is missing; 106 is absent and gone
		{VMID: 900, Status: "running"}, // nobody's
	}
	drifted, unmanaged := drift(want, have)
	if !slices.Equal(drifted, []int{102, 103, 104, 105}) {
		t.Errorf("drifted = %v, want [102 103 104 105]", drifted)
	}
	if !slices.Equal(unmanaged, []int{900}) {
		t.Errorf("unmanaged = %v, want [900]", unmanaged)
	}
}
