package activities

import (
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// A guest workflow's steps hand each other what they learnt, so that a new
// guest converges in one read, the create and the start. Each hint only
// spares a read: a wrong one, as a hostile server may send, costs a request
// Proxmox refuses (or answers as done), never a guest.
func TestStepHints(t *testing.T) {
	ref := workflows.GuestRef{Host: hostID, VMID: 101}
	newVM := workflows.CreateGuestInput{GuestRef: ref, Kind: desired.QEMU, Name: "web", MemoryMiB: 1024, Cores: 2,
		Disks: map[string]string{"scsi0": "local-lvm:4"}}
	known := &workflows.KnownState{Kind: desired.QEMU, Status: "stopped"}
	tests := []struct {
		name    string
		setup   func(h *harness)
		call    func(host *Host) (activity, input any)
		calls   int    // Proxmox requests, reads included, besides the polls of a task
		errType string // "" for success
		check   func(t *testing.T, h *harness, res workflows.ExecuteResult)
	}{
		{
			name: "observe a free VMID",
			call: func(host *Host) (any, any) {
				return host.ObserveGuest, workflows.ObserveInput{VMID: 101, ExpectAbsent: true}
			},
			calls: 1, // /cluster/nextid
		},
		{
			name:  "observe a taken VMID expected free",
			setup: func(h *harness) { h.addVM(pvesim.Guest{VMID: 101, Name: "web", Status: "running", MemoryMiB: 512}) },
			call: func(host *Host) (any, any) {
				return host.ObserveGuest, workflows.ObserveInput{VMID: 101, ExpectAbsent: true}
			},
			calls: 3, // nextid, status, config
		},
		{
			name:  "create expected absent",
			call:  func(host *Host) (any, any) { return host.CreateGuest, workflows.CreateGuestInput{} },
			calls: 2, // post, config
			check: func(t *testing.T, h *harness, res workflows.ExecuteResult) {
				if a := res.After; a == nil || !a.Guest.Exists || a.Guest.Status != "stopped" || a.Guest.MemoryMiB != 1024 || !a.Provenance.AgentCreated {
					t.Errorf("after = %+v, want the new guest, stopped, 1024 MiB, the agent's", a)
				}
			},
		},
		{
			name:    "create expected absent over a guest",
			setup:   func(h *harness) { h.addVM(pvesim.Guest{VMID: 101, Name: "theirs", Status: "running", MemoryMiB: 512}) },
			call:    func(host *Host) (any, any) { return host.CreateGuest, workflows.CreateGuestInput{} },
			calls:   3, // the refused post, status, config
			errType: ErrTypeVMIDTaken,
			check: func(t *testing.T, h *harness, _ workflows.ExecuteResult) {
				if g, _ := h.guest(101); g.Name != "theirs" {
					t.Errorf("guest 101 = %+v, want theirs untouched", g)
				}
				if _, recorded := h.ledger.Entry(101); recorded {
					t.Error("the ledger keeps a record of a create Proxmox refused")
				}
			},
		},
		{
			name:  "start a created guest",
			setup: func(h *harness) { h.addVM(pvesim.Guest{VMID: 101, Name: "web", Status: "stopped", MemoryMiB: 512}) },
			call: func(host *Host) (any, any) {
				return host.StartGuest, workflows.StartGuestInput{GuestRef: ref, Known: known}
			},
			calls: 1, // post
			check: func(t *testing.T, h *harness, res workflows.ExecuteResult) {
				if g, _ := h.guest(101); g.Status != "running" || res.Status != "running" {
					t.Errorf("guest %s, reported %q; want running, running", g.Status, res.Status)
				}
			},
		},
		{
			name:  "start said stopped but running",
			setup: func(h *harness) { h.addVM(pvesim.Guest{VMID: 101, Name: "web", Status: "running", MemoryMiB: 512}) },
			call: func(host *Host) (any, any) {
				return host.StartGuest, workflows.StartGuestInput{GuestRef: ref, Known: known}
			},
			calls: 1,
			check: func(t *testing.T, h *harness, res workflows.ExecuteResult) {
				if res.Status != "running" || res.Detail != "already in place" {
					t.Errorf("result %+v, want already running", res)
				}
			},
		},
		{
			name: "start said stopped but absent",
			call: func(host *Host) (any, any) {
				return host.StartGuest, workflows.StartGuestInput{GuestRef: ref, Known: known}
			},
			calls:   1,
			errType: ErrTypeNotFound,
		},
		{
			name:  "start of the wrong kind",
			setup: func(h *harness) { h.addCT(pvesim.Guest{VMID: 101, Name: "dns", Status: "stopped", MemoryMiB: 512}) },
			call: func(host *Host) (any, any) {
				return host.StartGuest, workflows.StartGuestInput{GuestRef: ref, Known: known}
			},
			calls:   1,
			errType: ErrTypeNotFound,
			check: func(t *testing.T, h *harness, _ workflows.ExecuteResult) {
				if g, _ := h.guest(101); g.Status != "stopped" {
					t.Errorf("the container is %s, want stopped", g.Status)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{RecordReads: true})
			if tt.setup != nil {
				tt.setup(h)
			}
			h.srv.ResetRequests()
			fn, in := tt.call(&Host{Proxmox: h.act})
			if _, isCreate := in.(workflows.CreateGuestInput); isCreate {
				in = func() workflows.CreateGuestInput { c := newVM; c.ExpectAbsent = true; return c }()
			}
			res, err := runIn[workflows.ExecuteResult](h.hostEnv(), fn, in)
			if tt.errType == "" && err != nil {
				t.Fatalf("err = %v", err)
			}
			if tt.errType != "" {
				wantErr(t, err, tt.errType, false)
			}
			// task polls: a task's status, and the node's active tasks
			// the wait's TaskWatch lists
			polls := len(h.srv.ReadsMatching("/nodes/*/tasks/*/status")) + len(h.srv.ReadsMatching("/nodes/*/tasks"))
			if n := len(h.srv.Reads()) + len(h.srv.Requests()) - polls; n != tt.calls {
				t.Errorf("%d Proxmox requests besides %d polls, want %d: %+v %+v", n, polls, tt.calls, h.srv.Reads(), h.srv.Requests())
			}
			if tt.check != nil {
				tt.check(t, h, res)
			}
		})
	}
}
