package activities

import (
	"errors"
	"testing"

	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// toApproval turns a gate approval into the workflow's form of it.
func toApproval(ap *gate.Approval) *workflows.Approval {
	return &workflows.Approval{Blob: string(ap.Blob), Signature: string(ap.Signature)}
}

// Each per-operation activity performs its one operation on this host and
// reports a gate refusal as a GateRejection carrying the gate's code.
func TestPerOperationActivities(t *testing.T) {
	ref := workflows.GuestRef{Host: hostID, VMID: 101}
	tests := []struct {
		name     string
		setup    func(h *harness)
		call     func(h *harness, host *Host) (activity, input any)
		wantCode string // gate code of a refusal; "" for success
		method   string // the mutating request sent: its method ("" for any)
		request  string // and a path.Match pattern of its path
		check    func(t *testing.T, h *harness)
	}{
		{
			name: "create a VM",
			call: func(h *harness, host *Host) (any, any) {
				return host.CreateGuest, workflows.CreateGuestInput{GuestRef: ref, Kind: desired.QEMU, Name: "web", MemoryMiB: 1024, Cores: 2,
					Tags: []string{"prod"}, Disks: map[string]string{"scsi0": "local-lvm:4"}}
			},
			method: "POST", request: "/nodes/*/qemu",
			check: func(t *testing.T, h *harness) {
				if g, ok := h.guest(101); !ok || g.Name != "web" || g.MemoryMiB != 1024 || g.Cores != 2 || g.Status != "stopped" {
					t.Errorf("guest = %+v, want web, 1024 MiB, 2 cores, stopped", g)
				}
			},
		},
		{
			name: "create a container",
			call: func(h *harness, host *Host) (any, any) {
				return host.CreateGuest, workflows.CreateGuestInput{GuestRef: ref, Kind: desired.LXC, Name: "dns", MemoryMiB: 256, Cores: 1,
					Disks: map[string]string{"rootfs": "local-lvm:4"}, OSTemplate: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"}
			},
			method: "POST", request: "/nodes/*/lxc",
			check: func(t *testing.T, h *harness) {
				if g, ok := h.guest(101); !ok || g.Kind != KindLXC || g.Name != "dns" {
					t.Errorf("guest = %+v, want container dns", g)
				}
			},
		},
		{
			name:  "start",
			setup: func(h *harness) { h.addVM(customerVM(101, "stopped")) },
			call: func(h *harness, host *Host) (any, any) {
				return host.StartGuest, workflows.StartGuestInput{GuestRef: ref}
			},
			method: "POST", request: "/nodes/*/qemu/101/status/start",
		},
		{
			name:  "shut down",
			setup: func(h *harness) { h.addVM(customerVM(101, "running")) },
			call: func(h *harness, host *Host) (any, any) {
				return host.ShutdownGuest, workflows.ShutdownGuestInput{GuestRef: ref, TimeoutSeconds: 30, ForceStop: true}
			},
			method: "POST", request: "/nodes/*/qemu/101/status/shutdown",
		},
		{
			name:  "set allow-listed config",
			setup: func(h *harness) { h.addVM(customerVM(101, "stopped")) },
			call: func(h *harness, host *Host) (any, any) {
				return host.SetConfig, workflows.SetConfigInput{GuestRef: ref, Set: map[string]any{"cores": 4}}
			},
			request: "/nodes/*/qemu/101/config",
			check: func(t *testing.T, h *harness) {
				if g, _ := h.guest(101); g.Cores != 4 {
					t.Errorf("cores = %d, want 4", g.Cores)
				}
			},
		},
		{
			name:  "config outside the allow-list needs a signature",
			setup: func(h *harness) { h.addVM(customerVM(101, "stopped")) },
			call: func(h *harness, host *Host) (any, any) {
				return host.SetConfig, workflows.SetConfigInput{GuestRef: ref, Set: map[string]any{"args": "-no-reboot"}}
			},
			wantCode: "pending_signature",
		},
		{
			name: "detach a disk, approved",
			setup: func(h *harness) {
				g := customerVM(101, "stopped")
				g.Disks["scsi1"] = "local-lvm:vm-101-disk-1,size=8G"
				h.addVM(g)
			},
			call: func(h *harness, host *Host) (any, any) {
				return host.DetachDisk, workflows.DetachDiskInput{GuestRef: ref, Disk: "scsi1",
					Approval: toApproval(h.approve(gate.OpDiskDetach, "101", map[string]any{"disk": "scsi1"}))}
			},
			request: "/nodes/*/qemu/101/config",
			check: func(t *testing.T, h *harness) {
				if g, _ := h.guest(101); g.Disks["scsi1"] != "" {
					t.Errorf("scsi1 still attached: %+v", g.Disks)
				}
			},
		},
		{
			name:  "detach a disk, unsigned",
			setup: func(h *harness) { h.addVM(customerVM(101, "stopped")) },
			call: func(h *harness, host *Host) (any, any) {
				return host.DetachDisk, workflows.DetachDiskInput{GuestRef: ref, Disk: "scsi0"}
			},
			wantCode: "pending_signature",
		},
		{
			name:  "destroy, approved",
			setup: func(h *harness) { h.addVM(customerVM(101, "running")) },
			call: func(h *harness, host *Host) (any, any) {
				return host.DestroyGuest, workflows.DestroyGuestInput{GuestRef: ref, Kind: KindQEMU,
					Approval: toApproval(h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"}))}
			},
			method: "DELETE", request: "/nodes/*/qemu/101",
			check: func(t *testing.T, h *harness) { h.gone(t, 101) },
		},
		{
			name:  "destroy, signed for another guest",
			setup: func(h *harness) { h.addVM(customerVM(101, "running")) },
			call: func(h *harness, host *Host) (any, any) {
				return host.DestroyGuest, workflows.DestroyGuestInput{GuestRef: ref, Kind: KindQEMU,
					Approval: toApproval(h.approve(gate.OpGuestDestroy, "102", map[string]any{"kind": "qemu"}))}
			},
			wantCode: "binding_mismatch",
		},
		{
			name: "restore a backup, approved",
			setup: func(h *harness) {
				h.addVM(customerVM(101, "stopped"))
				if _, err := h.srv.AddBackup(pvesim.KindQEMU, customerVM(101, "stopped")); err != nil {
					h.t.Fatal(err)
				}
			},
			call: func(h *harness, host *Host) (any, any) {
				archive := h.backupOf(101)
				return host.RestoreBackup, workflows.RestoreBackupInput{GuestRef: ref, Archive: archive,
					Approval: toApproval(h.approve(gate.OpGuestRestore, "101", map[string]any{"archive": archive}))}
			},
			method: "POST", request: "/nodes/*/qemu",
		},
		{
			name:  "wipe a volume, approved",
			setup: func(h *harness) { h.addVolume("local-lvm:vm-180-disk-1") },
			call: func(h *harness, host *Host) (any, any) {
				return host.WipeVolume, workflows.WipeVolumeInput{Host: hostID, Guest: "180", Volume: "local-lvm:vm-180-disk-1",
					Approval: toApproval(h.approve(gate.OpVolumeWipe, "180", map[string]any{"volume": "local-lvm:vm-180-disk-1"}))}
			},
			method: "DELETE", request: "/nodes/*/storage/local-lvm/content/**",
		},
		{
			name:  "wipe a volume, unsigned",
			setup: func(h *harness) { h.addVolume("local-lvm:vm-180-disk-1") },
			call: func(h *harness, host *Host) (any, any) {
				return host.WipeVolume, workflows.WipeVolumeInput{Host: hostID, Volume: "local-lvm:vm-180-disk-1"}
			},
			wantCode: "pending_signature",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{})
			if tt.setup != nil {
				tt.setup(h)
			}
			fn, in := tt.call(h, &Host{Proxmox: h.act})
			res, err := runIn[workflows.ExecuteResult](h.hostEnv(), fn, in)
			if tt.wantCode != "" {
				wantErr(t, err, workflows.ErrTypeGateRejection, false)
				if code := rejectionCode(t, err); code != tt.wantCode {
					t.Fatalf("refused with %q, want %q", code, tt.wantCode)
				}
				if m := h.mutating(); len(m) != 0 {
					t.Fatalf("a refused operation sent %+v", m)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if res.Detail == "" {
				t.Errorf("result %+v has no detail", res)
			}
			if len(h.srv.RequestsMatching(tt.method, tt.request)) == 0 {
				t.Errorf("mutating requests %+v, none is %s %s", h.mutating(), tt.method, tt.request)
			}
			if tt.check != nil {
				tt.check(t, h)
			}
		})
	}
}

// mutating returns the requests sent that were not reads.
func (h *harness) mutating() []pvesim.Request {
	var out []pvesim.Request
	for _, r := range h.srv.Requests() {
		if r.Method != "GET" {
			out = append(out, r)
		}
	}
	return out
}

func (h *harness) addVolume(volid string) {
	h.t.Helper()
	if err := h.srv.AddVolume(volid, 1<<30); err != nil {
		h.t.Fatal(err)
	}
}

// rejectionCode is the gate's code a GateRejection carries.
func rejectionCode(t *testing.T, err error) string {
	t.Helper()
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || !appErr.HasDetails() {
		t.Fatalf("error %v carries no gate code", err)
	}
	var code string
	if err := appErr.Details(&code); err != nil {
		t.Fatal(err)
	}
	return code
}

// An operation addressed to another host is refused before anything is
// read or sent, whichever operation it is.
func TestPerOperationActivitiesRefuseAnotherHost(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(customerVM(101, "running"))
	host := &Host{Proxmox: h.act}
	other := workflows.GuestRef{Host: "pve2", VMID: 101}
	calls := map[string]func() (any, any){
		"create": func() (any, any) {
			return host.CreateGuest, workflows.CreateGuestInput{GuestRef: other, Kind: desired.QEMU, MemoryMiB: 512, Cores: 1}
		},
		"start": func() (any, any) { return host.StartGuest, workflows.StartGuestInput{GuestRef: other} },
		"shutdown": func() (any, any) {
			return host.ShutdownGuest, workflows.ShutdownGuestInput{GuestRef: other}
		},
		"config": func() (any, any) {
			return host.SetConfig, workflows.SetConfigInput{GuestRef: other, Set: map[string]any{"cores": 1}}
		},
		"detach": func() (any, any) {
			return host.DetachDisk, workflows.DetachDiskInput{GuestRef: other, Disk: "scsi0"}
		},
		"destroy": func() (any, any) {
			return host.DestroyGuest, workflows.DestroyGuestInput{GuestRef: other}
		},
		"restore": func() (any, any) {
			return host.RestoreBackup, workflows.RestoreBackupInput{GuestRef: other, Archive: "local:backup/x"}
		},
		"wipe": func() (any, any) {
			return host.WipeVolume, workflows.WipeVolumeInput{Host: "pve2", Volume: "local-lvm:vm-101-disk-0"}
		},
	}
	for name, call := range calls {
		fn, in := call()
		_, err := runIn[workflows.ExecuteResult](h.hostEnv(), fn, in)
		if err == nil {
			t.Errorf("%s for another host succeeded", name)
			continue
		}
		if typ, retryable := errType(t, err); typ != ErrTypeBadRequest || retryable {
			t.Errorf("%s for another host: %v, want a non-retryable %s", name, err, ErrTypeBadRequest)
		}
	}
	if n := len(h.srv.Requests()); n != 0 {
		t.Fatalf("operations for another host sent %d requests: %+v", n, h.srv.Requests())
	}
}

// A create step asked to start its guest (CreateGuestInput.Start) creates
// and starts it as the two steps would: two mutating requests, the ledger's
// hand-over, the guest running. A start that fails there is
// ErrTypeStartAfterCreate, retryable as the start's own error, with the
// guest created; the retry of the step creates nothing and starts it.
func TestCreateGuestThenStart(t *testing.T) {
	ref := workflows.GuestRef{Host: hostID, VMID: 101}
	in := workflows.CreateGuestInput{GuestRef: ref, Kind: desired.QEMU, Name: "web", MemoryMiB: 1024, Cores: 2,
		Disks: map[string]string{"scsi0": "local-lvm:4"}, Start: true, ExpectAbsent: true}

	t.Run("both succeed", func(t *testing.T) {
		h := newHarness(t, pvesim.Config{})
		host := &Host{Proxmox: h.act}
		res, err := runIn[workflows.ExecuteResult](h.hostEnv(), host.CreateGuest, in)
		if err != nil {
			t.Fatal(err)
		}
		if g, ok := h.guest(101); !ok || g.Status != "running" {
			t.Fatalf("guest = %+v, want it created and running", g)
		}
		if res.Start == nil || res.Start.Status != "running" || res.After == nil || res.After.Guest.Status != "running" {
			t.Errorf("result %+v (start %+v), want the start's result and the guest running", res, res.Start)
		}
		if n, m := h.mutations("POST", "/nodes/*/qemu"), h.mutations("POST", "/nodes/*/qemu/101/status/start"); n != 1 || m != 1 {
			t.Errorf("%d creates and %d starts sent, want one of each", n, m)
		}
		if e, ok := h.act.Ledger.Entry(101); !ok || !e.HandedOver {
			t.Errorf("ledger entry %+v, want the started guest handed over", e)
		}
	})

	t.Run("the start fails", func(t *testing.T) {
		h := newHarness(t, pvesim.Config{})
		host := &Host{Proxmox: h.act}
		h.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/101/status/start", Kind: pvesim.FaultHTTPError, Status: 503})
		_, err := runIn[workflows.ExecuteResult](h.hostEnv(), host.CreateGuest, in)
		wantErr(t, err, workflows.ErrTypeStartAfterCreate, true)
		if g, ok := h.guest(101); !ok || g.Status != "stopped" {
			t.Fatalf("guest = %+v, want it created and stopped", g)
		}
		if e, ok := h.act.Ledger.Entry(101); !ok || e.HandedOver {
			t.Errorf("ledger entry %+v, want the agent's create, not handed over (its rollback stays benign)", e)
		}
		res, err := runIn[workflows.ExecuteResult](h.hostEnv(), host.CreateGuest, in)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		if g, ok := h.guest(101); !ok || g.Status != "running" || res.Start == nil {
			t.Fatalf("after the retry guest = %+v, result %+v, want it running", g, res)
		}
		if n := h.mutations("POST", "/nodes/*/qemu"); n != 1 {
			t.Errorf("%d creates sent, want 1: the retry finds its own guest", n)
		}
	})
}
