package pvesim

import (
	"context"
	"fmt"
	"strconv"
)

// HA resources. A start, stop or shutdown of an HA-managed guest is not
// done by the API: qemu-server and pve-container fork an "hastart" or
// "hastop" task that only records the request with ha-manager and ends at
// once; the cluster resource manager and the node's local resource manager
// start or stop the guest later (here after Config.HADelay, or at
// ApplyHA). The HA stack's own start and shutdown tasks are not simulated:
// the guest changes state out of band.

// haStates are the requested states SetHA takes.
var haStates = map[string]bool{"started": true, "stopped": true}

// SetHA makes guest vmid an HA resource with the requested state
// "started" or "stopped", or ("") no HA resource any more.
func (s *Server) SetHA(vmid int, state string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guests[vmid] == nil {
		return fmt.Errorf("pvesim: no guest %d", vmid)
	}
	switch {
	case state == "":
		delete(s.ha, vmid)
	case haStates[state]:
		s.ha[vmid] = state
	default:
		return fmt.Errorf("pvesim: HA state %q is neither started nor stopped", state)
	}
	s.changed()
	return nil
}

// ApplyHA has the HA stack act on every request now: each HA-managed guest
// is started or stopped as requested.
func (s *Server) ApplyHA() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyHA()
}

// applyHA; s.mu held.
func (s *Server) applyHA() {
	for vmid, state := range s.ha {
		if g := s.guests[vmid]; g != nil && g.conf["lock"] == "" {
			s.setRunning(g, state == "started")
		}
	}
}

// haRequest is the "hastart"/"hastop" task of a power action on an
// HA-managed guest: it records the requested state and ends; the HA stack
// acts after Config.HADelay (at once when negative, as the task ends).
func (s *Server) haRequest(g *guest, action string) taskSpec {
	typ, state, verb := "hastart", "started", "start"
	if action != "start" {
		typ, state, verb = "hastop", "stopped", "stop"
	}
	vmid := g.vmid
	return taskSpec{typ: typ, id: strconv.Itoa(vmid),
		logStart: []string{fmt.Sprintf("Requesting HA %s for %s %d", verb, g.kind.label(), vmid)},
		run: func(t *task) (int, error) {
			if _, managed := s.ha[vmid]; !managed {
				return 0, fmt.Errorf("service '%s:%d' not managed by HA", g.kind.haType(), vmid)
			}
			s.ha[vmid] = state
			s.scheduleHA()
			return 0, nil
		}}
}

// scheduleHA lets the HA stack act after Config.HADelay. s.mu held.
func (s *Server) scheduleHA() {
	if s.cfg.HADelay < 0 {
		s.applyHA()
		return
	}
	s.tasksWG.Add(1)
	go func() {
		defer s.tasksWG.Done()
		if !s.sleep(context.Background(), s.cfg.HADelay) {
			return
		}
		s.ApplyHA()
	}()
}

// haManaged reports whether guest vmid is an HA resource. s.mu held.
func (s *Server) haManaged(vmid int) bool {
	_, ok := s.ha[vmid]
	return ok
}

// haType is the HA resource type of a guest kind.
func (k Kind) haType() string {
	if k == KindLXC {
		return "ct"
	}
	return "vm"
}
