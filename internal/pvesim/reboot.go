package pvesim

import (
	"fmt"
	"time"
)

// RebootNode simulates the node going down and coming back, as a power cut
// or a kernel update would: every task's worker dies with it, so each task
// that was running (or waiting for a guest's config lock) reads afterwards
// as stopped with exit status "unexpected status", and what it had done
// stays: a create leaves its guest with only the lock "create" and the
// disks it had allocated, a destroy leaves a config holding only the lock
// "destroyed" after it freed the disks. Guests stop; those with onboot=1
// start again, as pve-guests does at boot. Config locks stay, since they
// are in the config files. The node's uptime starts again from zero.
//
// It returns when every task has stopped.
func (s *Server) RebootNode() {
	s.mu.Lock()
	var stopped []chan struct{}
	for _, t := range s.tasks {
		if t.running && !t.cancelled {
			t.lost, t.cancelled = true, true
			close(t.cancel)
			stopped = append(stopped, t.done)
		}
	}
	s.mu.Unlock()
	for _, done := range stopped {
		<-done
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bootTime, s.bootClock = time.Now(), s.cfg.Clock()
	for _, g := range s.guests {
		s.setRunning(g, false)
	}
	for _, g := range s.sortedGuests() {
		if g.conf["onboot"] == "1" && g.conf["lock"] == "" && g.conf["template"] != "1" {
			s.setRunning(g, true)
		}
	}
}

// allocateOrphans allocates the new disks of a create whose worker died
// before it wrote the config: the volumes exist, no config names them, and
// the guest's config holds only the lock "create" (pve writes the whole
// config, marker and name included, in one go at the end). s.mu held.
func (s *Server) allocateOrphans(vmid int, set map[string]string) {
	g := s.guests[vmid]
	if g == nil {
		return
	}
	for k, v := range set {
		if isDiskKey(g.kind, k) {
			if _, aerr := s.allocDisk(vmid, v); aerr != nil {
				return
			}
		}
	}
}

// destroyedRemnant is what a destroy whose worker died after freeing the
// disks leaves: destroy_vm's replacement config, only the lock "destroyed".
// s.mu held.
func (s *Server) destroyedRemnant(vmid int, unreferenced bool) {
	g := s.guests[vmid]
	if g == nil {
		return
	}
	s.freeGuestVolumes(g, unreferenced, nil)
	g.conf = map[string]string{"lock": "destroyed"}
	g.pending, g.pendingDelete = nil, nil
}

// PurgeAsRoot removes a guest as root does on the node's shell to clear
// what only root may (`pct unlock N && pct destroy N --purge
// --destroy-unreferenced-disks 1`, or `qm`'s same commands): its config,
// every disk it names and its unreferenced volumes go, whatever its lock,
// with no request through the API and so nothing in the request log. It is
// the operator's clean-up of what a task lost in a node reboot left: a
// destroy's config locked "destroyed", a create's locked "create". Like an
// operator who looked at the node's active tasks first, it refuses while a
// task of the guest runs (a create in progress is locked "create" too).
func (s *Server) PurgeAsRoot(vmid int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guests[vmid]
	if g == nil {
		return fmt.Errorf("pvesim: no guest %d", vmid)
	}
	for _, t := range s.tasks {
		if t.vmid == vmid && t.running {
			return fmt.Errorf("pvesim: task %s of guest %d is running", t.upid, vmid)
		}
	}
	s.setRunning(g, false)
	s.freeGuestVolumes(g, true, nil)
	delete(s.guests, vmid)
	delete(s.ha, vmid)
	s.changed()
	return nil
}
