package pvesim

import (
	"fmt"
	"slices"
	"time"
)

// flock is the per-guest config file lock (pve's flock on lock-VMID.conf):
// a task holds it for its whole run; any other change waits for it up to
// Config.LockTimeout and then fails with pve's "got timeout" message.
// Waiters are served in the order they asked, so a task queued behind
// another on the same guest runs after it.
type flock struct {
	held  bool
	queue []*lockWaiter
	seq   uint64
}

// lockWaiter is a place in a lock queue. It must not be zero-sized: Go may
// give every new zero-sized value the same address, and waiters are told
// apart by pointer.
type lockWaiter struct{ seq uint64 }

func lockFileName(kind Kind, vmid int) string {
	if kind == KindLXC {
		return fmt.Sprintf("/run/lock/lxc/pve-config-%d.lock", vmid)
	}
	return fmt.Sprintf("/var/lock/qemu-server/lock-%d.conf", vmid)
}

func lockTimeoutError(kind Kind, vmid int) error {
	return fmt.Errorf("can't lock file '%s' - got timeout", lockFileName(kind, vmid))
}

// enqueueLock takes a place in the guest's lock queue. s.mu held.
func (s *Server) enqueueLock(vmid int) *lockWaiter {
	fl := s.flocks[vmid]
	if fl == nil {
		fl = &flock{}
		s.flocks[vmid] = fl
	}
	fl.seq++
	w := &lockWaiter{seq: fl.seq}
	fl.queue = append(fl.queue, w)
	return w
}

// awaitLock waits until w is first in the queue and the lock is free, then
// holds it. A FaultLockTimeout makes it fail at once. Must be called
// without s.mu held.
func (s *Server) awaitLock(vmid int, kind Kind, w *lockWaiter, fault *Fault, cancel <-chan struct{}) error {
	deadline := time.Now().Add(s.cfg.LockTimeout)
	for {
		s.mu.Lock()
		fl := s.flocks[vmid]
		if fault != nil && fault.Kind == FaultLockTimeout {
			fl.leave(w)
			s.mu.Unlock()
			return lockTimeoutError(kind, vmid)
		}
		if !fl.held && len(fl.queue) > 0 && fl.queue[0] == w {
			fl.queue = fl.queue[1:]
			fl.held = true
			s.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			fl.leave(w)
			s.mu.Unlock()
			return lockTimeoutError(kind, vmid)
		}
		s.mu.Unlock()
		select {
		case <-time.After(time.Millisecond):
		case <-s.closed:
			s.mu.Lock()
			fl.leave(w)
			s.mu.Unlock()
			return s.interrupted()
		case <-cancel:
			s.mu.Lock()
			fl.leave(w)
			s.mu.Unlock()
			return s.interrupted()
		}
	}
}

func (fl *flock) leave(w *lockWaiter) {
	if i := slices.Index(fl.queue, w); i >= 0 {
		fl.queue = slices.Delete(fl.queue, i, i+1)
	}
}

func (s *Server) unlockGuest(vmid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fl := s.flocks[vmid]; fl != nil {
		fl.held = false
	}
}

// withGuestLock runs fn with the guest's config lock and s.mu held, for
// the synchronous API calls that change a config.
func (s *Server) withGuestLock(c *call, kind Kind, vmid int, fn func() (any, *apiError)) (any, *apiError) {
	s.mu.Lock()
	w := s.enqueueLock(vmid)
	s.mu.Unlock()
	if err := s.awaitLock(vmid, kind, w, c.fault, c.r.Context().Done()); err != nil {
		return nil, errf("%s", err.Error())
	}
	defer s.unlockGuest(vmid)
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn()
}
