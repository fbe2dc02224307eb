package activities

import (
	"context"
	"slices"
	"sync"
)

// Drift detection at the cost of one listing.
//
// The host workflow compares every guest of the node with its desired
// state at every pass (a minute by default). The listing
// (/cluster/resources) is one call whatever the number of guests, but its
// figures are pvestatd's: up to a cycle old ("running" for a guest stopped
// seconds ago, "unknown" for a new one), without a pending memory change,
// with "maxcpu" where cores were asked for and "VM <id>" for an unnamed
// guest. Compared with a desired state, those would wake a guest's workflow
// on every pass for no change, so each guest is confirmed by a read of its
// own (confirmedGuests).
//
// A read per guest per pass makes the idle cost grow with the node, so the
// reads are remembered (confirmCache): a guest is read again only when its
// row in the listing changed since it was last read (status, name, memory,
// CPUs, tags, lock, template, kind), and one more guest per pass, in turn,
// has its configuration read again (rotate), for what the listing cannot
// show: a pending change (memory, cores), disks, options, description. A
// configuration found changed by any read (its digest differs from the
// last read's) wakes the guest's workflow, if one runs, which then reads
// and plans the guest: the host workflow compares only status, name,
// memory and cores with the desired state. So an
// idle node costs two calls per pass however many guests it has, a change
// the listing shows is seen at the next pass after pvestatd's next cycle,
// and one it cannot show within as many passes as the node has guests (an
// hour at 60 guests and the default interval, 17 hours at 1,000). The
// memory starts empty: the first pass after the worker starts reads every
// guest once.

// confirmCache remembers, per guest, the listing row it was last read
// against and what that read found.
type confirmCache struct {
	mu     sync.Mutex
	guests map[int]confirmedGuest
	// last is the VMID whose configuration the rotation read last.
	last int
}

type confirmedGuest struct {
	row       GuestSummary // as listed when last read
	confirmed GuestSummary // as read
	digest    string       // of the configuration read
}

// confirmedGuests returns list with each guest as it is now: read when its
// row changed since its last read (or it was never read), remembered
// otherwise, and one remembered guest's configuration read again (rotate).
// changed names the remembered guests whose configuration a read found
// changed since the one before (tags, disks, options: what the host
// workflow's comparison does not look at). A guest gone since the listing
// is left out.
func (a *Proxmox) confirmedGuests(ctx context.Context, list []GuestSummary) (out []GuestSummary, changed []int, err error) {
	c := &a.confirmed
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.guests == nil {
		c.guests = map[int]confirmedGuest{}
	}
	out = make([]GuestSummary, 0, len(list))
	var kept []int // indexes in out of remembered guests, the rotation's candidates
	for _, s := range list {
		if m, ok := c.guests[s.VMID]; ok && sameRow(m.row, s) {
			kept = append(kept, len(out))
			out = append(out, m.confirmed)
			continue
		}
		g, err := a.readGuest(ctx, s.VMID, s.Kind)
		if err != nil {
			return nil, nil, err
		}
		recordProgress(ctx, Progress{Phase: "list"})
		if !g.Exists {
			delete(c.guests, s.VMID)
			continue
		}
		sum := summaryOf(g, s)
		if m, known := c.guests[s.VMID]; known && m.digest != g.Digest {
			changed = append(changed, s.VMID)
		}
		c.guests[s.VMID] = confirmedGuest{row: s, confirmed: sum, digest: g.Digest}
		out = append(out, sum)
	}
	if i, ok := c.rotation(out, kept); ok {
		s := out[i]
		g, err := a.readConfig(ctx, s.VMID, s.Kind)
		if err != nil {
			return nil, nil, err
		}
		c.last = s.VMID
		m := c.guests[s.VMID]
		switch {
		case !g.Exists:
			delete(c.guests, s.VMID)
			out = slices.Delete(out, i, i+1)
		case g.Digest != m.digest:
			g.Status = s.Status // the configuration says nothing of it; unchanged since the last read
			m.confirmed, m.digest = summaryOf(g, m.row), g.Digest
			c.guests[s.VMID] = m
			out[i] = m.confirmed
			changed = append(changed, s.VMID)
		}
	}
	listed := make(map[int]bool, len(list))
	for _, s := range list {
		listed[s.VMID] = true
	}
	for vmid := range c.guests {
		if !listed[vmid] {
			delete(c.guests, vmid)
		}
	}
	return out, changed, nil
}

// rotation picks the remembered guest (an index of out, among kept) whose
// configuration is read again this pass: the first after the one read
// last, in VMID order, wrapping around.
func (c *confirmCache) rotation(out []GuestSummary, kept []int) (int, bool) {
	if len(kept) == 0 {
		return 0, false
	}
	for _, i := range kept {
		if out[i].VMID > c.last {
			return i, true
		}
	}
	return kept[0], true
}

// sameRow reports whether two listing rows of a guest say the same.
func sameRow(a, b GuestSummary) bool {
	return a.VMID == b.VMID && a.Kind == b.Kind && a.Name == b.Name && a.Status == b.Status &&
		a.MemoryMiB == b.MemoryMiB && a.MaxCPU == b.MaxCPU && slices.Equal(a.Tags, b.Tags) &&
		a.Lock == b.Lock && a.Template == b.Template
}

// summaryOf is the confirmed summary of guest g, listed as row.
func summaryOf(g Guest, row GuestSummary) GuestSummary {
	return GuestSummary{
		VMID: g.VMID, Kind: g.Kind, Name: g.Name, Status: g.Status, MemoryMiB: g.MemoryMiB, Cores: g.Cores,
		MaxCPU: row.MaxCPU, Tags: g.Tags, Lock: g.Lock, Template: g.Template, Confirmed: true,
	}
}
