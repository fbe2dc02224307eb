package pvesim

import "slices"

// adminPrivileges are the privileges pve's Administrator role grants that
// concern guests, storage and the node: what a token of a user with that
// role on / has.
var adminPrivileges = []string{
	"Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit",
	"Sys.Audit", "Sys.Console", "Sys.Modify", "Sys.PowerMgmt",
	"VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU",
	"VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network",
	"VM.Config.Options", "VM.Console", "VM.Migrate", "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback",
}

// permissions answers GET /access/permissions for the token: its
// privileges per ACL path, each propagating (1), as pve lists them.
func (s *Server) permissions() map[string]map[string]int {
	privs := s.cfg.Privileges
	if privs == nil {
		privs = adminPrivileges
	}
	root := make(map[string]int, len(privs))
	for _, p := range slices.Sorted(slices.Values(privs)) {
		root[p] = 1
	}
	return map[string]map[string]int{"/": root}
}
