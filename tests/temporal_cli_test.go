package tests

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/testtool"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// readmeBlock returns the shell block that follows marker in README.md.
func readmeBlock(t *testing.T, marker string) string {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	must(t, err)
	_, after, ok := strings.Cut(string(data), marker)
	if !ok {
		t.Fatalf("README.md has no %q", marker)
	}
	_, after, ok = strings.Cut(after, "```sh\n")
	if !ok {
		t.Fatal("no ```sh block after the marker")
	}
	block, _, ok := strings.Cut(after, "```")
	if !ok {
		t.Fatal("unterminated ```sh block")
	}
	return block
}

// The approval path documented for operators with no project tool, run
// line for line with the real temporal CLI, ssh-keygen and jq.
func TestApproveWithTemporalCLIAndSSHKeygenAsDocumented(t *testing.T) {
	// Without them the README's approval commands go unchecked; .ci/run
	// installs them and sets CI=true, which makes a missing one a failure.
	testtool.Need(t, "temporal", "jq", "ssh-keygen")
	host := uniqueHost("pve-cli")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 190, Name: "old", Status: "running", MemoryMiB: 512, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:vm-190-disk-0,size=8G"}}))
	key := newOperatorKey(t, "ed25519")
	a := startAgent(t, host, sim, key.Pub)
	a.applySpec(t, desired.Spec{Host: host, VMID: 190, State: desired.Absent})
	a.waitPhase(t, 190, workflows.PhasePending)

	cmd := exec.Command("bash", "-euo", "pipefail", "-c", readmeBlock(t, "<!-- approve-without-tools"))
	cmd.Dir = t.TempDir()
	srv := devservertest.Start(t)
	cmd.Env = append(os.Environ(),
		"TEMPORAL_ADDRESS="+srv.FrontendAddr(), "TEMPORAL_NAMESPACE="+srv.Namespace(),
		"WF="+workflows.GuestWorkflowID(host, 190), "KEY="+key.Path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README approval commands failed: %v\n%s", err, out)
	}
	st := a.waitPhase(t, 190, workflows.PhaseConverged)
	if _, ok := sim.Guest(190); ok {
		t.Fatalf("guest 190 still exists; the commands printed:\n%s\nrecent: %+v", out, st.Recent)
	}
	if !strings.Contains(string(out), `"op":"guest.destroy"`) {
		t.Errorf("the blob shown to the operator is not the op:\n%s", out)
	}
}
