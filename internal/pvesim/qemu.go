package pvesim

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// qemuFastPlug are the keys qemu-server writes at once even on a running
// VM (its $fast_plug_option).
var qemuFastPlug = map[string]bool{"description": true, "hookscript": true, "lock": true,
	"migrate_downtime": true, "migrate_speed": true, "name": true, "onboot": true, "protection": true,
	"shares": true, "startup": true, "tags": true, "vmstatestorage": true}

var qemuHotDisk = regexp.MustCompile(`^(scsi|virtio)\d+$`)

// qemuHotNow says whether a change to key applies at once on a running VM,
// following vmconfig_hotplug_pending with pve's default hotplug
// "network,disk,usb"; anything else stays pending until the next start.
func qemuHotNow(g *guest, key string) bool {
	switch {
	case qemuFastPlug[key]:
		return true
	case strings.HasPrefix(key, "net"), strings.HasPrefix(key, "usb"), strings.HasPrefix(key, "unused"),
		qemuHotDisk.MatchString(key), key == "tablet", key == "cpuunits", key == "cpulimit":
		return true
	case key == "balloon":
		return g.conf["balloon"] != "0"
	}
	hotplug := g.conf["hotplug"]
	return key == "memory" && strings.Contains(hotplug, "memory") ||
		key == "vcpus" && strings.Contains(hotplug, "cpu")
}

// qemuCreate is POST /nodes/{node}/qemu: create a VM, or with archive
// restore a backup (over an existing VM only with force=1).
func (s *Server) qemuCreate(c *call) (any, *apiError) {
	vmid, aerr := requiredVMID(c)
	if aerr != nil {
		return nil, aerr
	}
	set, aerr := s.configParams(KindQEMU, c, qemuCreateOnly)
	if aerr != nil {
		return nil, aerr
	}
	archive := c.param("archive")
	restore := archive != ""
	force := c.flag("force")
	if force && !restore {
		return nil, paramErr("force", "missing property 'archive' (required when 'force' is set)")
	}
	if restore {
		for k := range set {
			if isDiskKey(KindQEMU, k) && !strings.HasPrefix(k, "unused") {
				return nil, paramErr(k, "option conflicts with option 'archive'")
			}
		}
	}
	emsg := fmt.Sprintf("unable to create VM %d -", vmid)
	if restore {
		emsg = fmt.Sprintf("unable to restore VM %d -", vmid)
	}

	s.mu.Lock()
	var backup *volume
	if restore {
		backup = s.volumes[archive]
		if backup == nil || backup.content != "backup" {
			s.mu.Unlock()
			return nil, s.missingArchive(archive)
		}
		if backup.backup == nil || backup.backup.kind != KindQEMU {
			s.mu.Unlock()
			return nil, errf("%s archive '%s' is not a QEMU backup", emsg, archive)
		}
	}
	// create_and_lock_config
	g := s.guests[vmid]
	existed := g != nil
	if existed {
		if !force {
			s.mu.Unlock()
			return nil, errf("%s %s %d already exists on node '%s'", emsg, g.kind.label(), vmid, s.cfg.Node)
		}
		if g.kind != KindQEMU {
			s.mu.Unlock()
			return nil, errf("%s CT %d already exists on node '%s'", emsg, vmid, s.cfg.Node)
		}
		if err := g.checkLock(); err != nil {
			s.mu.Unlock()
			return nil, errf("%s %s", emsg, err.Error())
		}
		g.conf["lock"] = "create"
	} else {
		g = &guest{kind: KindQEMU, vmid: vmid, conf: map[string]string{"lock": "create"}}
		s.guests[vmid] = g
	}
	s.mu.Unlock()

	typ := "qmcreate"
	if restore {
		typ = "qmrestore"
	}
	start := c.flag("start")
	upid := s.startTask(c, taskSpec{typ: typ, vmid: vmid, kind: KindQEMU,
		cleanup: func() {
			// a failed create leaves nothing behind; a failed restore unlocks
			if g := s.guests[vmid]; g != nil && g.conf["lock"] == "create" {
				if existed {
					delete(g.conf, "lock")
				} else {
					delete(s.guests, vmid)
				}
			}
		},
		lost: func(t *task) {
			if !restore {
				s.allocateOrphans(vmid, set)
			}
		},
		check: func(t *task) error {
			g := s.guests[vmid]
			if !restore || !existed {
				return nil
			}
			// pve's message really has the doubled dash
			if g.protected() {
				return fmt.Errorf("%s - protection mode enabled", emsg)
			}
			if g.running {
				return fmt.Errorf("%s vm is running", emsg)
			}
			return nil
		},
		run: func(t *task) (int, error) {
			g := s.guests[vmid]
			if restore {
				if existed {
					// the old disks go first, as destroy_vm in the restore does
					s.freeGuestVolumes(g, false, t)
				}
				conf, err := s.restoreConf(vmid, backup, set, c.param("storage"), t)
				if err != nil {
					return 0, fmt.Errorf("%s %v", emsg, err)
				}
				g.conf = conf
				g.pending, g.pendingDelete = nil, nil
				t.log = append(t.log, fmt.Sprintf("restore vma archive: %s", archive))
			} else {
				conf := map[string]string{}
				for k, v := range set {
					if isDiskKey(KindQEMU, k) {
						spec, aerr := s.allocDisk(vmid, v)
						if aerr != nil {
							return 0, fmt.Errorf("%s %s", emsg, aerr.Message)
						}
						v = spec
						s.registerVolume(v, vmid)
					}
					conf[k] = v
				}
				s.qemuCreateDefaults(conf)
				conf["vmgenid"] = randomUUID()
				conf["smbios1"] = "uuid=" + randomUUID()
				g.conf = conf
			}
			if start {
				s.setRunning(g, true)
			}
			return 0, nil
		}})
	return upid, nil
}

// restoreConf builds a restored guest's config from a backup: its disks get
// fresh volumes (on storage, if given) and override values win. s.mu held.
func (s *Server) restoreConf(vmid int, backup *volume, override map[string]string, storage string, t *task) (map[string]string, error) {
	conf := map[string]string{}
	for k, v := range backup.backup.conf {
		if !isDiskKey(backup.backup.kind, k) {
			conf[k] = v
			continue
		}
		if len(k) >= 6 && k[:6] == "unused" {
			continue
		}
		volid, size, ok := diskVolume(v)
		if !ok {
			conf[k] = v
			continue
		}
		target := storage
		if target == "" {
			target, _, _ = cutColon(volid)
		}
		gb := float64(size) / float64(1<<30)
		spec, aerr := s.allocDisk(vmid, fmt.Sprintf("%s:%s", target, strconv.FormatFloat(gb, 'f', -1, 64)))
		if aerr != nil {
			return nil, fmt.Errorf("%s", aerr.Message)
		}
		conf[k] = spec
		t.log = append(t.log, fmt.Sprintf("new volume ID is '%s'", spec))
	}
	for k, v := range override {
		conf[k] = v
	}
	return conf, nil
}

func cutColon(v string) (string, string, bool) {
	for i := 0; i < len(v); i++ {
		if v[i] == ':' {
			return v[:i], v[i+1:], true
		}
	}
	return v, "", false
}

func requiredVMID(c *call) (int, *apiError) {
	v := c.param("vmid")
	if v == "" {
		return 0, paramErr("vmid", "property is missing and it is not optional")
	}
	id, err := strconv.Atoi(v)
	if err != nil || id < 100 || id > 999999999 {
		return 0, paramErr("vmid", fmt.Sprintf("invalid format - value '%s' does not look like a valid VM ID", v))
	}
	return id, nil
}

// qemuConfigUpdate is POST (async, returns a UPID) or PUT (sync, returns
// null) /nodes/{node}/qemu/{vmid}/config. As pve's update_vm_api, the
// digest and the lock are checked at once, and again under the config
// lock: in the handler for PUT, in the task for POST.
func (s *Server) qemuConfigUpdate(c *call, vmid int, sync bool) (any, *apiError) {
	set, aerr := s.configParams(KindQEMU, c, qemuUpdateOnly)
	if aerr != nil {
		return nil, aerr
	}
	deletes := splitList(c.param("delete"))
	for _, k := range deletes {
		if !qemuConfigKey.MatchString(k) {
			return nil, paramErr("delete", fmt.Sprintf("invalid format - '%s' is not a config key", k))
		}
		if _, both := set[k]; both {
			return nil, paramErr("delete", fmt.Sprintf("cannot set and delete '%s' at the same time", k))
		}
	}
	if len(set) == 0 && len(deletes) == 0 && !c.has("revert") {
		return nil, errf("no options specified")
	}
	digest := c.param("digest")
	skiplock := c.flag("skiplock")
	force := c.flag("force")
	check := func() (any, *apiError) {
		g := s.guests[vmid]
		if g == nil {
			return nil, s.missingConfig(KindQEMU, vmid)
		}
		if digest != "" && digest != g.digest() {
			return nil, errf("checksum mismatch (file change by other user?)")
		}
		if !skiplock {
			if err := g.checkLock(); err != nil {
				return nil, errf("%s", err.Error())
			}
		}
		return nil, nil
	}
	apply := func(t *task) error {
		g := s.guests[vmid]
		if g == nil {
			return fmt.Errorf("%s", s.missingConfig(KindQEMU, vmid).Message)
		}
		return s.qemuApply(g, set, deletes, force, t)
	}
	if sync {
		return s.withGuestLock(c, KindQEMU, vmid, func() (any, *apiError) {
			if _, aerr := check(); aerr != nil {
				return nil, aerr
			}
			if err := apply(nil); err != nil {
				return nil, errf("%s", err.Error())
			}
			return nil, nil
		})
	}
	// The asynchronous update checks once without the config lock, then
	// forks; its worker waits for the lock (Config.LockTimeout) and checks
	// again, so a lock or a digest that changed meanwhile fails the task.
	s.mu.Lock()
	_, aerr = check()
	s.mu.Unlock()
	if aerr != nil {
		return nil, aerr
	}
	upid := s.startTask(c, taskSpec{typ: "qmconfig", vmid: vmid, kind: KindQEMU,
		check: func(t *task) error {
			if _, aerr := check(); aerr != nil {
				return fmt.Errorf("%s", aerr.Message)
			}
			return nil
		},
		run: func(t *task) (int, error) { return 0, apply(t) }})
	return upid, nil
}

// qemuApply writes config changes: cold keys of a running VM go pending,
// a removed disk becomes unusedN (or with force is freed), a removed
// unusedN frees its volume, a "STORAGE:SIZE" disk allocates a volume.
// s.mu held.
func (s *Server) qemuApply(g *guest, set map[string]string, deletes []string, force bool, t *task) error {
	if err := g.qemuDeleteProtected(deletes); err != nil {
		return err
	}
	for k, v := range set {
		if isDiskKey(KindQEMU, k) {
			spec, aerr := s.allocDisk(g.vmid, v)
			if aerr != nil {
				return fmt.Errorf("%s", aerr.Message)
			}
			s.registerVolume(spec, g.vmid)
			v = spec
		}
		if g.running && !qemuHotNow(g, k) && g.conf[k] != v {
			if g.pending == nil {
				g.pending = map[string]string{}
			}
			g.pending[k] = v
			delete(g.pendingDelete, k)
			continue
		}
		g.setKey(k, v)
		delete(g.pending, k)
	}
	for _, k := range deletes {
		if _, ok := g.conf[k]; !ok {
			delete(g.pending, k)
			continue
		}
		if g.running && !qemuHotNow(g, k) {
			if g.pendingDelete == nil {
				g.pendingDelete = map[string]bool{}
			}
			g.pendingDelete[k] = true
			continue
		}
		v := g.conf[k]
		delete(g.conf, k)
		if !isDiskKey(KindQEMU, k) {
			continue
		}
		volid, _, ok := diskVolume(v)
		if !ok {
			continue
		}
		if force || strings.HasPrefix(k, "unused") {
			delete(s.volumes, volid)
			if t != nil {
				t.log = append(t.log, fmt.Sprintf("Removing volume '%s'", volid))
			}
		} else {
			g.conf[g.nextUnused()] = volid
		}
	}
	return nil
}

// qemuDeleteProtected is update_vm_api's check_protection for removed
// drives: a protected VM keeps its disks and its unused volumes (replacing
// a drive is not checked: the old volume becomes unusedN).
func (g *guest) qemuDeleteProtected(deletes []string) error {
	if !g.protected() {
		return nil
	}
	for _, k := range deletes {
		v, ok := g.conf[k]
		switch {
		case !ok || !isDiskKey(KindQEMU, k):
		case strings.HasPrefix(k, "unused"):
			volid, _, _ := diskVolume(v)
			return fmt.Errorf("can't remove unused disk '%s' - protection mode enabled", volid)
		default:
			return fmt.Errorf("can't remove drive '%s' - protection mode enabled", k)
		}
	}
	return nil
}

// qemuAction is POST /nodes/{node}/qemu/{vmid}/status/{action}. As in pve,
// the lock and "already running" are checked inside the task.
func (s *Server) qemuAction(c *call, vmid int, action string) (any, *apiError) {
	skiplock := c.flag("skiplock")
	lockOK := func(g *guest) error {
		if skiplock {
			return nil
		}
		return g.checkLock()
	}
	s.mu.Lock()
	ha := s.haManaged(vmid) && (action == "start" || action == "stop" || action == "shutdown")
	g := s.guests[vmid]
	s.mu.Unlock()
	if ha {
		return s.startTask(c, s.haRequest(g, action)), nil
	}
	var spec taskSpec
	switch action {
	case "start":
		spec = s.qemuStart(vmid, skiplock)
	case "stop":
		// vm_stop returns before its lock check when the VM does not run
		spec = taskSpec{typ: "qmstop", check: func(t *task) error {
			if g := s.guests[vmid]; g.running {
				return lockOK(g)
			}
			return nil
		}, run: func(t *task) (int, error) {
			g := s.guests[vmid]
			s.setRunning(g, false)
			return 0, nil
		}}
	case "shutdown":
		forceStop := c.flag("forceStop")
		spec = taskSpec{typ: "qmshutdown", check: func(t *task) error {
			if g := s.guests[vmid]; g.running {
				return lockOK(g)
			}
			return nil
		}, run: func(t *task) (int, error) {
			g := s.guests[vmid]
			if !g.running {
				return 0, nil
			}
			if g.ignoresShutdown {
				if !forceStop {
					return 0, fmt.Errorf("VM quit/powerdown failed - got timeout")
				}
				// a warn() in the worker: the task ends "WARNINGS: 1"
				t.log = append(t.log, "VM still running - terminating now with SIGTERM")
				s.setRunning(g, false)
				return 1, nil
			}
			s.setRunning(g, false)
			return 0, nil
		}}
	case "reboot":
		s.mu.Lock()
		running := s.guests[vmid].running
		s.mu.Unlock()
		if !running {
			return nil, errf("VM %d not running", vmid)
		}
		// vm_reboot does nothing for a VM that stopped meanwhile; it stops
		// the VM (checking the lock as any stop does) and leaves the start
		// to qmeventd, after the task.
		spec = taskSpec{typ: "qmreboot", check: func(t *task) error {
			if g := s.guests[vmid]; g.running {
				return lockOK(g)
			}
			return nil
		}, run: func(t *task) (int, error) {
			g := s.guests[vmid]
			if !g.running {
				return 0, nil
			}
			if g.ignoresShutdown {
				return 0, fmt.Errorf("VM quit/powerdown failed - got timeout")
			}
			if s.cfg.StrictPVE {
				s.setRunning(g, false)
				s.restartAfterReboot(vmid)
				return 0, nil
			}
			s.setRunning(g, false)
			s.setRunning(g, true)
			return 0, nil
		}}
	default:
		return nil, notImplemented(c)
	}
	spec.vmid = vmid
	spec.kind = KindQEMU
	return s.startTask(c, spec), nil
}

// qemuStart is vm_start's task: lock and "already running" are checked
// inside it.
func (s *Server) qemuStart(vmid int, skiplock bool) taskSpec {
	return taskSpec{typ: "qmstart", vmid: vmid, kind: KindQEMU, check: func(t *task) error {
		g := s.guests[vmid]
		if g.conf["template"] == "1" {
			return fmt.Errorf("you can't start a vm if it's a template")
		}
		if err := g.checkLock(); err != nil && !skiplock {
			return err
		}
		if g.running {
			return fmt.Errorf("VM %d already running", vmid)
		}
		return nil
	}, run: func(t *task) (int, error) {
		s.setRunning(s.guests[vmid], true)
		return 0, nil
	}}
}

// qemuDestroy is DELETE /nodes/{node}/qemu/{vmid}: protection and a running
// VM are refused at once; the lock is checked in the task.
func (s *Server) qemuDestroy(c *call, vmid int) (any, *apiError) {
	purge := c.flag("purge")
	early := func(g *guest) error {
		if g == nil {
			return fmt.Errorf("%s", s.missingConfig(KindQEMU, vmid).Message)
		}
		if g.protected() {
			return fmt.Errorf("can't remove VM %d - protection mode enabled", vmid)
		}
		if s.haManaged(vmid) && !purge {
			return fmt.Errorf("unable to remove VM %d - used in HA resources and purge parameter not set.", vmid)
		}
		if g.running {
			return fmt.Errorf("VM %d is running - destroy failed", vmid)
		}
		return nil
	}
	s.mu.Lock()
	err := early(s.guests[vmid])
	s.mu.Unlock()
	if err != nil {
		return nil, errf("%s", err.Error())
	}
	skiplock := c.flag("skiplock")
	unreferenced := c.flag("destroy-unreferenced-disks")
	upid := s.startTask(c, taskSpec{typ: "qmdestroy", vmid: vmid, kind: KindQEMU, check: func(t *task) error {
		g := s.guests[vmid]
		if err := early(g); err != nil {
			return err
		}
		if !skiplock {
			return g.checkLock()
		}
		return nil
	}, run: func(t *task) (int, error) {
		g := s.guests[vmid]
		s.freeGuestVolumes(g, unreferenced, t)
		if purge {
			t.log = append(t.log, fmt.Sprintf("purging VM %d from related configurations..", vmid))
		}
		delete(s.guests, vmid)
		delete(s.ha, vmid)
		return 0, nil
	}, lost: func(t *task) { s.destroyedRemnant(vmid, unreferenced) }})
	return upid, nil
}

// restartAfterReboot is qmeventd seeing the VM stop that a reboot asked
// for: it runs `qm start`, a qmstart task of root@pam, at once when
// Config.RebootRestartDelay is negative (then it exists when the reboot
// task has stopped), else after that delay. s.mu held.
func (s *Server) restartAfterReboot(vmid int) {
	start := func() { s.startTaskLocked(&call{}, "root@pam", s.qemuStart(vmid, false)) }
	if s.cfg.RebootRestartDelay < 0 {
		start()
		return
	}
	s.tasksWG.Add(1)
	go func() {
		defer s.tasksWG.Done()
		if !s.sleep(context.Background(), s.cfg.RebootRestartDelay) {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.guests[vmid] != nil {
			start()
		}
	}()
}

// qemuCreateDefaults adds what qemu-server writes into a new VM's config
// besides its parameters: meta and, when the VM has boot devices, the
// default boot order (vmgenid and smbios1 are the caller's). It writes no
// memory, cores, sockets or ostype: those stay at their schema defaults
// unset. Without StrictPVE it writes those four, as earlier versions of
// the simulator did. s.mu held.
func (s *Server) qemuCreateDefaults(conf map[string]string) {
	if !s.cfg.StrictPVE {
		for k, def := range map[string]string{"memory": "512", "cores": "1", "sockets": "1", "ostype": "other"} {
			if _, ok := conf[k]; !ok {
				conf[k] = def
			}
		}
		return
	}
	conf["meta"] = fmt.Sprintf("creation-qemu=10.0.2,ctime=%d", s.cfg.Clock().Unix())
	if _, ok := conf["boot"]; !ok {
		if order := defaultBootOrder(conf); order != "" {
			conf["boot"] = "order=" + order
		}
	}
}

// defaultBootOrder is get_default_bootdevices: the first disk, the first
// CD-ROM, the first NIC.
func defaultBootOrder(conf map[string]string) string {
	var devs []string
	for _, cdrom := range []bool{false, true} {
		for _, k := range bootDriveNames() {
			if v, ok := conf[k]; ok && strings.Contains(v, "media=cdrom") == cdrom {
				devs = append(devs, k)
				break
			}
		}
	}
	for i := 0; i < 32; i++ {
		if k := fmt.Sprintf("net%d", i); conf[k] != "" {
			devs = append(devs, k)
			break
		}
	}
	return strings.Join(devs, ";")
}

// bootDriveNames are qemu-server's drive names in the order it picks a
// boot disk from.
func bootDriveNames() []string {
	var out []string
	for _, b := range []struct {
		bus string
		n   int
	}{{"ide", 4}, {"scsi", 31}, {"virtio", 16}, {"sata", 6}} {
		for i := 0; i < b.n; i++ {
			out = append(out, fmt.Sprintf("%s%d", b.bus, i))
		}
	}
	return out
}
