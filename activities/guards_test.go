package activities

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// The guards in front of each destructive path, each shown to refuse before
// anything is sent and before the approval is used up.

func TestRestoreOverProtectedGuestRefusedBeforeTheGate(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	g := customerVM(101, "running")
	g.Protection = true
	h.addVM(g)
	backup, err := h.srv.AddBackup(pvesim.KindQEMU, customerVM(101, "stopped"))
	if err != nil {
		t.Fatal(err)
	}
	in := RestoreBackupInput{VMID: 101, Archive: backup, Approval: h.approve(gate.OpGuestRestore, "101", map[string]any{"archive": backup})}
	_, err = run[TaskResult](h, h.act.RestoreBackup, in)
	wantErr(t, err, ErrTypeProtected, false)
	if len(h.srv.Requests()) != 0 {
		t.Fatalf("a restore over a protected guest sent %+v", h.srv.Requests())
	}
	if _, ok := h.ledger.Admission(approvalKey(in.Approval)); ok {
		t.Fatal("the refused restore was admitted: the gate ran before the protection check")
	}
	// Unspent: once protection is lifted, the same approval restores.
	if err := h.act.Client.Put(context.Background(), "/nodes/pve1/qemu/101/config", map[string]any{"protection": 0}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := run[TaskResult](h, h.act.RestoreBackup, in); err != nil {
		t.Fatalf("restore with the unspent approval: %v", err)
	}
}

func TestExecuteActionForAnotherHostIsRefused(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(customerVM(101, "running"))
	for _, op := range []string{gate.OpGuestStop, gate.OpGuestDestroy, gate.OpGuestConfig} {
		_, err := runIn[workflows.ExecuteResult](h.hostEnv(), (&Host{Proxmox: h.act}).ExecuteAction, workflows.ExecuteInput{
			Action: desired.Action{Op: op, Host: "pve2", Guest: "101", Params: map[string]any{"kind": "qemu"}}})
		wantErr(t, err, ErrTypeBadRequest, false)
	}
	if len(h.srv.Requests()) != 0 {
		t.Fatalf("actions for another host sent %+v", h.srv.Requests())
	}
}

func TestWipeAdoptsAVolumeDeletionUnderWay(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	const vol = "local-lvm:vm-150-disk-3"
	if err := h.srv.AddVolume(vol, 8<<30); err != nil {
		t.Fatal(err)
	}
	// A previous attempt's DELETE reached Proxmox; its task still runs and
	// its UPID never reached the heartbeat.
	h.srv.Inject(pvesim.Fault{Method: "DELETE", Path: "/nodes/*/storage/*/content/*", Kind: pvesim.FaultSlowTask, TaskDuration: 300 * time.Millisecond})
	var upid string
	if err := h.act.Client.Delete(context.Background(), "/nodes/pve1/storage/local-lvm/content/"+vol, &upid); err != nil {
		t.Fatal(err)
	}
	res, err := run[TaskResult](h, h.act.WipeVolume, WipeVolumeInput{Volume: vol,
		Approval: h.approve(gate.OpVolumeWipe, "150", map[string]any{"volume": vol})})
	if err != nil || !res.Resumed || res.UPID != upid {
		t.Fatalf("WipeVolume = %+v, %v; want the deletion under way (%s) adopted", res, err, upid)
	}
	if n := h.mutations("DELETE", "/nodes/*/storage/*/content/*"); n != 1 {
		t.Fatalf("%d volume deletions sent, want the one under way only", n)
	}
	if slices.Contains(h.srv.Volumes(), vol) {
		t.Fatal("volume still there")
	}
}

func TestSignerRotationGuards(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	host := h.pinnedHost()
	pinned := filepath.Join(h.keyDir, "pinned_signers")
	keys := func() ([]string, []string) { return host.Signers.Current() }
	wantKeys := func(t *testing.T, op, rec []string) {
		t.Helper()
		gotOp, gotRec := keys()
		if !slices.Equal(gotOp, op) || !slices.Equal(gotRec, rec) {
			t.Fatalf("keys %v / %v, want %v / %v", gotOp, gotRec, op, rec)
		}
	}
	start := []string{h.operatorKey()}
	rec := []string{h.recoveryKey()}

	t.Run("unsigned", func(t *testing.T) {
		err := runRotate(h, host, nil, map[string]any{"operational": []any{h.key("evil")}, "recovery": []any{h.recoveryKey()}})
		wantErr(t, gateCode(t, err), "pending_signature", false)
		wantKeys(t, start, rec)
		if _, err := os.Stat(pinned); err == nil {
			t.Fatal("a refused rotation wrote the pinned-signers file")
		}
	})
	t.Run("unusable keys", func(t *testing.T) {
		for name, params := range map[string]map[string]any{
			"not a key":          {"operational": []any{"ssh-ed25519 not-base64"}, "recovery": []any{h.recoveryKey()}},
			"no operational key": {"operational": []any{}, "recovery": []any{h.recoveryKey()}},
			"a key twice":        {"operational": []any{h.operatorKey()}, "recovery": []any{h.operatorKey()}},
			"not a list":         {"operational": h.operatorKey(), "recovery": []any{h.recoveryKey()}},
		} {
			now := time.Now().UTC().Truncate(time.Second)
			ap := h.sign("operator", gate.Op{Op: gate.OpSignersRotate, HostID: hostID, Params: params,
				NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour), KeyID: "ops"})
			err := runRotate(h, host, ap, params)
			if err == nil {
				t.Fatalf("%s: rotation accepted", name)
			}
			if typ, _ := errType(t, err); typ != ErrTypeSigners && typ != ErrTypeBadRequest {
				t.Fatalf("%s: error %v, want %s or %s", name, err, ErrTypeSigners, ErrTypeBadRequest)
			}
			// Refused before the gate: the approval was not used up.
			if _, ok := h.ledger.Admission(approvalKey(ap)); ok {
				t.Fatalf("%s: the approval was admitted for keys that cannot be used", name)
			}
			wantKeys(t, start, rec)
		}
	})
	t.Run("retry after the file was replaced", func(t *testing.T) {
		params := map[string]any{"operational": []any{h.operatorKey(), h.key("ops2")}, "recovery": []any{h.recoveryKey()}}
		now := time.Now().UTC().Truncate(time.Second)
		ap := h.sign("operator", gate.Op{Op: gate.OpSignersRotate, HostID: hostID, Params: params,
			NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour), KeyID: "ops"})
		if err := runRotate(h, host, ap, params); err != nil {
			t.Fatal(err)
		}
		first, err := os.ReadFile(pinned)
		if err != nil {
			t.Fatal(err)
		}
		// The completion was lost; Temporal retries the same job.
		if err := runRotate(h, host, ap, params); err != nil {
			t.Fatalf("retry of a completed rotation: %v", err)
		}
		if again, _ := os.ReadFile(pinned); string(again) != string(first) {
			t.Fatal("the retry rewrote the pinned-signers file")
		}
		// The file was replaced but the act not marked done (a crash in
		// between): Replace with the same keys is a no-op.
		if err := host.Signers.Replace([]string{h.operatorKey(), h.key("ops2")}, rec); err != nil {
			t.Fatal(err)
		}
		wantKeys(t, []string{h.operatorKey(), h.key("ops2")}, rec)
	})
}

func runRotate(h *harness, host *Host, ap *gate.Approval, params map[string]any) error {
	e := h.suite.NewTestActivityEnvironment()
	e.RegisterActivity(host)
	in := workflows.SignedJobInput{Host: hostID, Action: desired.Action{Op: gate.OpSignersRotate, Host: hostID, Params: params}}
	if ap != nil {
		in.Approval = workflows.Approval{Blob: string(ap.Blob), Signature: string(ap.Signature)}
	}
	_, err := runIn[workflows.ExecuteResult](e, host.RunSignedJob, in)
	return err
}

// Proxmox refuses to remove a protected guest's disks; a signed detach or
// free is refused before the gate, so the approval stays unspent.
func TestProtectedDiskChangesRefusedBeforeTheGate(t *testing.T) {
	tests := []struct {
		name   string
		ct     bool
		delete string
		op     string
		params map[string]any
	}{
		{name: "qemu detach", delete: "scsi1", op: gate.OpDiskDetach, params: map[string]any{"disk": "scsi1"}},
		{name: "qemu free unused", delete: "unused0", op: gate.OpVolumeWipe, params: map[string]any{"volume": "local-lvm:vm-101-disk-2"}},
		{name: "lxc detach", ct: true, delete: "mp0", op: gate.OpDiskDetach, params: map[string]any{"disk": "mp0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{})
			g := pvesim.Guest{VMID: 101, Name: "customer", MemoryMiB: 512, Protection: true}
			if tt.ct {
				g.Disks = map[string]string{"rootfs": "local-lvm:subvol-101-disk-0,size=8G", "mp0": "local-lvm:subvol-101-disk-1,mp=/data,size=8G"}
				h.addCT(g)
			} else {
				g.Disks = map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G", "scsi1": "local-lvm:vm-101-disk-1,size=8G",
					"unused0": "local-lvm:vm-101-disk-2"}
				h.addVM(g)
			}
			in := SetConfigInput{VMID: 101, Delete: []string{tt.delete}, Approval: h.approve(tt.op, "101", tt.params)}
			_, err := run[TaskResult](h, h.act.SetConfig, in)
			wantErr(t, err, ErrTypeProtected, false)
			if len(h.srv.Requests()) != 0 {
				t.Fatalf("a disk change of a protected guest sent %+v", h.srv.Requests())
			}
			if _, ok := h.ledger.Admission(approvalKey(in.Approval)); ok {
				t.Fatal("the refused change was admitted: the gate ran before the protection check")
			}
			// Unspent: once protection is lifted, the same approval acts.
			kind := "qemu"
			if tt.ct {
				kind = "lxc"
			}
			if err := h.act.Client.Put(context.Background(), "/nodes/pve1/"+kind+"/101/config", map[string]any{"protection": 0}, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := run[TaskResult](h, h.act.SetConfig, in); err != nil {
				t.Fatalf("with the unspent approval: %v", err)
			}
			if after, _ := h.guest(101); after.Disks[tt.delete] != "" {
				t.Fatalf("%s still there", tt.delete)
			}
		})
	}
}
