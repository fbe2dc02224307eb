package pvesim

import (
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/felhom/felhom-agent/internal/pveschema"
)

// routeGuest serves /nodes/{node}/qemu/... and /nodes/{node}/lxc/...
func (s *Server) routeGuest(c *call, kind Kind) (any, *apiError) {
	seg := c.segs
	n := len(seg)
	if n == 3 {
		switch c.method {
		case http.MethodGet:
			return s.guestList(kind), nil
		case http.MethodPost:
			if kind == KindQEMU {
				return s.qemuCreate(c)
			}
			return s.lxcCreate(c)
		}
		return nil, notImplemented(c)
	}
	vmid, err := strconv.Atoi(seg[3])
	if err != nil || vmid < 100 {
		return nil, paramErr("vmid", fmt.Sprintf("invalid format - value '%s' does not look like a valid VM ID", seg[3]))
	}
	s.mu.Lock()
	g := s.guests[vmid]
	exists := g != nil && g.kind == kind
	s.mu.Unlock()
	if !exists {
		return nil, s.missingConfig(kind, vmid)
	}
	switch {
	case n == 4 && c.method == http.MethodGet:
		return dirIndex("config", "pending", "status"), nil
	case n == 4 && c.method == http.MethodDelete:
		if kind == KindQEMU {
			return s.qemuDestroy(c, vmid)
		}
		return s.lxcDestroy(c, vmid)
	case n == 5 && seg[4] == "config":
		switch c.method {
		case http.MethodGet:
			s.mu.Lock()
			defer s.mu.Unlock()
			if g := s.guests[vmid]; g != nil {
				return g.configJSON(c.flag("current")), nil
			}
			return nil, s.missingConfig(kind, vmid)
		case http.MethodPost:
			if kind == KindQEMU {
				return s.qemuConfigUpdate(c, vmid, false)
			}
		case http.MethodPut:
			if kind == KindQEMU {
				return s.qemuConfigUpdate(c, vmid, true)
			}
			return s.lxcConfigUpdate(c, vmid)
		}
	case n == 5 && seg[4] == "unlink" && c.method == http.MethodPut && kind == KindQEMU:
		// qemu-server's unlink is update_vm with delete=idlist
		c.params.Set("delete", c.param("idlist"))
		c.params.Del("idlist")
		return s.qemuConfigUpdate(c, vmid, true)
	case n == 5 && seg[4] == "resize" && c.method == http.MethodPut:
		return s.resize(c, kind, vmid)
	case n == 5 && seg[4] == "pending" && c.method == http.MethodGet:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.guests[vmid].pendingJSON(), nil
	case n == 5 && seg[4] == "status" && c.method == http.MethodGet:
		return dirIndex("current", "start", "stop", "shutdown", "reboot"), nil
	case n == 6 && seg[4] == "status":
		if seg[5] == "current" && c.method == http.MethodGet {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.guestStatus(s.guests[vmid]), nil
		}
		if c.method == http.MethodPost {
			if kind == KindQEMU {
				return s.qemuAction(c, vmid, seg[5])
			}
			return s.lxcAction(c, vmid, seg[5])
		}
	}
	return nil, notImplemented(c)
}

func (s *Server) guestList(kind Kind) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	for _, g := range s.sortedGuests() {
		if g.kind == kind && s.auditsGuest(g.vmid) {
			out = append(out, s.guestListRow(g))
		}
	}
	return out
}

// guestListRow is a guest's line in /nodes/{node}/qemu|lxc, pve's vmstatus.
// s.mu held.
func (s *Server) guestListRow(g *guest) map[string]any {
	memMiB := memoryMiB(g.conf["memory"])
	if memMiB == 0 {
		memMiB = 512 // the schema default, for QEMU and LXC alike
	}
	cores, _ := strconv.Atoi(g.conf["cores"])
	if cores == 0 {
		cores = 1
	}
	cpus := cores
	if g.kind == KindQEMU {
		sockets, _ := strconv.Atoi(g.conf["sockets"])
		if sockets > 0 {
			cpus = cores * sockets
		}
		if v, _ := strconv.Atoi(g.conf["vcpus"]); v > 0 {
			cpus = v
		}
	}
	var name, cpuCount any = g.conf[g.kind.nameKey()], cpus
	if s.cfg.StrictPVE {
		name, cpuCount = g.vmstatusName(), g.vmstatusCPUs()
	}
	row := map[string]any{
		"vmid":      g.vmid,
		"name":      name,
		"status":    g.status(),
		"cpus":      cpuCount,
		"maxmem":    uint64(memMiB) << 20,
		"mem":       uint64(0),
		"maxdisk":   g.bootDiskSize(s),
		"disk":      uint64(0),
		"uptime":    uint64(0),
		"cpu":       0.0,
		"netin":     uint64(0),
		"netout":    uint64(0),
		"diskread":  uint64(0),
		"diskwrite": uint64(0),
	}
	if g.kind == KindLXC {
		row["type"] = "lxc"
		swap, _ := strconv.Atoi(g.conf["swap"])
		row["maxswap"] = uint64(swap) << 20
	}
	if g.running {
		row["uptime"] = uint64(time.Since(g.startedAt).Seconds())
		row["mem"] = uint64(memMiB) << 20 / 3
		row["pid"] = g.pid
		row["cpu"] = 0.01
	}
	if t := g.conf["tags"]; t != "" {
		row["tags"] = t
	}
	if l := g.conf["lock"]; l != "" {
		row["lock"] = l
	}
	if g.conf["template"] == "1" {
		row["template"] = 1
	}
	return row
}

// guestStatus is GET .../status/current. s.mu held.
func (s *Server) guestStatus(g *guest) map[string]any {
	row := s.guestListRow(g)
	row["ha"] = map[string]any{"managed": 0}
	if state, ok := s.ha[g.vmid]; ok {
		row["ha"] = map[string]any{"managed": 1, "state": state}
	}
	if g.kind == KindQEMU {
		row["qmpstatus"] = g.status()
		if g.running {
			row["running-machine"] = "pc-i440fx-10.0+pve0"
			row["running-qemu"] = "10.0.2"
		}
		if g.conf["agent"] != "" {
			row["agent"] = 1
		}
	}
	return row
}

// bootDiskSize is the size of the first disk, pve's "maxdisk". s.mu held.
func (g *guest) bootDiskSize(s *Server) uint64 {
	keys := []string{"rootfs"}
	if g.kind == KindQEMU {
		keys = []string{"scsi0", "virtio0", "sata0", "ide0"}
		if order, ok := strings.CutPrefix(g.conf["boot"], "order="); ok {
			keys = append(strings.Split(order, ";"), keys...)
		}
	}
	for _, k := range keys {
		if spec, ok := g.conf[k]; ok {
			if _, size, ok := diskVolume(spec); ok {
				return size
			}
		}
	}
	return 0
}

func (g *guest) pendingJSON() []map[string]any {
	keys := map[string]bool{}
	for k := range g.conf {
		keys[k] = true
	}
	for k := range g.pending {
		keys[k] = true
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	out := []map[string]any{}
	for _, k := range names {
		row := map[string]any{"key": k}
		if v, ok := g.conf[k]; ok {
			row["value"] = g.kind.typed(k, v)
		}
		if v, ok := g.pending[k]; ok {
			row["pending"] = g.kind.typed(k, v)
		}
		if g.pendingDelete[k] {
			row["delete"] = 1
		}
		out = append(out, row)
	}
	return out
}

// checkLock is pve's check_lock: any config lock refuses the change.
func (g *guest) checkLock() error {
	if l := g.conf["lock"]; l != "" {
		return fmt.Errorf("%s is locked (%s)", g.kind.label(), l)
	}
	return nil
}

func (g *guest) protected() bool { return g.conf["protection"] == "1" }

var (
	qemuConfigKey = regexp.MustCompile(`^(acpi|affinity|agent|amd-sev|arch|args|audio0|autostart|balloon|bios|boot|bootdisk|cdrom|cicustom|cipassword|citype|ciupgrade|ciuser|cores|cpu|cpulimit|cpuunits|description|efidisk0|freeze|hookscript|hotplug|hugepages|ivshmem|keephugepages|keyboard|kvm|localtime|lock|machine|memory|meta|migrate_downtime|migrate_speed|name|nameserver|numa|onboot|ostype|protection|reboot|rng0|scsihw|searchdomain|shares|smbios1|smp|sockets|spice_enhancements|sshkeys|startdate|startup|tablet|tags|tdf|template|tpmstate0|vcpus|vga|vmgenid|vmstatestorage|watchdog|(hostpci|ide|ipconfig|net|numa|parallel|sata|scsi|serial|unused|usb|virtio|virtiofs)\d+)$`)
	lxcConfigKey  = regexp.MustCompile(`^(arch|cmode|console|cores|cpulimit|cpuunits|debug|description|entrypoint|env|features|hookscript|hostname|lock|memory|nameserver|onboot|ostype|protection|rootfs|searchdomain|startup|swap|tags|template|timezone|tty|unprivileged|(dev|mp|net|unused)\d+)$`)
	// keys the config APIs take that are not config keys
	qemuUpdateOnly = map[string]bool{"digest": true, "delete": true, "revert": true, "skiplock": true,
		"background_delay": true, "force": true, "node": true, "vmid": true}
	qemuCreateOnly = map[string]bool{"vmid": true, "archive": true, "force": true, "storage": true,
		"start": true, "unique": true, "pool": true, "live-restore": true, "bwlimit": true, "node": true,
		"import-working-storage": true}
	lxcUpdateOnly = map[string]bool{"digest": true, "delete": true, "revert": true, "node": true, "vmid": true}
	lxcCreateOnly = map[string]bool{"vmid": true, "ostemplate": true, "password": true, "storage": true,
		"start": true, "restore": true, "force": true, "ssh-public-keys": true, "unique": true, "pool": true,
		"ignore-unpack-errors": true, "bwlimit": true, "node": true}
	intParam = regexp.MustCompile(`^-?\d+$`)
)

// configParams splits a request's parameters into config values to set,
// checking names and integer types as pve's schema does, and with
// StrictPVE the values' formats (pveschema).
func (s *Server) configParams(kind Kind, c *call, apiOnly map[string]bool) (map[string]string, *apiError) {
	keyRE := qemuConfigKey
	if kind == KindLXC {
		keyRE = lxcConfigKey
	}
	set := map[string]string{}
	errs := map[string]string{}
	for k := range c.params {
		v := c.params.Get(k)
		switch {
		case apiOnly[k]:
			continue
		case !keyRE.MatchString(k):
			errs[k] = "property is not defined in schema and the schema does not allow additional properties"
			continue
		case s.cfg.StrictPVE && pveschema.Check(string(kind), k, v) != "":
			errs[k] = pveschema.Check(string(kind), k, v)
			continue
		case kind.intKey(k) && !intParam.MatchString(v):
			errs[k] = fmt.Sprintf("type check ('integer') failed - got '%s'", v)
			continue
		case k == "memory" && kind == KindQEMU && memoryMiB(v) <= 0:
			errs[k] = fmt.Sprintf("value '%s' does not match format", v)
			continue
		case k == "memory" && kind == KindQEMU && memoryMiB(v) < 16:
			errs[k] = "invalid format - current: value must have a minimum value of 16"
			continue
		case k == "memory" && kind == KindLXC && memoryMiB(v) < 16:
			errs[k] = "value must have a minimum value of 16"
			continue
		}
		set[k] = v
	}
	if len(errs) > 0 {
		return nil, &apiError{Status: http.StatusBadRequest, Message: "Parameter verification failed.", Errors: errs}
	}
	if t, ok := set["tags"]; ok {
		set["tags"] = normaliseTags(t)
	}
	if d, ok := set["description"]; ok {
		// pve keeps the description as comment lines and reads it back
		// without trailing white space
		set["description"] = strings.TrimRightFunc(d, unicode.IsSpace)
	}
	return set, nil
}

// normaliseTags is pve's get_unique_tags with the default tag style:
// lower-cased, sorted, de-duplicated, joined with ";".
func normaliseTags(t string) string {
	seen := map[string]bool{}
	var out []string
	for _, tag := range splitList(t) {
		tag = strings.ToLower(tag)
		if !seen[tag] {
			seen[tag] = true
			out = append(out, tag)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ";")
}

func splitList(v string) []string {
	var out []string
	for _, p := range regexp.MustCompile(`[,; ]+`).Split(v, -1) {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// freeGuestVolumes frees the volumes a guest's config references that the
// guest owns (pve's destroy_vm leaves another guest's volume alone), and
// with unreferenced also every other image volume owned by its VMID.
// s.mu held.
func (s *Server) freeGuestVolumes(g *guest, unreferenced bool, t *task) {
	for k, v := range g.conf {
		if !isDiskKey(g.kind, k) {
			continue
		}
		if volid, _, ok := diskVolume(v); ok {
			m := volOwner.FindStringSubmatch(volid)
			if m == nil || m[1] != strconv.Itoa(g.vmid) {
				continue
			}
			if _, exists := s.volumes[volid]; exists {
				delete(s.volumes, volid)
				if t != nil {
					t.log = append(t.log, fmt.Sprintf("Removing volume '%s'", volid))
				}
			}
		}
	}
	if !unreferenced {
		return
	}
	for id, v := range s.volumes {
		if v.vmid == g.vmid && v.content != "backup" {
			delete(s.volumes, id)
			if t != nil {
				t.log = append(t.log, fmt.Sprintf("Removing unreferenced volume '%s'", id))
			}
		}
	}
}

// nextUnused is the first free unusedN key. s.mu held.
func (g *guest) nextUnused() string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("unused%d", i)
		if _, taken := g.conf[k]; !taken {
			return k
		}
	}
}

// vzdump is POST /nodes/{node}/vzdump for one guest: the guest is locked
// "backup" while the task runs and the archive lands on storage "local".
func (s *Server) vzdump(c *call) (any, *apiError) {
	ids := splitList(c.param("vmid"))
	if len(ids) != 1 {
		return nil, paramErr("vmid", "pvesim backs up exactly one guest per vzdump call")
	}
	vmid, err := strconv.Atoi(ids[0])
	if err != nil {
		return nil, paramErr("vmid", fmt.Sprintf("invalid format - value '%s' does not look like a valid VM ID", ids[0]))
	}
	if st := c.param("storage"); st != "" && st != "local" {
		return nil, errf("storage '%s' does not support backups", st)
	}
	s.mu.Lock()
	g := s.guests[vmid]
	if g == nil {
		s.mu.Unlock()
		return nil, errf("unable to find VM '%d'", vmid)
	}
	if err := g.checkLock(); err != nil {
		s.mu.Unlock()
		return nil, errf("%s", err.Error())
	}
	g.conf["lock"] = "backup"
	s.mu.Unlock()
	upid := s.startTask(c, taskSpec{typ: "vzdump", id: strconv.Itoa(vmid),
		logStart: []string{fmt.Sprintf("INFO: starting new backup job: vzdump %d --storage local", vmid)},
		cleanup: func() {
			if g := s.guests[vmid]; g != nil && g.conf["lock"] == "backup" {
				delete(g.conf, "lock")
			}
		},
		run: func(t *task) (int, error) {
			g := s.guests[vmid]
			if g == nil {
				return 0, fmt.Errorf("guest %d vanished during backup", vmid)
			}
			volid := s.storeBackup(g, time.Now())
			t.log = append(t.log, fmt.Sprintf("INFO: creating vzdump archive '%s'", volid))
			return 0, nil
		}})
	return upid, nil
}
