package pvesim

import (
	"fmt"
	"time"
)

// flock is the per-guest config file lock (pve's flock on lock-VMID.conf):
// a task holds it for its whole run; any other change waits for it up to
// Config.LockTimeout and then fails with pve's "got timeout" message.
type flock struct {
	held bool
}

func lockFileName(kind Kind, vmid int) string {
	if kind == KindLXC {
		return fmt.Sprintf("/run/lock/lxc/pve-config-%d.lock", vmid)
	}
	return fmt.Sprintf("/var/lock/qemu-server/lock-%d.conf", vmid)
}

func lockTimeoutError(kind Kind, vmid int) error {
	return fmt.Errorf("can't lock file '%s' - got timeout", lockFileName(kind, vmid))
}

// lockGuest waits for the guest's config lock. A FaultLockTimeout on the
// call makes it fail at once. Must be called without s.mu held.
func (s *Server) lockGuest(vmid int, kind Kind, fault *Fault, cancel <-chan struct{}) error {
	if fault != nil && fault.Kind == FaultLockTimeout {
		return lockTimeoutError(kind, vmid)
	}
	deadline := time.Now().Add(s.cfg.LockTimeout)
	for {
		s.mu.Lock()
		fl := s.flocks[vmid]
		if fl == nil {
			fl = &flock{}
			s.flocks[vmid] = fl
		}
		if !fl.held {
			fl.held = true
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		if time.Now().After(deadline) {
			return lockTimeoutError(kind, vmid)
		}
		select {
		case <-time.After(2 * time.Millisecond):
		case <-s.closed:
			return lockTimeoutError(kind, vmid)
		case <-cancel:
			return fmt.Errorf("interrupted by signal")
		}
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
	if err := s.lockGuest(vmid, kind, c.fault, nil); err != nil {
		return nil, errf("%s", err.Error())
	}
	defer s.unlockGuest(vmid)
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn()
}
