package activities

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

func customerVM(vmid int, status string) pvesim.Guest {
	return pvesim.Guest{VMID: vmid, Name: "customer", Status: status, MemoryMiB: 2048, Cores: 2,
		Disks: map[string]string{"scsi0": "local-lvm:vm-" + vmidString(vmid) + "-disk-0,size=32G"}}
}

func TestDestroyGuestIsGated(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(customerVM(101, "running"))

	// No approval: refused, and the guest keeps running.
	_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101})
	wantErr(t, err, "pending_signature", false)
	if !strings.Contains(err.Error(), `guest.destroy host=pve1 guest=101 params={"kind":"qemu"}`) {
		t.Errorf("refusal %q does not show the action to sign", err)
	}
	// Signed for another guest, or with other params: binding mismatch.
	_, err = run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101,
		Approval: h.approve(gate.OpGuestDestroy, "102", map[string]any{"kind": "qemu"})})
	wantErr(t, err, "binding_mismatch", false)
	_, err = run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101,
		Approval: h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "lxc"})})
	wantErr(t, err, "binding_mismatch", false)
	// A hub that claims scratch in the input changes nothing: provenance is
	// read from the ledger only (there is no such input field to abuse).
	if len(h.srv.Requests()) != 0 {
		t.Fatalf("refused destroys sent requests: %+v", h.srv.Requests())
	}
	if g, _ := h.guest(101); g.Status != "running" {
		t.Fatalf("a refused destroy stopped the guest: %+v", g)
	}

	// Signed: the guest is stopped, then destroyed.
	approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
	res, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := h.guest(101); ok || res.UPID == "" {
		t.Fatalf("guest still exists after destroy (%+v)", res)
	}
	reqs := h.srv.Requests()
	if len(reqs) != 2 || !strings.HasSuffix(reqs[0].Path, "/status/stop") || reqs[1].Method != "DELETE" {
		t.Fatalf("requests %+v, want stop then DELETE", reqs)
	}
	if reqs[1].Form.Get("purge") != "1" || reqs[1].Form.Get("destroy-unreferenced-disks") != "1" {
		t.Errorf("destroy params %v", reqs[1].Form)
	}
	if slices.ContainsFunc(h.srv.Volumes(), func(v string) bool { return strings.Contains(v, "vm-101-") }) {
		t.Errorf("volumes left: %v", h.srv.Volumes())
	}

	// The same approval once more: a replay. (The test environment gives
	// every execution the same run and activity id, so this also shows the
	// admission was spent when the destroy completed.)
	h.addVM(customerVM(101, "stopped"))
	_, err = run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
	wantErr(t, err, "replay", false)
	if _, ok := h.guest(101); !ok {
		t.Fatal("replayed approval destroyed a guest")
	}
}

func TestDestroyProtectedRefusedBeforeAnything(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	g := customerVM(101, "running")
	g.Protection = true
	h.addVM(g)
	approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
	_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
	wantErr(t, err, ErrTypeProtected, false)
	if len(h.srv.Requests()) != 0 {
		t.Fatalf("protected destroy sent %+v", h.srv.Requests())
	}
	if g, _ := h.guest(101); g.Status != "running" {
		t.Fatal("protected guest was stopped")
	}
	// The refusal did not spend the approval: the gate never ran. Once the
	// operator lifts the protection, the same approval destroys the guest.
	if err := h.act.Client.Put(context.Background(), "/nodes/pve1/qemu/101/config", map[string]any{"protection": 0}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval}); err != nil {
		t.Fatalf("destroy with the unspent approval: %v", err)
	}
}

func TestDestroyGoneIsDone(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.recordCreate(150, "qemu", testMarker, false)
	res, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150})
	if err != nil || !res.AlreadyDone {
		t.Fatalf("DestroyGuest of a missing guest = %+v, %v; want AlreadyDone", res, err)
	}
	if _, ok := h.ledger.Entry(150); ok {
		t.Fatal("ledger still lists the gone guest")
	}
}

// TestDestroyAgentCreated: a fresh create never started (compensating
// rollback) and scratch guests are benign by the host's provenance, no
// signature needed; an agent-created guest that was handed over, or whose
// VMID another guest took, needs one.
func TestDestroyAgentCreated(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	for _, c := range []struct {
		name     string
		vmid     int
		marker   string // the marker the live guest carries
		scratch  bool
		status   string
		handover bool
		benign   bool
	}{
		{"fresh create, never started", 150, testMarker, false, "stopped", false, true},
		{"scratch, running", 151, testMarker, true, "running", true, true},
		{"handed over", 152, testMarker, false, "stopped", true, false},
		{"running", 153, testMarker, false, "running", false, false},
		{"another instance took the VMID", 154, "", true, "stopped", false, false},
	} {
		h.recordCreate(c.vmid, "qemu", testMarker, c.scratch)
		if c.handover {
			h.ledger.HandOver(c.vmid, testMarker)
		}
		desc := ""
		if c.marker != "" {
			desc = markerLine + c.marker
		}
		h.addVM(pvesim.Guest{VMID: c.vmid, Name: "x", MemoryMiB: 512, Status: c.status, Description: desc})
		_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: c.vmid})
		_, exists := h.guest(c.vmid)
		if c.benign {
			if err != nil || exists {
				t.Fatalf("%s: err %v, exists %v; want destroyed unsigned", c.name, err, exists)
			}
			if _, ok := h.ledger.Entry(c.vmid); ok {
				t.Fatalf("ledger still lists %d", c.vmid)
			}
		} else {
			wantErr(t, err, "pending_signature", false)
			if !exists {
				t.Fatal("destroyed without signature")
			}
		}
	}
	// A pending (unconfirmed) create is not provenance.
	h.ledger.BeginCreate(ledger.Entry{VMID: 160, Kind: "qemu", Instance: testMarker, Scratch: true})
	h.addVM(pvesim.Guest{VMID: 160, Name: "x", MemoryMiB: 512, Description: markerLine + testMarker})
	_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 160})
	wantErr(t, err, "pending_signature", false)
}

func TestDestroyContainer(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addCT(pvesim.Guest{VMID: 201, Name: "db", Status: "running", MemoryMiB: 512,
		Disks: map[string]string{"rootfs": "local-lvm:subvol-201-disk-0,size=8G"}})
	// The input's kind is ignored for the action: the guest's real kind is
	// what gets signed.
	_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 201, Kind: "qemu",
		Approval: h.approve(gate.OpGuestDestroy, "201", map[string]any{"kind": "lxc"})})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := h.guest(201); ok {
		t.Fatal("container still exists")
	}
}

func TestRestoreBackup(t *testing.T) {
	for _, kind := range []pvesim.Kind{pvesim.KindQEMU, pvesim.KindLXC} {
		t.Run(string(kind), func(t *testing.T) {
			h := newHarness(t, pvesim.Config{})
			g := pvesim.Guest{VMID: 101, Name: "app", Status: "running", MemoryMiB: 1024, Cores: 1}
			if kind == pvesim.KindLXC {
				g.Disks = map[string]string{"rootfs": "local-lvm:subvol-101-disk-0,size=4G"}
			} else {
				g.Disks = map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=4G"}
			}
			backupOf := g
			backupOf.MemoryMiB = 4096
			archive, err := h.srv.AddBackup(kind, backupOf)
			if err != nil {
				t.Fatal(err)
			}
			if kind == pvesim.KindLXC {
				h.addCT(g)
			} else {
				h.addVM(g)
			}
			in := RestoreBackupInput{VMID: 101, Archive: archive}
			_, err = run[TaskResult](h, h.act.RestoreBackup, in)
			wantErr(t, err, "pending_signature", false)
			if len(h.srv.Requests()) != 0 {
				t.Fatalf("unsigned restore sent %+v", h.srv.Requests())
			}

			in.Approval = h.approve(gate.OpGuestRestore, "101", map[string]any{"archive": archive})
			res, err := run[TaskResult](h, h.act.RestoreBackup, in)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := h.guest(101)
			if got.MemoryMiB != 4096 || got.Status != "stopped" || res.UPID == "" {
				t.Fatalf("after restore: %+v (%+v); want the backup's 4096 MiB, stopped", got, res)
			}
		})
	}

	// With a kind in the request, the approval names the guest's real kind.
	h := newHarness(t, pvesim.Config{})
	g := pvesim.Guest{VMID: 101, Name: "app", MemoryMiB: 1024, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=4G"}}
	archive, err := h.srv.AddBackup(pvesim.KindQEMU, g)
	if err != nil {
		t.Fatal(err)
	}
	h.addVM(g)
	_, err = run[TaskResult](h, h.act.RestoreBackup, RestoreBackupInput{VMID: 101, Kind: "lxc", Archive: archive,
		Approval: h.approve(gate.OpGuestRestore, "101", map[string]any{"archive": archive, "kind": "lxc"})})
	wantErr(t, err, "binding_mismatch", false)
	if _, err := run[TaskResult](h, h.act.RestoreBackup, RestoreBackupInput{VMID: 101, Kind: "qemu", Archive: archive,
		Approval: h.approve(gate.OpGuestRestore, "101", map[string]any{"archive": archive, "kind": "qemu"})}); err != nil {
		t.Fatal(err)
	}

	_, err = run[TaskResult](h, h.act.RestoreBackup, RestoreBackupInput{VMID: 404, Archive: "local:backup/x.vma.zst"})
	wantErr(t, err, ErrTypeNotFound, false)
	_, err = run[TaskResult](h, h.act.RestoreBackup, RestoreBackupInput{VMID: 404, Archive: "nonsense"})
	wantErr(t, err, ErrTypeBadRequest, false)
}

func TestWipeVolume(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	g := customerVM(101, "stopped")
	h.addVM(g)
	backup, err := h.srv.AddBackup(pvesim.KindQEMU, g)
	if err != nil {
		t.Fatal(err)
	}
	in := WipeVolumeInput{Volume: backup}
	_, err = run[TaskResult](h, h.act.WipeVolume, in)
	wantErr(t, err, "pending_signature", false)
	if !strings.Contains(err.Error(), "guest=101") {
		t.Errorf("the backup's owner is not named: %v", err)
	}

	in.Approval = h.approve(gate.OpVolumeWipe, "101", map[string]any{"volume": backup})
	if _, err := run[TaskResult](h, h.act.WipeVolume, in); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(h.srv.Volumes(), backup) {
		t.Fatal("volume still there")
	}
	res, err := run[TaskResult](h, h.act.WipeVolume, WipeVolumeInput{Volume: backup})
	if err != nil || !res.AlreadyDone {
		t.Fatalf("wipe of a gone volume = %+v, %v; want AlreadyDone without a signature", res, err)
	}

	// A disk an existing guest still uses: the agent refuses, before the gate
	// (the API itself would delete it).
	disk := "local-lvm:vm-101-disk-0"
	_, err = run[TaskResult](h, h.act.WipeVolume, WipeVolumeInput{Volume: disk,
		Approval: h.approve(gate.OpVolumeWipe, "101", map[string]any{"volume": disk})})
	wantErr(t, err, ErrTypeVolumeInUse, false)
}

func TestGateMissingFailsSafe(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(customerVM(101, "stopped"))
	h.act.Gate = nil
	_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101})
	wantErr(t, err, "gate_missing", false)
	if _, ok := h.guest(101); !ok {
		t.Fatal("destroyed without a gate")
	}
}

// TestAdmissionSpentOnFinalFailure: a destroy that passed the gate and then
// failed for good leaves no admission behind for a later attempt to use.
func TestAdmissionSpentOnFinalFailure(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(customerVM(101, "stopped"))
	approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
	h.srv.Inject(pvesim.Fault{Method: "DELETE", Path: "/nodes/*/qemu/101", Kind: pvesim.FaultTaskError, Message: "zfs error: dataset is busy"})
	_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
	wantErr(t, err, ErrTypeTaskFailed, false)
	_, err = run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
	wantErr(t, err, "replay", false)

	// A retryable failure keeps it: the retry proceeds without a new signature.
	h.addVM(customerVM(102, "stopped"))
	approval = h.approve(gate.OpGuestDestroy, "102", map[string]any{"kind": "qemu"})
	h.srv.Inject(pvesim.Fault{Method: "DELETE", Path: "/nodes/*/qemu/102", Kind: pvesim.FaultHTTPError, Status: 596})
	_, err = run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 102, Approval: approval})
	wantErr(t, err, ErrTypeUnavailable, true)
	if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 102, Approval: approval}); err != nil {
		t.Fatalf("retry after a retryable failure: %v", err)
	}
	if _, ok := h.guest(102); ok {
		t.Fatal("guest 102 not destroyed")
	}
}

// An approved restore whose answer was lost after Proxmox took it (an attempt
// killed between the POST and its heartbeat looks the same to the retry):
// once the restore ran, the guest is no longer the instance the approval was
// admitted for. The retry adopts the restore's task from the task list, sends
// nothing, and finishes the act: the approval is not refused, and no second
// signature restores a second time. A guest changed by anything else than
// the restore is still refused.
func TestRestoreRetryAfterLostAnswerAdoptsItsTask(t *testing.T) {
	// The test environment schedules each attempt when it runs it; the
	// node's clock runs ahead so the first attempt's task counts as started
	// since the step was scheduled.
	h := newHarness(t, pvesim.Config{TaskDuration: time.Millisecond, Clock: func() time.Time { return time.Now().Add(time.Minute) }})
	g := pvesim.Guest{VMID: 101, Name: "app", Status: "stopped", MemoryMiB: 1024, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=4G"}}
	backup := g
	backup.MemoryMiB = 4096
	archive, err := h.srv.AddBackup(pvesim.KindQEMU, backup)
	if err != nil {
		t.Fatal(err)
	}
	h.addVM(g)
	in := RestoreBackupInput{VMID: 101, Archive: archive, Approval: h.approve(gate.OpGuestRestore, "101", map[string]any{"archive": archive})}
	h.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu", Kind: pvesim.FaultDropAfter})
	_, err = run[TaskResult](h, h.act.RestoreBackup, in)
	wantErr(t, err, ErrTypeUnavailable, true)
	reqs := h.srv.RequestsMatching("POST", "/nodes/*/qemu")
	if len(reqs) != 1 || reqs[0].UPID == "" {
		t.Fatalf("restore requests %+v, want one that started a task", reqs)
	}
	waitTaskDone(t, h, reqs[0].UPID)

	res, err := run[TaskResult](h, h.act.RestoreBackup, in)
	if err != nil {
		t.Fatalf("retry of the approved restore: %v", err)
	}
	if !res.Resumed || res.UPID != reqs[0].UPID {
		t.Errorf("retry = %+v, want the first attempt's task %s adopted", res, reqs[0].UPID)
	}
	if n := h.mutations("POST", "/nodes/*/qemu"); n != 1 {
		t.Errorf("restore sent %d times, want once", n)
	}
	if got, _ := h.guest(101); got.MemoryMiB != 4096 {
		t.Errorf("guest after the restore: %+v, want the backup's 4096 MiB", got)
	}
	if ad, ok := h.ledger.Admission(approvalKey(in.Approval)); !ok || ad.State != ledger.Done {
		t.Errorf("admission %+v (%v), want done", ad, ok)
	}
	// The act is done: the approval restores nothing again.
	if res, err := run[TaskResult](h, h.act.RestoreBackup, in); err != nil || !res.AlreadyDone {
		t.Errorf("third attempt = %+v, %v; want already done", res, err)
	}
	if n := h.mutations("POST", "/nodes/*/qemu"); n != 1 {
		t.Errorf("restore sent %d times, want once", n)
	}

	// Refused by Proxmox before it did anything (the admission started),
	// then the guest replaced by another instance (here: another SMBIOS
	// uuid, written past the agent): no restore task to adopt, and the gate
	// refuses the approval for the other instance.
	h2 := newHarness(t, pvesim.Config{TaskDuration: time.Millisecond, Clock: func() time.Time { return time.Now().Add(time.Minute) }})
	archive2, err := h2.srv.AddBackup(pvesim.KindQEMU, backup)
	if err != nil {
		t.Fatal(err)
	}
	h2.addVM(g)
	in2 := RestoreBackupInput{VMID: 101, Archive: archive2, Approval: h2.approve(gate.OpGuestRestore, "101", map[string]any{"archive": archive2})}
	h2.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu", Kind: pvesim.FaultHTTPError, Status: 500})
	if _, err = run[TaskResult](h2, h2.act.RestoreBackup, in2); err == nil {
		t.Fatal("restore refused by Proxmox succeeded")
	}
	if _, err := h2.act.postTask(context.Background(), "PUT", "/nodes/pve1/qemu/101/config",
		map[string]any{"smbios1": "uuid=0b5e2f4a-1c3d-4e5f-8a9b-0c1d2e3f4a5b"}); err != nil {
		t.Fatal(err)
	}
	_, err = run[TaskResult](h2, h2.act.RestoreBackup, in2)
	wantErr(t, err, "replay", false)
	if n := h2.mutations("POST", "/nodes/*/qemu"); n != 1 {
		t.Errorf("restore sent %d times, want only the refused one", n)
	}
}
