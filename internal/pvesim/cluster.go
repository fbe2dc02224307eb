package pvesim

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

const (
	nodeMaxMem  = 64 << 30
	nodeMaxCPU  = 16
	nodeMaxDisk = 100 << 30
)

func (s *Server) versionInfo() map[string]any {
	return map[string]any{"release": "9.1", "version": "9.1.1", "repoid": "42b7a4ac0b3e4d2a"}
}

func (s *Server) nodeList() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []map[string]any{{
		"node": s.cfg.Node, "id": "node/" + s.cfg.Node, "type": "node", "status": "online",
		"level": "", "maxcpu": nodeMaxCPU, "maxmem": uint64(nodeMaxMem), "mem": s.usedMemory(),
		"maxdisk": uint64(nodeMaxDisk), "disk": uint64(12 << 30), "cpu": 0.02,
		"uptime":          s.uptime(),
		"ssl_fingerprint": "",
	}}
}

// uptime is the node's uptime in whole seconds on Config.Clock, as
// /proc/uptime gives it to pve: now minus it is when the node last booted
// (RebootNode). s.mu held.
func (s *Server) uptime() uint64 {
	return uint64(max(0, s.cfg.Clock().Sub(s.bootClock)) / time.Second)
}

// usedMemory; s.mu held.
func (s *Server) usedMemory() uint64 {
	used := uint64(2 << 30)
	for _, g := range s.guests {
		if g.running {
			used += uint64(memoryMiB(g.conf["memory"])) << 20 / 2
		}
	}
	return used
}

func (s *Server) nodeStatus() map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	used := s.usedMemory()
	return map[string]any{
		"uptime":     s.uptime(),
		"kversion":   "Linux 6.14.8-2-pve #1 SMP PREEMPT_DYNAMIC PMX 6.14.8-2",
		"pveversion": "pve-manager/9.1.1/42b7a4ac0b3e4d2a",
		"cpu":        0.02, "wait": 0.0, "idle": 0,
		"loadavg": []string{"0.10", "0.12", "0.09"},
		"cpuinfo": map[string]any{"cpus": nodeMaxCPU, "cores": 8, "sockets": 1, "model": "pvesim virtual CPU",
			"mhz": "3000.000", "hvm": "1", "user_hz": 100, "flags": ""},
		"memory": map[string]any{"total": uint64(nodeMaxMem), "used": used, "free": uint64(nodeMaxMem) - used},
		"swap":   map[string]any{"total": uint64(8 << 30), "used": 0, "free": uint64(8 << 30)},
		"rootfs": map[string]any{"total": uint64(nodeMaxDisk), "used": uint64(12 << 30),
			"free": uint64(nodeMaxDisk - 12<<30), "avail": uint64(nodeMaxDisk - 12<<30)},
		"ksm": map[string]any{"shared": 0},
	}
}

func (s *Server) routeCluster(c *call) (any, *apiError) {
	seg := c.segs
	if len(seg) != 2 || c.method != http.MethodGet {
		return nil, notImplemented(c)
	}
	switch seg[1] {
	case "resources":
		return s.clusterResources(c)
	case "nextid":
		return s.nextID(c)
	case "status":
		return []map[string]any{{"type": "node", "id": "node/" + s.cfg.Node, "name": s.cfg.Node,
			"nodeid": 1, "ip": "127.0.0.1", "online": 1, "local": 1, "level": ""}}, nil
	}
	return nil, notImplemented(c)
}

// clusterResources answers /cluster/resources (type vm|node|storage or
// all): one call that lists every guest with status, lock and tags.
func (s *Server) clusterResources(c *call) (any, *apiError) {
	typ := c.param("type")
	switch typ {
	case "", "vm", "node", "storage", "sdn", "pool":
	default:
		return nil, paramErr("type", fmt.Sprintf("value '%s' does not have a value in the enumeration 'vm, storage, node, sdn, pool'", typ))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	if typ == "" || typ == "vm" {
		for _, g := range s.sortedGuests() {
			if !s.auditsGuest(g.vmid) {
				continue // silently left out, as pve does
			}
			row := s.statsRow(g)
			for _, live := range []string{"lock", "tags"} {
				delete(row, live)
				if v := g.conf[live]; v != "" {
					row[live] = v
				}
			}
			row["vmid"] = g.vmid
			row["id"] = fmt.Sprintf("%s/%d", g.kind, g.vmid)
			row["type"] = string(g.kind)
			row["node"] = s.cfg.Node
			if cpus, ok := row["cpus"]; ok {
				row["maxcpu"] = cpus
			}
			delete(row, "cpus")
			delete(row, "pid")
			if _, ok := row["template"]; !ok && row["status"] != "unknown" {
				row["template"] = 0
			}
			if state, ok := s.ha[g.vmid]; ok {
				row["hastate"] = state
			}
			out = append(out, row)
		}
	}
	if typ == "" || typ == "node" {
		out = append(out, map[string]any{"id": "node/" + s.cfg.Node, "type": "node", "node": s.cfg.Node,
			"status": "online", "maxcpu": nodeMaxCPU, "maxmem": uint64(nodeMaxMem), "mem": s.usedMemory(),
			"maxdisk": uint64(nodeMaxDisk), "disk": uint64(12 << 30), "level": "",
			"uptime": s.uptime()})
	}
	if typ == "" || typ == "storage" {
		for i := range storages {
			st := &storages[i]
			if !s.allowed("/storage/"+st.name, "Datastore.Audit") {
				continue
			}
			row := s.storageStatus(st)
			out = append(out, map[string]any{"id": "storage/" + s.cfg.Node + "/" + st.name, "type": "storage",
				"storage": st.name, "node": s.cfg.Node, "status": "available", "content": st.content,
				"plugintype": st.typ, "maxdisk": row["total"], "disk": row["used"], "shared": 0})
		}
	}
	return out, nil
}

// nextID answers /cluster/nextid: the lowest free VMID from 100 as a string,
// or with vmid=N, N if it is free, else 400 "VM N already exists".
func (s *Server) nextID(c *call) (any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v := c.param("vmid"); v != "" {
		id, err := strconv.Atoi(v)
		if err != nil || id < 100 {
			return nil, paramErr("vmid", fmt.Sprintf("invalid format - value '%s' does not look like a valid VM ID", v))
		}
		if _, taken := s.guests[id]; taken {
			return nil, paramErr("vmid", fmt.Sprintf("VM %d already exists", id))
		}
		return strconv.Itoa(id), nil
	}
	for id := 100; ; id++ {
		if _, taken := s.guests[id]; !taken {
			return strconv.Itoa(id), nil
		}
	}
}
