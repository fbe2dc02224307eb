package pvesim

import (
	"fmt"
	"strconv"
	"time"
)

// pvestatd. /cluster/resources takes a guest's status, name, memory and
// CPU figures from the statistics pvestatd broadcasts about every 10 s,
// not from the config: a new guest is listed with status "unknown" and
// nothing else until the next cycle, and a change shows one cycle late.
// Which guests exist (the cluster's VM list), their lock, tags and HA
// state are read live. With StrictPVE the simulator keeps such a cache,
// refreshed when a listing finds it older than Config.StatsInterval on
// Config.Clock, or at RefreshStats.

// RefreshStats runs a pvestatd cycle now: /cluster/resources shows every
// guest as it is.
func (s *Server) RefreshStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshStats()
}

// refreshStats; s.mu held.
func (s *Server) refreshStats() {
	s.stats = map[int]map[string]any{}
	for _, g := range s.guests {
		s.stats[g.vmid] = s.guestListRow(g)
	}
	s.statsAt = s.cfg.Clock()
}

// statsRow is guest g's row of /cluster/resources: live without StrictPVE,
// else from the last pvestatd cycle (cycling first when it is due).
// s.mu held.
func (s *Server) statsRow(g *guest) map[string]any {
	if !s.cfg.StrictPVE || s.cfg.StatsInterval < 0 {
		return s.guestListRow(g)
	}
	if s.stats == nil || s.cfg.Clock().Sub(s.statsAt) >= s.cfg.StatsInterval {
		s.refreshStats()
	}
	row := map[string]any{"status": "unknown"}
	for k, v := range s.stats[g.vmid] {
		row[k] = v
	}
	return row
}

// vmstatusName is the name pve's vmstatus reports: the configured one, or
// "VM <id>" / "CT<id>" (pve-container also drops white space).
func (g *guest) vmstatusName() string {
	if n := g.conf[g.kind.nameKey()]; n != "" {
		return n
	}
	if g.kind == KindLXC {
		return "CT" + strconv.Itoa(g.vmid)
	}
	return fmt.Sprintf("VM %d", g.vmid)
}

// vmstatusCPUs is vmstatus's "cpus": for QEMU sockets×cores capped at the
// node's CPUs, vcpus when set; for LXC cores, else cpulimit, else the
// node's CPUs.
func (g *guest) vmstatusCPUs() any {
	if g.kind == KindLXC {
		for _, k := range []string{"cores", "cpulimit"} {
			if v, err := strconv.ParseFloat(g.conf[k], 64); err == nil && v > 0 {
				if v == float64(int(v)) {
					return int(v)
				}
				return v
			}
		}
		return nodeMaxCPU
	}
	cores, sockets := atoiOr(g.conf["cores"], 1), atoiOr(g.conf["sockets"], 1)
	cpus := min(cores*sockets, nodeMaxCPU)
	if v := atoiOr(g.conf["vcpus"], 0); v > 0 {
		cpus = v
	}
	return cpus
}

func atoiOr(s string, def int) int {
	if n, err := strconv.Atoi(s); err == nil && n > 0 {
		return n
	}
	return def
}

// defaultStatsInterval is pvestatd's cycle.
const defaultStatsInterval = 10 * time.Second
