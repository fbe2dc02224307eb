package pvesim

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// lxcCreate is POST /nodes/{node}/lxc: create a container from ostemplate,
// or with restore=1 restore the backup named by ostemplate (over an
// existing container only with force=1).
func (s *Server) lxcCreate(c *call) (any, *apiError) {
	vmid, aerr := requiredVMID(c)
	if aerr != nil {
		return nil, aerr
	}
	set, aerr := s.configParams(KindLXC, c, lxcCreateOnly)
	if aerr != nil {
		return nil, aerr
	}
	ostemplate := c.param("ostemplate")
	if ostemplate == "" {
		return nil, paramErr("ostemplate", "property is missing and it is not optional")
	}
	restore := c.flag("restore")
	force := c.flag("force")
	emsg := fmt.Sprintf("unable to create CT %d -", vmid)
	if restore {
		emsg = fmt.Sprintf("unable to restore CT %d -", vmid)
	}

	s.mu.Lock()
	var backup *volume
	if restore {
		backup = s.volumes[ostemplate]
		if backup == nil || backup.content != "backup" || backup.backup == nil || backup.backup.kind != KindLXC {
			s.mu.Unlock()
			return nil, s.missingArchive(ostemplate)
		}
	} else if !strings.Contains(ostemplate, ":vztmpl/") {
		s.mu.Unlock()
		return nil, errf("%s volume '%s' is not a container template", emsg, ostemplate)
	}
	g := s.guests[vmid]
	existed := g != nil
	if existed {
		// pve-container calls check_vmid_unused without its error prefix
		if !(restore && force) || g.kind != KindLXC {
			s.mu.Unlock()
			return nil, errf("%s %d already exists on node '%s'", g.kind.label(), vmid, s.cfg.Node)
		}
		if g.running {
			s.mu.Unlock()
			return nil, errf("can't overwrite running container")
		}
		if g.protected() {
			s.mu.Unlock()
			return nil, errf("unable to restore CT %d - protection mode enabled", vmid)
		}
		if err := g.checkLock(); err != nil {
			s.mu.Unlock()
			return nil, errf("%s %s", emsg, err.Error())
		}
		g.conf["lock"] = "create"
	} else {
		g = &guest{kind: KindLXC, vmid: vmid, conf: map[string]string{"lock": "create"}}
		s.guests[vmid] = g
	}
	s.mu.Unlock()

	typ := "vzcreate"
	if restore {
		typ = "vzrestore"
	}
	start := c.flag("start")
	upid := s.startTask(c, taskSpec{typ: typ, vmid: vmid, kind: KindLXC,
		lost: func(t *task) {
			if !restore {
				s.allocateOrphans(vmid, set)
			}
		},
		cleanup: func() {
			if g := s.guests[vmid]; g != nil && g.conf["lock"] == "create" {
				if existed {
					delete(g.conf, "lock")
				} else {
					delete(s.guests, vmid)
				}
			}
		},
		run: func(t *task) (int, error) {
			g := s.guests[vmid]
			if g == nil {
				return 0, fmt.Errorf("%s config vanished", emsg)
			}
			if restore {
				if existed {
					s.freeGuestVolumes(g, false, t)
				}
				conf, err := s.restoreConf(vmid, backup, set, c.param("storage"), t)
				if err != nil {
					return 0, fmt.Errorf("%s %v", emsg, err)
				}
				g.conf = conf
			} else {
				conf := map[string]string{}
				for k, v := range set {
					if isDiskKey(KindLXC, k) {
						spec, aerr := s.allocDisk(vmid, v)
						if aerr != nil {
							return 0, fmt.Errorf("%s %s", emsg, aerr.Message)
						}
						v = spec
						s.registerVolume(v, vmid)
					}
					conf[k] = v
				}
				if _, ok := conf["rootfs"]; !ok {
					st := c.param("storage")
					if st == "" {
						st = "local-lvm"
					}
					spec, aerr := s.allocDisk(vmid, st+":4")
					if aerr != nil {
						return 0, fmt.Errorf("%s %s", emsg, aerr.Message)
					}
					conf["rootfs"] = spec
				}
				// what pve-container writes: hostname, memory and swap
				// defaults, the detected OS and arch, unprivileged unless
				// asked otherwise (the API's default for a create since
				// pve-container 6); no cores
				defaults := map[string]string{"memory": "512", "swap": "512", "ostype": "debian", "arch": "amd64",
					"hostname": fmt.Sprintf("CT%d", vmid), "unprivileged": "1"}
				if !s.cfg.StrictPVE {
					defaults["cores"] = "1"
				}
				for k, def := range defaults {
					if _, ok := conf[k]; !ok {
						conf[k] = def
					}
				}
				g.conf = conf
				t.log = append(t.log, fmt.Sprintf("extracting archive '%s'", ostemplate))
			}
			if start {
				s.setRunning(g, true)
			}
			return 0, nil
		}})
	return upid, nil
}

// lxcConfigUpdate is PUT /nodes/{node}/lxc/{vmid}/config: synchronous, no
// task, data null. A running container takes what pve-container fast-plugs
// or hot-plugs at once and keeps the rest pending until its next start.
func (s *Server) lxcConfigUpdate(c *call, vmid int) (any, *apiError) {
	set, aerr := s.configParams(KindLXC, c, lxcUpdateOnly)
	if aerr != nil {
		return nil, aerr
	}
	deletes := splitList(c.param("delete"))
	for _, k := range deletes {
		if !lxcConfigKey.MatchString(k) {
			return nil, paramErr("delete", fmt.Sprintf("invalid format - '%s' is not a config key", k))
		}
	}
	if len(set) == 0 && len(deletes) == 0 && !c.has("revert") {
		return nil, errf("no options specified")
	}
	digest := c.param("digest")
	return s.withGuestLock(c, KindLXC, vmid, func() (any, *apiError) {
		g := s.guests[vmid]
		if g == nil {
			return nil, s.missingConfig(KindLXC, vmid)
		}
		if err := g.checkLock(); err != nil {
			return nil, errf("%s", err.Error())
		}
		if digest != "" && digest != g.digest() {
			return nil, errf("detected modified configuration - file changed by other user? Try again.")
		}
		for _, k := range deletes {
			if k == "rootfs" {
				return nil, errf("unable to delete required option '%s'", k)
			}
		}
		if err := g.lxcDiskProtected(set, deletes); err != nil {
			return nil, errf("%s", err.Error())
		}
		for k, v := range set {
			if isDiskKey(KindLXC, k) {
				spec, aerr := s.allocDisk(vmid, v)
				if aerr != nil {
					return nil, aerr
				}
				s.registerVolume(spec, vmid)
				v = spec
			}
			if g.running && !lxcHotNow(g, k) && g.conf[k] != v {
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
			v, ok := g.conf[k]
			if !ok {
				delete(g.pending, k)
				continue
			}
			if g.running && !lxcHotNow(g, k) && !strings.HasPrefix(k, "unused") {
				if g.pendingDelete == nil {
					g.pendingDelete = map[string]bool{}
				}
				g.pendingDelete[k] = true
				continue
			}
			delete(g.conf, k)
			if volid, _, isVol := diskVolume(v); isVol && isDiskKey(KindLXC, k) {
				if strings.HasPrefix(k, "unused") {
					delete(s.volumes, volid)
				} else {
					g.conf[g.nextUnused()] = volid
				}
			}
		}
		return nil, nil
	})
}

// lxcAction is POST /nodes/{node}/lxc/{vmid}/status/{action}. Unlike QEMU,
// pve-container checks the power state before forking the task.
func (s *Server) lxcAction(c *call, vmid int, action string) (any, *apiError) {
	s.mu.Lock()
	running := s.guests[vmid].running
	s.mu.Unlock()
	s.mu.Lock()
	g := s.guests[vmid]
	ha := s.haManaged(vmid)
	s.mu.Unlock()
	var spec taskSpec
	switch action {
	case "start":
		if running {
			return nil, errf("CT %d already running", vmid)
		}
		if ha {
			return s.startTask(c, s.haRequest(g, action)), nil
		}
		skiplock := c.flag("skiplock")
		spec = taskSpec{typ: "vzstart", check: func(t *task) error {
			if s.guests[vmid].conf["template"] == "1" {
				return fmt.Errorf("you can't start a CT if it's a template")
			}
			if skiplock {
				return nil
			}
			return s.guests[vmid].checkLock()
		}, run: func(t *task) (int, error) {
			g := s.guests[vmid]
			s.setRunning(g, true)
			return 0, nil
		}}
	case "stop":
		if !running {
			return nil, errf("CT %d not running", vmid)
		}
		if ha {
			return s.startTask(c, s.haRequest(g, action)), nil
		}
		skiplock := c.flag("skiplock")
		spec = taskSpec{typ: "vzstop", check: func(t *task) error {
			if skiplock {
				return nil
			}
			return s.guests[vmid].checkLock()
		}, run: func(t *task) (int, error) {
			g := s.guests[vmid]
			s.setRunning(g, false)
			return 0, nil
		}}
	case "shutdown":
		if !running {
			return nil, errf("CT %d not running", vmid)
		}
		if ha {
			return s.startTask(c, s.haRequest(g, action)), nil
		}
		forceStop := c.flag("forceStop")
		timeout := c.param("timeout")
		if timeout == "" {
			timeout = "60"
		}
		spec = taskSpec{typ: "vzshutdown", check: func(t *task) error {
			return s.guests[vmid].checkLock()
		}, run: func(t *task) (int, error) {
			g := s.guests[vmid]
			if g.ignoresShutdown && !forceStop {
				t.log = append(t.log, fmt.Sprintf("command 'lxc-stop -n %d --nokill --timeout %s' failed: exit code 1", vmid, timeout))
				return 0, fmt.Errorf("container did not stop")
			}
			s.setRunning(g, false)
			return 0, nil
		}}
	case "reboot":
		if !running {
			// sic: pve-container says "VM" here
			return nil, errf("VM %d not running", vmid)
		}
		spec = taskSpec{typ: "vzreboot", check: func(t *task) error {
			return s.guests[vmid].checkLock()
		}, run: func(t *task) (int, error) {
			g := s.guests[vmid]
			s.setRunning(g, false)
			s.setRunning(g, true)
			return 0, nil
		}}
	default:
		return nil, notImplemented(c)
	}
	spec.vmid = vmid
	spec.kind = KindLXC
	return s.startTask(c, spec), nil
}

// lxcDestroy is DELETE /nodes/{node}/lxc/{vmid}; force=1 stops a running
// container first. Unlike QEMU, protection, lock and power state are all
// checked at once and again in the task.
func (s *Server) lxcDestroy(c *call, vmid int) (any, *apiError) {
	force := c.flag("force")
	purge := c.flag("purge")
	early := func(g *guest) error {
		if g == nil {
			return fmt.Errorf("%s", s.missingConfig(KindLXC, vmid).Message)
		}
		if g.protected() {
			return fmt.Errorf("can't remove CT %d - protection mode enabled", vmid)
		}
		if s.haManaged(vmid) && !purge {
			return fmt.Errorf("unable to remove CT %d - used in HA resources and purge parameter not set.", vmid)
		}
		if err := g.checkLock(); err != nil {
			return err
		}
		if g.running && !force {
			return fmt.Errorf("unable to destroy CT %d - container is running", vmid)
		}
		return nil
	}
	s.mu.Lock()
	err := early(s.guests[vmid])
	s.mu.Unlock()
	if err != nil {
		return nil, errf("%s", err.Error())
	}
	unreferenced := c.flag("destroy-unreferenced-disks")
	upid := s.startTask(c, taskSpec{typ: "vzdestroy", vmid: vmid, kind: KindLXC, check: func(t *task) error {
		return early(s.guests[vmid])
	}, run: func(t *task) (int, error) {
		g := s.guests[vmid]
		s.setRunning(g, false)
		s.freeGuestVolumes(g, unreferenced, t)
		if purge {
			t.log = append(t.log, fmt.Sprintf("purging CT %d from related configurations..", vmid))
		}
		delete(s.guests, vmid)
		delete(s.ha, vmid)
		return 0, nil
	}, lost: func(t *task) { s.destroyedRemnant(vmid, unreferenced) }})
	return upid, nil
}

// lxcDiskProtected is update_pct_config's check_protection: a protected
// container's mount points and unused volumes are neither removed nor set,
// a new one included.
func (g *guest) lxcDiskProtected(set map[string]string, deletes []string) error {
	if !g.protected() {
		return nil
	}
	for _, k := range deletes {
		if _, ok := g.conf[k]; ok && (strings.HasPrefix(k, "mp") || strings.HasPrefix(k, "unused")) {
			return fmt.Errorf("can't remove CT %d drive '%s' - protection mode enabled", g.vmid, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(set)) {
		if strings.HasPrefix(k, "mp") || k == "rootfs" {
			return fmt.Errorf("can't update CT %d drive '%s' - protection mode enabled", g.vmid, k)
		}
	}
	return nil
}

// lxcFastPlug are pve-container's $LXC_FASTPLUG_OPTIONS.
var lxcFastPlug = map[string]bool{"description": true, "onboot": true, "startup": true, "protection": true,
	"hostname": true, "hookscript": true, "cores": true, "tags": true, "lock": true}

// lxcHotNow says whether a change to key applies at once on a running
// container: fast-plug options, cgroup limits, NICs, and mount points or
// devices that are new (pve does not hot-plug over an existing one).
func lxcHotNow(g *guest, key string) bool {
	switch {
	case lxcFastPlug[key], key == "memory", key == "swap", key == "cpulimit", key == "cpuunits",
		strings.HasPrefix(key, "net"), strings.HasPrefix(key, "unused"):
		return true
	case strings.HasPrefix(key, "mp"), strings.HasPrefix(key, "dev"):
		_, exists := g.conf[key]
		return !exists
	}
	return false
}
