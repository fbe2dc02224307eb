package tests

import (
	"slices"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// A restore job on a guest whose desired state is running runs through the
// guest's workflow: while the job has the guest stopped (here for five
// seconds before Proxmox takes the restore), the host workflow sees the
// guest stopped and wakes its workflow, which starts it only after the job.
// Run beside the guest's workflow, the job would lose that race: a start
// between its stop and its restore, and a restore refused on a running VM
// with its approval spent.
func TestRestoreJobRunsThroughTheGuestWorkflow(t *testing.T) {
	host := uniqueHost("pve-jobrace")
	sim := startSim(t, host)
	vm := pvesim.Guest{VMID: 190, Name: "db", Status: "running", MemoryMiB: 512, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:vm-190-disk-0,size=4G"}}
	must(t, sim.AddVM(vm))
	archive, err := sim.AddBackup(pvesim.KindQEMU, vm)
	must(t, err)
	ops := newOperatorKey(t, "ed25519")
	a := startAgentWith(t, host, sim, func(c *worker.Config) { c.DriftCheckInterval = time.Second }, ops.Pub)
	a.applySpec(t, desired.Spec{Host: host, VMID: 190, Kind: desired.QEMU, Name: "db", State: desired.Running, Memory: "512", Cores: 1})
	a.waitPhase(t, 190, workflows.PhaseConverged)
	waitFor(t, "the host workflow to know guest 190", func() bool { return slices.Contains(a.hostStatus(t).Managed, 190) })

	sim.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu", VMID: 190, Kind: pvesim.FaultDelay, Delay: 5 * time.Second})
	restore := desired.Action{Op: gate.OpGuestRestore, Host: host, Guest: "190", Params: map[string]any{"archive": archive}}
	if code := runJobRecorded(t, a.client, host, ops, restore, "job-through-guest-restore"); code != "" {
		t.Fatalf("restore job refused: %s", code)
	}
	if n := len(sim.RequestsMatching("POST", "/nodes/*/qemu/190/status/stop")); n != 1 {
		t.Errorf("the job stopped the guest %d times, want once", n)
	}
	st := a.waitStatus(t, 190, "running again after the restore", func(st workflows.GuestStatus) bool {
		return st.Phase == workflows.PhaseConverged && st.Observed != nil && st.Observed.Status == "running"
	})
	restoreAt := sim.RequestsMatching("POST", "/nodes/*/qemu")[0].Time
	for _, r := range sim.RequestsMatching("POST", "/nodes/*/qemu/190/status/start") {
		if r.Time.Before(restoreAt.Add(5 * time.Second)) {
			t.Errorf("guest started at %s, while the job's restore (sent %s) was held", r.Time, restoreAt)
		}
	}
	if !hasRecord(st.Recent, gate.OpGuestRestore, "done") || !hasRecord(st.Recent, desired.OpStart, "done") {
		t.Errorf("recent %+v, want the job's restore, then a start", st.Recent)
	}
	recordHistory(t, a.client, workflows.GuestWorkflowID(host, 190), "", "guest-desired-memo-restore-job")
}

// A destroy job leaves the guest desired absent: its workflow does not
// re-create it, and the host workflow, told so, sees no drift.
func TestDestroyJobLeavesTheGuestDesiredAbsent(t *testing.T) {
	host := uniqueHost("pve-jobdestroy")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 191, Name: "old", Status: "running", MemoryMiB: 512, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:vm-191-disk-0,size=4G"}}))
	ops := newOperatorKey(t, "ed25519")
	a := startAgentWith(t, host, sim, func(c *worker.Config) { c.DriftCheckInterval = time.Second }, ops.Pub)
	a.applySpec(t, desired.Spec{Host: host, VMID: 191, Kind: desired.QEMU, Name: "old", State: desired.Running, Memory: "512", Cores: 1})
	a.waitPhase(t, 191, workflows.PhaseConverged)

	destroy := desired.Action{Op: gate.OpGuestDestroy, Host: host, Guest: "191", Params: map[string]any{"kind": "qemu"}}
	if code := runJob(t, a.client, host, ops, destroy); code != "" {
		t.Fatalf("destroy job refused: %s", code)
	}
	st := a.waitStatus(t, 191, "desired absent and converged", func(st workflows.GuestStatus) bool {
		return st.Desired != nil && st.Desired.State == desired.Absent && st.Phase == workflows.PhaseConverged
	})
	if st.Generation != 2 {
		t.Errorf("generation %d, want 2", st.Generation)
	}
	// Two host passes after the destroy: the guest is gone and wanted gone.
	done := time.Now()
	waitFor(t, "two host passes", func() bool {
		hs := a.hostStatus(t)
		return hs.LastPass.After(done.Add(time.Second)) && len(hs.Drifted) == 0
	})
	if _, ok := sim.Guest(191); ok || len(sim.RequestsMatching("POST", "/nodes/*/qemu")) != 0 {
		t.Fatal("the destroyed guest was created again")
	}
	recordHistory(t, a.client, workflows.GuestWorkflowID(host, 191), "", "guest-desired-memo-destroy-job")
}

func hasRecord(recent []workflows.ActionRecord, op, result string) bool {
	for _, r := range recent {
		if r.Action.Op == op && r.Result == result {
			return true
		}
	}
	return false
}
