package pveclient

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	proxmox "github.com/luthermonson/go-proxmox"
)

// Privilege is one Proxmox privilege on one ACL path. Propagate says it
// must hold below the path too (every guest under /vms, every storage
// under /storage).
type Privilege struct {
	Path      string
	Name      string
	Propagate bool
}

func (p Privilege) String() string {
	if p.Propagate {
		return p.Name + " on " + p.Path + " (propagated)"
	}
	return p.Name + " on " + p.Path
}

// Role is the least-privilege role for the agent's API token: every
// privilege RequiredPrivileges names, for `pveum role add`.
var Role = []string{
	"VM.Audit", "VM.PowerMgmt", "VM.Allocate",
	"VM.Config.Disk", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.Config.HWType",
	"Datastore.Audit", "Datastore.AllocateSpace", "Datastore.Allocate",
	"Sys.Audit", "SDN.Use",
}

// RequiredPrivileges are what the agent's API token needs on node:
//
//   - on every guest (/vms): VM.Audit to see it at all (Proxmox leaves a
//     guest the token cannot audit out of its listings, silently),
//     VM.PowerMgmt, VM.Allocate (create, destroy, restore) and the
//     VM.Config.* privileges of the keys the agent sets;
//   - on every storage (/storage): Datastore.Audit to list volumes,
//     Datastore.AllocateSpace for new disks, Datastore.Allocate to free
//     volumes;
//   - on the node: Sys.Audit, for its status and for tasks the token did
//     not start itself (a backup's, the HA stack's, qmeventd's): without it
//     the task list shows the token's own tasks only;
//   - on the node-local bridges (/sdn/zones/localnetwork): SDN.Use, to put
//     a network device on a bridge.
func RequiredPrivileges(node string) []Privilege {
	var out []Privilege
	for _, name := range Role {
		switch {
		case strings.HasPrefix(name, "VM."):
			out = append(out, Privilege{Path: "/vms", Name: name, Propagate: true})
		case strings.HasPrefix(name, "Datastore."):
			out = append(out, Privilege{Path: "/storage", Name: name, Propagate: true})
		case name == "Sys.Audit":
			out = append(out, Privilege{Path: "/nodes/" + node, Name: name})
		case name == "SDN.Use":
			out = append(out, Privilege{Path: "/sdn/zones/localnetwork", Name: name, Propagate: true})
		}
	}
	return out
}

// MissingPrivilegesError names every privilege the API token lacks.
type MissingPrivilegesError struct {
	Missing []Privilege
}

func (e *MissingPrivilegesError) Error() string {
	names := make([]string, len(e.Missing))
	for i, p := range e.Missing {
		names[i] = p.String()
	}
	return "the API token lacks privileges the agent needs: " + strings.Join(names, ", ") +
		` (README.md, "A least-privilege API token", has the pveum commands)`
}

// CheckPrivileges reads the token's effective privileges on each path
// (GET /access/permissions, which every token may ask about itself) and
// returns a *MissingPrivilegesError naming each one RequiredPrivileges(node)
// holds that the token lacks.
func CheckPrivileges(ctx context.Context, c *proxmox.Client, node string) error {
	var missing []Privilege
	have := map[string]map[string]int{}
	for _, want := range RequiredPrivileges(node) {
		privs, ok := have[want.Path]
		if !ok {
			var res map[string]map[string]int
			if err := c.Get(ctx, "/access/permissions?path="+url.QueryEscape(want.Path), &res); err != nil {
				return describe("check the API token's privileges", err)
			}
			privs = res[want.Path]
			have[want.Path] = privs
		}
		propagate, held := privs[want.Name]
		if !held || (want.Propagate && propagate != 1) {
			missing = append(missing, want)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("check the API token's privileges: %w", &MissingPrivilegesError{Missing: missing})
	}
	return nil
}
