package activities

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"time"
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
// against and what that read found. The guest workflows' own steps feed it
// too (remember, rememberStatus, forget): what a create read, what a start
// left, so that the listing does not read a guest the agent just
// converged. Its lock is held for map accesses only, never over a request.
type confirmCache struct {
	mu     sync.Mutex
	guests map[int]confirmedGuest
	// last is the VMID whose configuration the rotation read last.
	last int
}

// statsLag is how long after a step remembered a guest the listing may
// still show it as it was: pvestatd's cycle (10 s) and a margin. Within it
// a disagreeing row is not read; after it, it is.
const statsLag = 30 * time.Second

type confirmedGuest struct {
	// row is the listing row the guest was read against; zero when a step
	// remembered it, and then a row that agrees with confirmed is taken
	// as its row (rowAgrees).
	row       GuestSummary
	confirmed GuestSummary // as read
	digest    string       // of the configuration read
	at        time.Time    // when it was remembered
}

func (c *confirmCache) get(vmid int) (confirmedGuest, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.guests[vmid]
	return m, ok
}

func (c *confirmCache) put(vmid int, m confirmedGuest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.guests == nil {
		c.guests = map[int]confirmedGuest{}
	}
	m.at = time.Now()
	c.guests[vmid] = m
}

// forget drops what is remembered of vmid: the next listing reads it.
func (c *confirmCache) forget(vmid int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.guests, vmid)
}

// remember records guest g as a step read it (its configuration, status
// as given): the next listing takes a row that agrees with it without a
// read.
func (a *Proxmox) remember(g Guest) {
	if !g.Exists {
		a.confirmed.forget(g.VMID)
		return
	}
	a.confirmed.put(g.VMID, confirmedGuest{confirmed: summaryOf(g, GuestSummary{}), digest: g.Digest})
}

// rememberStatus records the status a power step left guest vmid in.
func (a *Proxmox) rememberStatus(vmid int, status string) {
	m, ok := a.confirmed.get(vmid)
	if !ok {
		return
	}
	m.confirmed.Status, m.row = status, GuestSummary{}
	a.confirmed.put(vmid, m)
}

// confirmedGuests returns list with each guest as it is now: read when its
// row changed since its last read (or it was never read), remembered
// otherwise, and one remembered guest's configuration read again (rotate).
// changed names the remembered guests whose configuration a read found
// changed since the one before (tags, disks, options: what the host
// workflow's comparison does not look at). A guest gone since the listing
// is left out.
//
// A guest in skip is not read: its last confirmed summary stands if its row
// did not change, else its row as listed (unconfirmed), and it is not
// remembered anew. The host passes the guests whose workflow holds or is
// converging, which it does not wake.
func (a *Proxmox) confirmedGuests(ctx context.Context, list []GuestSummary, skip []int) (out []GuestSummary, changed []int, err error) {
	c := &a.confirmed
	began := time.Now()
	out = make([]GuestSummary, 0, len(list))
	var kept []int // indexes in out of remembered guests, the rotation's candidates
	for _, s := range list {
		m, ok := c.get(s.VMID)
		if ok && m.row.VMID == 0 && rowAgrees(s, m.confirmed) {
			m.row = s // remembered by a step: this row is what it left
			c.put(s.VMID, m)
		}
		if ok && m.row.VMID == 0 && time.Since(m.at) < statsLag {
			// A step's word younger than pvestatd's cycle: the row may not
			// show what the step did yet.
			kept = append(kept, len(out))
			out = append(out, m.confirmed)
			continue
		}
		if ok && sameRow(m.row, s) {
			kept = append(kept, len(out))
			out = append(out, m.confirmed)
			continue
		}
		if slices.Contains(skip, s.VMID) {
			out = append(out, s)
			continue
		}
		g, err := a.readGuest(ctx, s.VMID, s.Kind)
		if err != nil {
			return nil, nil, err
		}
		recordProgress(ctx, Progress{Phase: "list"})
		if !g.Exists {
			c.forget(s.VMID)
			continue
		}
		sum := summaryOf(g, s)
		if ok && m.digest != g.Digest {
			changed = append(changed, s.VMID)
		}
		c.put(s.VMID, confirmedGuest{row: s, confirmed: sum, digest: g.Digest})
		out = append(out, sum)
	}
	if i, ok := c.rotation(out, kept); ok {
		s := out[i]
		g, err := a.readConfig(ctx, s.VMID, s.Kind)
		if err != nil {
			return nil, nil, err
		}
		m, _ := c.get(s.VMID)
		switch {
		case !g.Exists:
			c.forget(s.VMID)
			out = slices.Delete(out, i, i+1)
		case g.Digest != m.digest:
			g.Status = s.Status // the configuration says nothing of it; unchanged since the last read
			m.confirmed, m.digest = summaryOf(g, m.row), g.Digest
			c.put(s.VMID, m)
			out[i] = m.confirmed
			changed = append(changed, s.VMID)
		}
	}
	listed := make(map[int]bool, len(list))
	for _, s := range list {
		listed[s.VMID] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for vmid, m := range c.guests {
		if !listed[vmid] && m.at.Before(began) {
			delete(c.guests, vmid) // gone; one a step remembered since the listing stays
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
	c.mu.Lock()
	defer c.mu.Unlock()
	pick := kept[0]
	for _, i := range kept {
		if out[i].VMID > c.last {
			pick = i
			break
		}
	}
	c.last = out[pick].VMID
	return pick, true
}

// rowAgrees reports whether a listing row says what summary c, read from
// the guest, says, as far as the row says it: the memory the guest runs
// with is its configured memory when no change is pending, and an unnamed
// guest is listed as "VM <id>" or "CT<id>".
func rowAgrees(row, c GuestSummary) bool {
	name := row.Name == c.Name || (c.Name == "" && (row.Name == "VM "+strconv.Itoa(row.VMID) || row.Name == "CT"+strconv.Itoa(row.VMID)))
	return row.VMID == c.VMID && row.Kind == c.Kind && row.Status == c.Status && name && row.MemoryMiB == c.MemoryMiB &&
		slices.Equal(row.Tags, c.Tags) && row.Lock == c.Lock && row.Template == c.Template
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
