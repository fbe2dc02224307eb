package activities

import "context"

// confirmedGuests reads each guest of list, so that its summary says what
// the guest is now. The listing is right about which guests exist (the
// cluster's VM list is live), but its figures are pvestatd's: up to a
// cycle old ("running" for a guest stopped seconds ago, "unknown" for a
// new one), without a pending memory change, with "maxcpu" where cores
// were asked for and "VM <id>" for an unnamed guest. Compared with a
// desired state, those would wake a guest's workflow on every pass for no
// change. A guest gone since the listing is left out.
func (a *Proxmox) confirmedGuests(ctx context.Context, list []GuestSummary) ([]GuestSummary, error) {
	out := make([]GuestSummary, 0, len(list))
	for _, s := range list {
		g, err := a.readGuest(ctx, s.VMID, s.Kind)
		if err != nil {
			return nil, err
		}
		recordProgress(ctx, Progress{Phase: "list"})
		if !g.Exists {
			continue
		}
		out = append(out, GuestSummary{
			VMID: g.VMID, Kind: g.Kind, Name: g.Name, Status: g.Status, MemoryMiB: g.MemoryMiB, Cores: g.Cores,
			MaxCPU: s.MaxCPU, Tags: g.Tags, Lock: g.Lock, Template: g.Template, Confirmed: true,
		})
	}
	return out, nil
}
