package activities

import (
	"testing"

	"github.com/felhom/felhom-agent/internal/pveclient"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
)

// TestGuestNotVisibleIsNotAbsent: Proxmox leaves a guest the API token
// cannot audit out of /cluster/resources without a word. The agent never
// takes that for the guest's absence: reading it fails closed, a destroy is
// not "already done" (and the ledger keeps the guest), a create does not
// go ahead, and observation plans nothing from it. A VMID that really is
// free still reads as absent.
func TestGuestNotVisibleIsNotAbsent(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	var role []pvesim.ACL
	for _, p := range pveclient.RequiredPrivileges("pve1") {
		role = append(role, pvesim.ACL{Path: p.Path, Privileges: []string{p.Name}, Propagate: true})
	}
	// The token's role on every guest but 102 (NoAccess there).
	h.srv.SetTokenACL(append(role, pvesim.ACL{Path: "/vms/102"}))
	vm := customerVM(102, "running")
	vm.Description = markerLine + testMarker
	h.addVM(vm)
	h.recordCreate(102, "qemu", testMarker, true)

	steps := []struct {
		name string
		run  func() error
	}{
		{"read", func() error { _, err := run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 102}); return err }},
		{"destroy", func() error {
			_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 102})
			return err
		}},
		{"create", func() error {
			_, err := run[CreateResult](h, h.act.CreateVM, CreateVMInput{VMID: 102, Name: "new", MemoryMiB: 512})
			return err
		}},
		{"start", func() error { _, err := run[TaskResult](h, h.act.StartGuest, GuestInput{VMID: 102}); return err }},
		{"observe", func() error {
			_, err := runIn[workflows.Observation](h.hostEnv(), (&Host{Proxmox: h.act}).ObserveGuest, workflows.ObserveInput{VMID: 102})
			return err
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			wantErr(t, s.run(), ErrTypePermission, false)
		})
	}
	if len(h.srv.Requests()) != 0 {
		t.Fatalf("requests sent about a guest the token cannot see: %+v", h.srv.Requests())
	}
	if e, ok := h.ledger.Entry(102); !ok || e.Instance != testMarker {
		t.Fatalf("ledger entry %+v (found %v), want the guest kept", e, ok)
	}
	if g, ok := h.guest(102); !ok || g.Status != "running" {
		t.Fatal("the guest changed")
	}
	g, err := run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 103})
	if err != nil || g.Exists {
		t.Fatalf("free VMID 103: %+v, %v; want it absent", g, err)
	}
}
