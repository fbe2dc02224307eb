package pvesim

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// ACL is one access control entry of the API token: Privileges on Path
// ("/vms", "/vms/101", "/storage/local-lvm", "/nodes/pve1", ...), and with
// Propagate on every path below it. As in pve-access-control, the entry on
// the deepest path that applies replaces those above it; entries on the
// same path add up. Privilege names are pve's ("VM.Audit", "Sys.Audit",
// "Datastore.AllocateSpace", ...).
type ACL struct {
	Path       string
	Privileges []string
	Propagate  bool
}

// SetTokenACL replaces the API token's access control entries; nil gives
// it every privilege (the default), an empty list none. A token is
// privilege-separated in pve by default: what it may do is what these
// entries say.
func (s *Server) SetTokenACL(acl []ACL) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if acl == nil {
		s.acl = nil
		return
	}
	s.acl = append([]ACL{}, acl...)
}

// privileges is the token's effective privilege set on path, each with
// whether it propagates, or nil for "all" (no ACL configured). s.mu held.
func (s *Server) privileges(path string) map[string]bool {
	if s.acl == nil {
		return nil
	}
	out := map[string]bool{}
	depth := -1
	for _, e := range s.acl {
		d, ok := aclApplies(e, path)
		if !ok || d < depth {
			continue
		}
		if d > depth {
			depth, out = d, map[string]bool{}
		}
		for _, p := range e.Privileges {
			out[p] = out[p] || e.Propagate
		}
	}
	return out
}

// aclApplies reports whether e applies to path and at what depth.
func aclApplies(e ACL, path string) (int, bool) {
	ep := strings.TrimSuffix(e.Path, "/")
	p := strings.TrimSuffix(path, "/")
	depth := strings.Count(ep, "/")
	switch {
	case ep == p:
		return depth, true
	case e.Propagate && (ep == "" || strings.HasPrefix(p, ep+"/")):
		return depth, true
	}
	return 0, false
}

// allowed reports whether the token holds every one of privs on path.
// s.mu held.
func (s *Server) allowed(path string, privs ...string) bool {
	have := s.privileges(path)
	if have == nil {
		return true
	}
	for _, p := range privs {
		if _, ok := have[p]; !ok {
			return false
		}
	}
	return true
}

// allowedAny reports whether the token holds one of privs on path. s.mu
// held.
func (s *Server) allowedAny(path string, privs ...string) bool {
	for _, p := range privs {
		if s.allowed(path, p) {
			return true
		}
	}
	return false
}

// permissionDenied is pve's raise_perm_exc.
func permissionDenied(path string, privs ...string) *apiError {
	return &apiError{Status: http.StatusForbidden,
		Message: fmt.Sprintf("Permission check failed (%s, %s)", path, strings.Join(privs, "|"))}
}

// checkPermission is the permission check pve runs on a call before its
// handler: a 403 "Permission check failed (PATH, PRIV)", or nil. Listings
// are filtered instead, in their handlers.
func (s *Server) checkPermission(c *call) *apiError {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.acl == nil {
		return nil
	}
	need := func(path string, privs ...string) *apiError {
		for _, p := range privs {
			if !s.allowed(path, p) {
				return permissionDenied(path, p)
			}
		}
		return nil
	}
	seg, n := c.segs, len(c.segs)
	get := c.method == http.MethodGet
	if n < 3 || seg[0] != "nodes" {
		return nil
	}
	node := "/nodes/" + seg[1]
	switch seg[2] {
	case "status":
		return need(node, "Sys.Audit")
	case "vzdump":
		return need("/vms/"+c.param("vmid"), "VM.Backup")
	case "storage":
		if n >= 5 && seg[4] == "content" {
			path := "/storage/" + seg[3]
			switch {
			case get && !s.allowedAny(path, "Datastore.Audit", "Datastore.AllocateSpace"):
				return permissionDenied(path, "Datastore.Audit", "Datastore.AllocateSpace")
			case c.method == http.MethodDelete:
				return need(path, "Datastore.Allocate")
			}
		}
		return nil
	case "tasks":
		return s.taskPermission(c, node)
	case "qemu", "lxc":
	default:
		return nil
	}
	if n == 3 {
		if get {
			return nil // filtered
		}
		return s.createPermission(c, seg[2])
	}
	vms := "/vms/" + seg[3]
	switch {
	case get:
		return need(vms, "VM.Audit")
	case n == 4 && c.method == http.MethodDelete:
		return need(vms, "VM.Allocate")
	case n == 6 && seg[4] == "status":
		return need(vms, "VM.PowerMgmt")
	case n == 5 && (seg[4] == "resize" || seg[4] == "unlink"):
		return need(vms, "VM.Config.Disk")
	case n == 5 && seg[4] == "config":
		for _, key := range configKeys(c) {
			if err := need(vms, configPrivilege(Kind(seg[2]), key)); err != nil {
				return err
			}
		}
	}
	return nil
}

// createPermission: VM.Allocate on the new guest, and room on every
// storage a new disk is allocated on. s.mu held.
func (s *Server) createPermission(c *call, kind string) *apiError {
	vms := "/vms/" + c.param("vmid")
	if !s.allowed(vms, "VM.Allocate") {
		return permissionDenied(vms, "VM.Allocate")
	}
	for _, key := range configKeys(c) {
		if !isDiskKey(Kind(kind), key) {
			continue
		}
		storage, _, _ := strings.Cut(c.param(key), ":")
		if path := "/storage/" + storage; !s.allowed(path, "Datastore.AllocateSpace") {
			return permissionDenied(path, "Datastore.AllocateSpace")
		}
	}
	return nil
}

// taskPermission: a task's status and log are its owner's, or need
// Sys.Audit on the node; stopping another's task needs Sys.Modify. The
// task list is filtered. s.mu held.
func (s *Server) taskPermission(c *call, node string) *apiError {
	if len(c.segs) < 4 {
		return nil
	}
	if s.ownTask(c.segs[3]) {
		return nil
	}
	if c.method == http.MethodDelete {
		if !s.allowed(node, "Sys.Modify") {
			return permissionDenied(node, "Sys.Modify")
		}
		return nil
	}
	if !s.allowed(node, "Sys.Audit") {
		return permissionDenied(node, "Sys.Audit")
	}
	return nil
}

// ownTask reports whether the UPID names a task of the API token: a token
// sees its own tasks only (pve's check_task_user). s.mu held.
func (s *Server) ownTask(upid string) bool {
	f := strings.Split(upid, ":")
	return len(f) >= 8 && f[7] == s.tokenUser()
}

// seesTask reports whether the token may see task t in the task list:
// its own, or every task with Sys.Audit on the node. s.mu held.
func (s *Server) seesTask(t *task) bool {
	return t.user == s.tokenUser() || s.allowed("/nodes/"+s.cfg.Node, "Sys.Audit")
}

// auditsGuest reports whether the token may see guest vmid in listings.
// s.mu held.
func (s *Server) auditsGuest(vmid int) bool {
	return s.allowed("/vms/"+strconv.Itoa(vmid), "VM.Audit")
}

// configKeys are the config keys a config call sets or deletes.
func configKeys(c *call) []string {
	var keys []string
	for k := range c.params {
		switch k {
		case "digest", "delete", "revert", "skiplock", "force", "node", "vmid", "background_delay",
			"ostemplate", "archive", "storage", "start", "unique", "pool", "restore", "password":
			continue
		}
		keys = append(keys, k)
	}
	keys = append(keys, splitList(c.param("delete"))...)
	sort.Strings(keys)
	return slices.Compact(keys)
}

// configPrivilege is the privilege a config key needs, after qemu-server's
// check_vm_modify_config_perm (pve-container's is alike).
func configPrivilege(kind Kind, key string) string {
	switch {
	case isDiskKey(kind, key), key == "boot", key == "bootdisk":
		return "VM.Config.Disk"
	case strings.HasPrefix(key, "net"):
		return "VM.Config.Network"
	case key == "cores", key == "sockets", key == "vcpus", key == "cpu", key == "cpulimit", key == "cpuunits",
		key == "affinity", key == "numa":
		return "VM.Config.CPU"
	case key == "memory", key == "balloon", key == "shares", key == "swap":
		return "VM.Config.Memory"
	case key == "acpi", key == "hotplug", key == "kvm", key == "machine", key == "scsihw", key == "smbios1",
		key == "tablet", key == "vga", key == "watchdog", key == "audio0", key == "rng0":
		return "VM.Config.HWType"
	}
	return "VM.Config.Options"
}

// permissionsReply answers GET /access/permissions: with path, the token's
// privileges there ({path: {priv: propagate}}); without, at every path an
// entry names.
func (s *Server) permissionsReply(c *call) map[string]map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	paths := []string{"/"}
	if p := c.param("path"); p != "" {
		paths = []string{p}
	} else {
		for _, e := range s.acl {
			paths = append(paths, e.Path)
		}
	}
	out := map[string]map[string]int{}
	for _, p := range paths {
		privs := s.privileges(p)
		if privs == nil {
			privs = map[string]bool{}
			for _, name := range allPrivileges {
				privs[name] = true
			}
		}
		if len(privs) == 0 {
			continue
		}
		row := map[string]int{}
		for name, propagate := range privs {
			row[name] = 0
			if propagate {
				row[name] = 1
			}
		}
		out[p] = row
	}
	return out
}

// allPrivileges are pve's privileges the simulator knows, which a token
// without an ACL holds everywhere.
var allPrivileges = []string{
	"VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit",
	"VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options",
	"VM.Console", "VM.Migrate", "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback",
	"Sys.Audit", "Sys.Console", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog",
	"Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit",
	"SDN.Allocate", "SDN.Audit", "SDN.Use",
}
