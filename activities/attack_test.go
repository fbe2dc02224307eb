package activities

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// TestHostileControlPlaneMatrix drives each way a hostile hub or Temporal
// server could try to make this host destroy or overwrite customer data
// without a signature for that exact act, through the real executors, the
// simulator in strict mode, the real gate with ssh-keygen keys, and the
// ledger and nonce store on disk. Each attack must be refused with its code
// and leave the data alone; the legitimate path beside it must still work.
// Everything the attacker controls reaches the host as an activity input or
// a heartbeat detail, as here.
func TestHostileControlPlaneMatrix(t *testing.T) {
	tests := []struct {
		name   string
		attack func(t *testing.T, h *harness) error
		code   string                         // the refusal's error type
		intact func(t *testing.T, h *harness) // the data the attack aimed at
		legit  func(t *testing.T, h *harness) // the legitimate path
	}{
		{
			name: "absent for a guest the agent created and started (same-run exemption)",
			attack: func(t *testing.T, h *harness) error {
				h.createVM(150, false)
				if _, err := run[TaskResult](h, h.act.StartGuest, GuestInput{VMID: 150}); err != nil {
					t.Fatal(err)
				}
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150})
				return err
			},
			code:   "pending_signature",
			intact: guestExists(150),
			legit: func(t *testing.T, h *harness) { // compensating rollback of a fresh create
				h.createVM(160, false)
				if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 160}); err != nil {
					t.Fatalf("rollback of a fresh create: %v", err)
				}
				h.gone(t, 160)
			},
		},
		{
			name: "absent for an agent-created guest after the rollback window",
			attack: func(t *testing.T, h *harness) error {
				h.createVM(150, false)
				h.setClock(func() time.Time { return time.Now().Add(gate.RollbackWindow + time.Minute) })
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150})
				return err
			},
			code:   "pending_signature",
			intact: guestExists(150),
			legit: func(t *testing.T, h *harness) {
				approval := h.approve(gate.OpGuestDestroy, "150", map[string]any{"kind": "qemu"})
				if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150, Approval: approval}); err != nil {
					t.Fatalf("signed destroy: %v", err)
				}
				h.gone(t, 150)
			},
		},
		{
			name: "forged create heartbeat: a foreign guest's create task at a VMID with a pending record",
			attack: func(t *testing.T, h *harness) error {
				// The agent's create crashed after its pending record, before
				// the POST; a customer created VMID 150 meanwhile.
				h.ledger.BeginCreate(ledgerEntry(150, testMarker))
				upid := h.outside("POST", "/nodes/pve1/qemu", map[string]any{"vmid": 150, "name": "app", "memory": 512})
				_, err := runIn[CreateResult](h.resumeFrom(Progress{Phase: "create", UPID: upid}), h.act.CreateVM,
					CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512})
				return err
			},
			code: ErrTypeVMIDTaken,
			intact: func(t *testing.T, h *harness) {
				if p := h.prov(150); p.AgentCreated {
					t.Fatalf("the customer's guest counts as agent-created: %+v", p)
				}
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150})
				wantErr(t, err, "pending_signature", false)
			},
			legit: func(t *testing.T, h *harness) { // the agent's own crashed create resumes
				h.ledger.BeginCreate(ledgerEntry(160, testMarker))
				upid := h.outside("POST", "/nodes/pve1/qemu", map[string]any{"vmid": 160, "name": "app", "memory": 512, "description": markerLine + testMarker})
				res, err := runIn[CreateResult](h.resumeFrom(Progress{Phase: "create", UPID: upid}), h.act.CreateVM,
					CreateVMInput{VMID: 160, Name: "app", MemoryMiB: 512})
				if err != nil || !h.prov(160).AgentCreated || h.mutations("POST", "/nodes/*/qemu") != 2 {
					t.Fatalf("resumed create = %+v, %v, provenance %+v", res, err, h.prov(160))
				}
			},
		},
		{
			name: "forged heartbeat: another guest's task reported as this step's",
			attack: func(t *testing.T, h *harness) error {
				h.addVM(customerVM(101, "running"))
				h.addVM(customerVM(102, "running"))
				upid := h.outside("POST", "/nodes/pve1/qemu/102/status/stop", nil)
				_, err := runIn[TaskResult](h.resumeFrom(Progress{Phase: "stop", UPID: upid}), h.act.StopGuest, GuestInput{VMID: 101})
				return err
			},
			code: "", // the claim is ignored: the step does its own work
			intact: func(t *testing.T, h *harness) {
				if g, _ := h.guest(101); g.Status != "stopped" || h.mutations("POST", "/nodes/*/qemu/101/status/stop") != 1 {
					t.Fatalf("guest 101 %s after its stop, %d stop requests: a foreign task was taken for its own", g.Status, h.mutations("POST", "/nodes/*/qemu/101/status/stop"))
				}
			},
			legit: func(t *testing.T, h *harness) {},
		},
		{
			name: "scratch guest deleted outside the agent; a customer guest takes its VMID",
			attack: func(t *testing.T, h *harness) error {
				h.recordCreate(150, "qemu", testMarker, true)
				h.addVM(customerVM(150, "running"))
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150})
				return err
			},
			code:   "pending_signature",
			intact: guestExists(150),
			legit: func(t *testing.T, h *harness) {
				h.createVM(160, true)
				run[TaskResult](h, h.act.StartGuest, GuestInput{VMID: 160})
				if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 160}); err != nil {
					t.Fatalf("scratch destroy: %v", err)
				}
				h.gone(t, 160)
			},
		},
		{
			name: "backup of an earlier customer guest under a scratch guest's VMID",
			attack: func(t *testing.T, h *harness) error {
				backup, err := h.srv.AddBackup(pvesim.KindQEMU, customerVM(150, "stopped"))
				if err != nil {
					t.Fatal(err)
				}
				h.createVM(150, true)
				_, err = run[TaskResult](h, h.act.WipeVolume, WipeVolumeInput{Volume: backup})
				return err
			},
			code: "pending_signature",
			intact: func(t *testing.T, h *harness) {
				if h.backupOf(150) == "" {
					t.Fatal("the backup is gone")
				}
			},
			legit: func(t *testing.T, h *harness) {
				backup := h.backupOf(150)
				approval := h.approve(gate.OpVolumeWipe, "150", map[string]any{"volume": backup})
				if _, err := run[TaskResult](h, h.act.WipeVolume, WipeVolumeInput{Volume: backup, Approval: approval}); err != nil {
					t.Fatalf("signed wipe: %v", err)
				}
				if h.backupOf(150) != "" {
					t.Fatal("the signed wipe left the backup")
				}
			},
		},
		{
			name: "benign scratch destroy would free an earlier instance's orphaned disk",
			attack: func(t *testing.T, h *harness) error {
				if err := h.srv.AddVolume("local-lvm:vm-150-disk-7", 8<<30); err != nil {
					t.Fatal(err)
				}
				h.createVM(150, true)
				if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150}); err != nil {
					t.Fatalf("scratch destroy: %v", err)
				}
				h.gone(t, 150)
				if r := h.srv.RequestsMatching("DELETE", "/nodes/*/qemu/150"); len(r) != 1 || r[0].Form.Get("destroy-unreferenced-disks") != "" {
					t.Fatalf("benign destroy request %+v", r)
				}
				// The orphan survived; freeing it is a signed volume.wipe.
				_, err := run[TaskResult](h, h.act.WipeVolume, WipeVolumeInput{Volume: "local-lvm:vm-150-disk-7"})
				return err
			},
			code: "pending_signature",
			intact: func(t *testing.T, h *harness) {
				if !slices.Contains(h.srv.Volumes(), "local-lvm:vm-150-disk-7") {
					t.Fatal("the orphaned disk is gone")
				}
			},
			legit: func(t *testing.T, h *harness) {},
		},
		{
			name: "one signed restore, run twice",
			attack: func(t *testing.T, h *harness) error {
				h.addVM(customerVM(101, "running"))
				backup, err := h.srv.AddBackup(pvesim.KindQEMU, customerVM(101, "stopped"))
				if err != nil {
					t.Fatal(err)
				}
				in := RestoreBackupInput{VMID: 101, Archive: backup, Approval: h.approve(gate.OpGuestRestore, "101", map[string]any{"archive": backup})}
				if _, err := run[TaskResult](h, h.act.RestoreBackup, in); err != nil {
					t.Fatalf("signed restore: %v", err)
				}
				res, err := run[TaskResult](h, h.act.RestoreBackup, in)
				if err == nil && !res.AlreadyDone {
					t.Fatalf("second run = %+v, want nothing done", res)
				}
				return err
			},
			code: "", // reported done, and nothing sent again
			intact: func(t *testing.T, h *harness) {
				if n := h.mutations("POST", "/nodes/*/qemu"); n != 1 {
					t.Fatalf("%d restore requests, want 1", n)
				}
			},
			legit: func(t *testing.T, h *harness) {},
		},
		{
			name: "approval reused on another guest at the VMID after a retryable failure",
			attack: func(t *testing.T, h *harness) error {
				h.addVM(customerVM(101, "running"))
				approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
				h.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/101/status/stop", Kind: pvesim.FaultHTTPError, Status: 500, Message: "VM 101 is locked (backup)"})
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
				wantErr(t, err, ErrTypeLocked, true)
				// The guest goes away outside the agent; another takes VMID 101.
				h.outside("POST", "/nodes/pve1/qemu/101/status/stop", nil)
				h.outside("DELETE", "/nodes/pve1/qemu/101", map[string]any{"purge": 1})
				h.addVM(customerVM(101, "running"))
				_, err = run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
				return err
			},
			code:   "replay",
			intact: guestExists(101),
			legit: func(t *testing.T, h *harness) { // a retry on the same guest finishes with the one approval
				h.addVM(customerVM(102, "running"))
				approval := h.approve(gate.OpGuestDestroy, "102", map[string]any{"kind": "qemu"})
				h.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/102/status/stop", Kind: pvesim.FaultHTTPError, Status: 500, Message: "VM 102 is locked (backup)"})
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 102, Approval: approval})
				wantErr(t, err, ErrTypeLocked, true)
				if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 102, Approval: approval}); err != nil {
					t.Fatalf("retry with the admitted approval: %v", err)
				}
				h.gone(t, 102)
			},
		},
		{
			name: "approval delivered with a benign rollback, replayed on the next instance at the VMID",
			attack: func(t *testing.T, h *harness) error {
				// The approval accompanies the rollback of a fresh create,
				// which needs none: the act runs, and the approval is spent.
				h.createVM(150, false)
				approval := h.approve(gate.OpGuestDestroy, "150", map[string]any{"kind": "qemu"})
				if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150, Approval: approval}); err != nil {
					t.Fatalf("rollback with an approval: %v", err)
				}
				h.gone(t, 150)
				// The next instance at VMID 150 is started: customer data.
				h.createVM(150, false)
				if _, err := run[TaskResult](h, h.act.StartGuest, GuestInput{VMID: 150}); err != nil {
					t.Fatal(err)
				}
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150, Approval: approval})
				return err
			},
			code:   "replay",
			intact: guestExists(150),
			legit: func(t *testing.T, h *harness) {
				// A benign rollback with an approval for another act still
				// runs, and leaves that approval unused.
				h.createVM(160, false)
				other := h.approve(gate.OpGuestDestroy, "161", map[string]any{"kind": "qemu"})
				if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 160, Approval: other}); err != nil {
					t.Fatalf("rollback with a refused approval: %v", err)
				}
				h.gone(t, 160)
				h.createVM(161, false)
				if _, err := run[TaskResult](h, h.act.StartGuest, GuestInput{VMID: 161}); err != nil {
					t.Fatal(err)
				}
				if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 161, Approval: other}); err != nil {
					t.Fatalf("the unused approval for its own act: %v", err)
				}
				h.gone(t, 161)
				// A signed destroy of the started guest works, once.
				approval := h.approve(gate.OpGuestDestroy, "150", map[string]any{"kind": "qemu"})
				if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150, Approval: approval}); err != nil {
					t.Fatalf("signed destroy: %v", err)
				}
				h.gone(t, 150)
				h.createVM(150, false)
				if _, err := run[TaskResult](h, h.act.StartGuest, GuestInput{VMID: 150}); err != nil {
					t.Fatal(err)
				}
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150, Approval: approval})
				wantErr(t, err, "replay", false)
				guestExists(150)(t, h)
			},
		},
		{
			name: "benign config that reallocates an existing disk",
			attack: func(t *testing.T, h *harness) error {
				h.addVM(customerVM(101, "stopped"))
				_, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"scsi0": "local-lvm:8", "memory": 4096}})
				return err
			},
			code:   ErrTypeBadRequest,
			intact: diskIs(101, "scsi0", "local-lvm:vm-101-disk-0,size=32G"),
			legit: func(t *testing.T, h *harness) {
				if _, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"scsi1": "local-lvm:8", "memory": 4096}}); err != nil {
					t.Fatalf("memory and a new disk: %v", err)
				}
			},
		},
		{
			name: "config that attaches another guest's volume, through ExecuteAction",
			attack: func(t *testing.T, h *harness) error {
				h.addVM(customerVM(101, "stopped"))
				h.addVM(customerVM(102, "stopped"))
				_, err := runIn[workflows.ExecuteResult](h.hostEnv(), (&Host{Proxmox: h.act}).ExecuteAction, workflows.ExecuteInput{Action: desired.Action{
					Op: gate.OpGuestConfig, Host: hostID, Guest: "101", Params: map[string]any{"scsi1": "local-lvm:vm-102-disk-0"}}})
				return gateCode(t, err)
			},
			code:   "pending_signature",
			intact: func(t *testing.T, h *harness) { diskIs(101, "scsi1", "")(t, h) },
			legit:  func(t *testing.T, h *harness) {},
		},
		{
			name: "config with a key outside the allow-list",
			attack: func(t *testing.T, h *harness) error {
				h.addVM(customerVM(101, "stopped"))
				_, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"hookscript": "local:snippets/wipe.sh"}})
				return err
			},
			code: "pending_signature",
			intact: func(t *testing.T, h *harness) {
				if g, _ := h.guest(101); g.Config["hookscript"] != "" {
					t.Fatal("hookscript set")
				}
			},
			legit: func(t *testing.T, h *harness) {
				approval := h.approve(gate.OpGuestConfig, "101", map[string]any{"hookscript": "local:snippets/wipe.sh"})
				_, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"hookscript": "local:snippets/wipe.sh"}, Approval: approval})
				if err != nil {
					t.Fatalf("signed config: %v", err)
				}
			},
		},
		{
			name: "disk.detach signed for an unusedN slot, which frees the volume",
			attack: func(t *testing.T, h *harness) error {
				g := customerVM(101, "stopped")
				g.Config = map[string]string{"unused0": "local-lvm:vm-101-disk-3"}
				h.srv.AddVolume("local-lvm:vm-101-disk-3", 8<<30)
				h.addVM(g)
				_, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Delete: []string{"unused0"},
					Approval: h.approve(gate.OpDiskDetach, "101", map[string]any{"disk": "unused0"})})
				return err
			},
			code: "binding_mismatch",
			intact: func(t *testing.T, h *harness) {
				if !slices.Contains(h.srv.Volumes(), "local-lvm:vm-101-disk-3") {
					t.Fatal("the unused volume is gone")
				}
			},
			legit: func(t *testing.T, h *harness) {
				_, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Delete: []string{"unused0"},
					Approval: h.approve(gate.OpVolumeWipe, "101", map[string]any{"volume": "local-lvm:vm-101-disk-3"})})
				if err != nil {
					t.Fatalf("signed volume.wipe of unused0: %v", err)
				}
			},
		},
		{
			name: "op valid from 2000 to 9999",
			attack: func(t *testing.T, h *harness) error {
				h.addVM(customerVM(101, "running"))
				approval := h.sign("operator", gate.Op{Op: gate.OpGuestDestroy, HostID: hostID, GuestID: "101", Params: map[string]any{"kind": "qemu"},
					NotBefore: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), ExpiresAt: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), KeyID: "ops"})
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
				return err
			},
			code:   "validity_too_long",
			intact: guestExists(101),
			legit:  func(t *testing.T, h *harness) {},
		},
		{
			name: "recovery key signs an ordinary destroy",
			attack: func(t *testing.T, h *harness) error {
				h.addVM(customerVM(101, "running"))
				now := time.Now().UTC().Truncate(time.Second)
				approval := h.sign("recovery", gate.Op{Op: gate.OpGuestDestroy, HostID: hostID, GuestID: "101", Params: map[string]any{"kind": "qemu"},
					NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour), KeyID: "rec"})
				_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
				return err
			},
			code:   "role_denied",
			intact: guestExists(101),
			legit:  func(t *testing.T, h *harness) {},
		},
		{
			name: "operational key rotates away the recovery keys",
			attack: func(t *testing.T, h *harness) error {
				host := h.pinnedHost()
				params := map[string]any{"operational": []any{h.operatorKey()}, "recovery": []any{h.key("attacker")}}
				return gateCode(t, h.rotate(host, "operator", params))
			},
			code: "role_denied",
			intact: func(t *testing.T, h *harness) {
				if _, rec := h.pinnedHost().Signers.Current(); !slices.Equal(rec, []string{h.recoveryKey()}) {
					t.Fatalf("recovery keys now %v", rec)
				}
			},
			legit: func(t *testing.T, h *harness) {
				host := h.pinnedHost()
				planned := map[string]any{"operational": []any{h.operatorKey(), h.key("ops2")}, "recovery": []any{h.recoveryKey()}}
				if err := h.rotate(host, "operator", planned); err != nil {
					t.Fatalf("planned rotation of the operational keys: %v", err)
				}
				recovery := map[string]any{"operational": []any{h.operatorKey()}, "recovery": []any{h.key("recovery2")}}
				if err := h.rotate(host, "recovery", recovery); err != nil {
					t.Fatalf("recovery key rotating the recovery keys: %v", err)
				}
				if op, rec := host.Signers.Current(); !slices.Equal(op, []string{h.operatorKey()}) || !slices.Equal(rec, []string{h.key("recovery2")}) {
					t.Fatalf("keys after the rotations: %v %v", op, rec)
				}
			},
		},
		{
			name: "wipe of a volume that another guest uses",
			attack: func(t *testing.T, h *harness) error {
				g := customerVM(102, "running")
				g.Disks["scsi1"] = "local-lvm:vm-101-disk-0,size=32G"
				h.srv.AddVolume("local-lvm:vm-101-disk-0", 32<<30)
				h.addVM(g)
				_, err := run[TaskResult](h, h.act.WipeVolume, WipeVolumeInput{Volume: "local-lvm:vm-101-disk-0",
					Approval: h.approve(gate.OpVolumeWipe, "101", map[string]any{"volume": "local-lvm:vm-101-disk-0"})})
				return err
			},
			code: ErrTypeVolumeInUse,
			intact: func(t *testing.T, h *harness) {
				if !slices.Contains(h.srv.Volumes(), "local-lvm:vm-101-disk-0") {
					t.Fatal("the volume in use is gone")
				}
			},
			legit: func(t *testing.T, h *harness) {},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{})
			err := tt.attack(t, h)
			if tt.code != "" {
				wantErr(t, err, tt.code, false)
			} else if err != nil {
				t.Fatalf("attack: %v, want no refusal: the checks below say what it achieved", err)
			}
			tt.intact(t, h)
			tt.legit(t, h)
		})
	}
}

// createVM creates a VM through the create activity, as a plan would.
func (h *harness) createVM(vmid int, scratch bool) {
	h.t.Helper()
	if _, err := run[CreateResult](h, h.act.CreateVM, CreateVMInput{VMID: vmid, Name: "app", MemoryMiB: 512,
		Disks: map[string]string{"scsi0": "local-lvm:4"}, Scratch: scratch}); err != nil {
		h.t.Fatalf("create %d: %v", vmid, err)
	}
}

func (h *harness) gone(t *testing.T, vmid int) {
	t.Helper()
	if _, ok := h.guest(vmid); ok {
		t.Fatalf("guest %d still exists", vmid)
	}
}

func guestExists(vmid int) func(*testing.T, *harness) {
	return func(t *testing.T, h *harness) {
		t.Helper()
		if _, ok := h.guest(vmid); !ok {
			t.Fatalf("guest %d was destroyed", vmid)
		}
	}
}

func diskIs(vmid int, key, want string) func(*testing.T, *harness) {
	return func(t *testing.T, h *harness) {
		t.Helper()
		g, _ := h.guest(vmid)
		if g.Disks[key] != want {
			t.Fatalf("guest %d %s = %q, want %q", vmid, key, g.Disks[key], want)
		}
	}
}

// gateCode turns ExecuteAction's GateRejection into an error whose type is
// the gate's code, as the executors report it.
func gateCode(t *testing.T, err error) error {
	t.Helper()
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || appErr.Type() != workflows.ErrTypeGateRejection {
		return err
	}
	var code string
	if err := appErr.Details(&code); err != nil {
		t.Fatal(err)
	}
	return temporal.NewNonRetryableApplicationError(appErr.Message(), code, nil)
}

// outside sends a request as somebody other than the agent would, waits
// for its task, and returns the UPID.
func (h *harness) outside(method, path string, params map[string]any) string {
	h.t.Helper()
	e := h.env()
	send := func(ctx context.Context) (string, error) {
		res, err := h.act.runTask(ctx, "outside", method, path, params)
		return res.UPID, err
	}
	e.RegisterActivity(send)
	var upid string
	val, err := e.ExecuteActivity(send)
	if err == nil {
		err = val.Get(&upid)
	}
	if err != nil || !strings.HasPrefix(upid, "UPID:") {
		h.t.Fatalf("%s %s: %q, %v", method, path, upid, err)
	}
	return upid
}

// pinnedHost returns the Host activities with the harness's keys pinned in a
// pinned-signers file, its gate the one the executors use. The file is
// opened once per harness, as by one agent process.
func (h *harness) pinnedHost() *Host {
	h.t.Helper()
	if h.pinned != nil {
		return h.pinned
	}
	signers, err := OpenPinnedSigners(filepath.Join(h.keyDir, "pinned_signers"), []string{h.operatorKey()}, []string{h.recoveryKey()},
		func(s []gate.Signer) (*gate.Gate, error) {
			v, err := gate.NewVerifier(gate.VerifierConfig{HostID: hostID, Signers: s, Nonces: h.nonces})
			if err != nil {
				return nil, err
			}
			return gate.New(v, quietLogger()), nil
		}, quietLogger())
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { signers.Close() })
	h.act.Gate = signers
	h.pinned = &Host{Proxmox: h.act, Signers: signers}
	return h.pinned
}

// rotate runs a signers.rotate job signed with the key named keyName.
func (h *harness) rotate(host *Host, keyName string, params map[string]any) error {
	h.t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	ap := h.sign(keyName, gate.Op{Op: gate.OpSignersRotate, HostID: hostID, Params: params,
		NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour), KeyID: keyName})
	e := h.suite.NewTestActivityEnvironment()
	e.RegisterActivity(host)
	_, err := runIn[workflows.ExecuteResult](e, host.RunSignedJob, workflows.SignedJobInput{Host: hostID,
		Action:   desired.Action{Op: gate.OpSignersRotate, Host: hostID, Params: params},
		Approval: workflows.Approval{Blob: string(ap.Blob), Signature: string(ap.Signature)}})
	return err
}

// backupOf returns the volume id of a backup of vmid, "" for none.
func (h *harness) backupOf(vmid int) string {
	prefix := "local:backup/vzdump-qemu-" + vmidString(vmid) + "-"
	for _, v := range h.srv.Volumes() {
		if strings.HasPrefix(v, prefix) {
			return v
		}
	}
	return ""
}

// hostEnv is an activity environment with the Host activities registered.
func (h *harness) hostEnv() *testsuite.TestActivityEnvironment {
	e := h.suite.NewTestActivityEnvironment()
	e.RegisterActivity(&Host{Proxmox: h.act})
	return e
}

// ledgerEntry is the pending record a create writes before its POST.
func ledgerEntry(vmid int, marker string) ledger.Entry {
	return ledger.Entry{VMID: vmid, Kind: KindQEMU, Instance: marker}
}
