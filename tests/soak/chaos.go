package main

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// Kinds of simulator faults the soak injects, as counted in the figures.
const (
	fault5xxBefore   = "http_5xx_before"
	fault596Before   = "http_596_before"
	fault596After    = "http_596_after"
	faultDropBefore  = "drop_before"
	faultDropAfter   = "drop_after"
	faultSlowReply   = "slow_reply_after"
	faultSlowTask    = "slow_task"
	faultTaskError   = "task_error"
	faultTaskWarn    = "task_warnings"
	faultLockTimeout = "lock_timeout_in_task"
	faultLostTasks   = "lost_tasks_node_reboot"
	faultGuestLock   = "guest_lock"
	faultBackupLock  = "nightly_backup_lock"
	faultHidden      = "permission_hidden_guest"
)

// faultWeights says how often each kind is picked; a node reboot (every
// task lost, every guest stopped) is rare.
var faultWeights = []weighted{
	{fault5xxBefore, 10}, {fault596Before, 8}, {fault596After, 8}, {faultDropBefore, 8}, {faultDropAfter, 8},
	{faultSlowReply, 6}, {faultSlowTask, 10}, {faultTaskError, 8}, {faultTaskWarn, 6}, {faultLockTimeout, 8},
	{faultLostTasks, 1}, {faultGuestLock, 5}, {faultBackupLock, 6}, {faultHidden, 5},
}

// mutatingPaths are the API paths the agent's mutations use, as fault
// patterns; a fault picks one, a method that fits it, and maybe a guest.
var mutatingPaths = []struct{ method, path string }{
	{http.MethodPost, "/nodes/*/qemu"},
	{http.MethodPost, "/nodes/*/lxc"},
	{http.MethodPost, "/nodes/*/qemu/*/status/*"},
	{http.MethodPost, "/nodes/*/lxc/*/status/*"},
	{http.MethodPost, "/nodes/*/qemu/*/config"},
	{http.MethodPut, "/nodes/*/qemu/*/config"},
	{http.MethodPut, "/nodes/*/lxc/*/config"},
	{http.MethodPut, "/nodes/*/qemu/*/resize"},
	{http.MethodPut, "/nodes/*/lxc/*/resize"},
	{http.MethodDelete, "/nodes/*/qemu/*"},
	{http.MethodDelete, "/nodes/*/lxc/*"},
	{"", ""}, // any mutating request
}

// hostChaos is what the soak did to one host's simulator that it must
// undo: guest locks it set and guests it hid.
type hostChaos struct {
	// privileges are the API token's where nothing is hidden: every one.
	privileges []string

	mu      sync.Mutex
	locks   map[int]string // vmid → the lock the soak set
	hidden  map[int]bool
	reboots []time.Time // node reboots: every task lost, every guest stopped
}

func (c *hostChaos) acl() []pvesim.ACL {
	if len(c.hidden) == 0 {
		return nil
	}
	acl := []pvesim.ACL{{Path: "/", Privileges: c.privileges, Propagate: true}}
	for vmid := range c.hidden {
		acl = append(acl, pvesim.ACL{Path: fmt.Sprintf("/vms/%d", vmid), Privileges: []string{}})
	}
	return acl
}

// faultKindNames lists the fault kinds, for a usage error.
func faultKindNames() string {
	names := make([]string, len(faultWeights))
	for i, w := range faultWeights {
		names[i] = w.name
	}
	return strings.Join(names, ", ")
}

// weighted is a choice and how often it is made, against the others'
// weights.
type weighted struct {
	name   string
	weight int
}

// pick makes a weighted random choice.
func pick(rng *rand.Rand, choices []weighted) string {
	total := 0
	for _, c := range choices {
		total += c.weight
	}
	n := rng.IntN(total)
	for _, c := range choices {
		if n < c.weight {
			return c.name
		}
		n -= c.weight
	}
	return choices[0].name
}

// inject arms one fault of kind on h, about vmid (0: any guest), and
// returns what it did in a few words. Timed faults (locks, hidden guests)
// are undone after a while by a goroutine, and in any case by heal.
func (h *host) inject(rng *rand.Rand, kind string, vmid int) string {
	// Most faults hit the next mutating request of any guest; the others
	// wait for a request of one kind, about one guest, or both.
	p := mutatingPaths[len(mutatingPaths)-1]
	switch n := rng.IntN(10); {
	case n == 0:
		p = mutatingPaths[rng.IntN(len(mutatingPaths))]
	case n <= 2:
		p = mutatingPaths[rng.IntN(len(mutatingPaths))]
		vmid = 0
	case n == 3:
	default:
		vmid = 0
	}
	f := pvesim.Fault{Method: p.method, Path: p.path, VMID: vmid}
	switch kind {
	case fault5xxBefore:
		f.Kind, f.Status = pvesim.FaultHTTPError, []int{500, 502, 503}[rng.IntN(3)]
	case fault596Before:
		f.Kind, f.Status = pvesim.FaultHTTPError, 596
		f.Message = "Connection timed out"
	case fault596After:
		f.Kind, f.Status = pvesim.FaultHTTPErrorAfter, 596
		f.Message = "Connection timed out"
	case faultDropBefore:
		f.Kind = pvesim.FaultDropBefore
	case faultDropAfter:
		f.Kind = pvesim.FaultDropAfter
	case faultSlowReply:
		f.Kind, f.Delay = pvesim.FaultDelayAfter, time.Duration(1+rng.IntN(5))*time.Second
	case faultSlowTask:
		f.Kind, f.TaskDuration = pvesim.FaultSlowTask, time.Duration(2+rng.IntN(20))*time.Second
	case faultTaskError:
		f.Kind = pvesim.FaultTaskError
	case faultTaskWarn:
		f.Kind = pvesim.FaultTaskWarnings
	case faultLockTimeout:
		f.Kind = pvesim.FaultLockTimeout
	case faultLostTasks:
		h.chaos.mu.Lock()
		h.chaos.reboots = append(h.chaos.reboots, time.Now())
		h.chaos.mu.Unlock()
		h.sim.RebootNode()
		h.chaos.mu.Lock()
		h.chaos.reboots = append(h.chaos.reboots, time.Now())
		h.chaos.mu.Unlock()
		return "node rebooted: running tasks lost, guests stopped"
	case faultGuestLock, faultBackupLock:
		lock := "backup"
		if kind == faultGuestLock {
			lock = []string{"migrate", "snapshot", "suspending"}[rng.IntN(3)]
		}
		if vmid == 0 {
			vmid = h.randomGuest(rng)
		}
		if g, ok := h.sim.Guest(vmid); !ok || g.Lock != "" {
			return ""
		}
		if err := h.sim.SetLock(vmid, lock); err != nil {
			return ""
		}
		h.chaos.mu.Lock()
		h.chaos.locks[vmid] = lock
		h.chaos.mu.Unlock()
		hold := time.Duration(3+rng.IntN(25)) * time.Second
		time.AfterFunc(hold, func() { h.unlock(vmid) })
		return fmt.Sprintf("guest %d locked %q for %s", vmid, lock, hold)
	case faultHidden:
		if vmid == 0 {
			vmid = h.randomGuest(rng)
		}
		h.chaos.mu.Lock()
		h.chaos.hidden[vmid] = true
		h.sim.SetTokenACL(h.chaos.acl())
		h.chaos.mu.Unlock()
		hold := time.Duration(3+rng.IntN(25)) * time.Second
		time.AfterFunc(hold, func() { h.unhide(vmid) })
		return fmt.Sprintf("guest %d hidden from the API token for %s", vmid, hold)
	}
	h.sim.Inject(f)
	return fmt.Sprintf("%s on %s %s (vmid %d)", f.Kind, p.method, p.path, vmid)
}

// randomGuest is one of the host's VMIDs, existing or not.
func (h *host) randomGuest(rng *rand.Rand) int {
	if len(h.vmids) == 0 {
		return 0
	}
	return h.vmids[rng.IntN(len(h.vmids))]
}

func (h *host) unlock(vmid int) {
	h.chaos.mu.Lock()
	defer h.chaos.mu.Unlock()
	lock, ok := h.chaos.locks[vmid]
	if !ok {
		return
	}
	delete(h.chaos.locks, vmid)
	if g, exists := h.sim.Guest(vmid); exists && g.Lock == lock {
		_ = h.sim.SetLock(vmid, "")
	}
}

func (h *host) unhide(vmid int) {
	h.chaos.mu.Lock()
	defer h.chaos.mu.Unlock()
	delete(h.chaos.hidden, vmid)
	h.sim.SetTokenACL(h.chaos.acl())
}

// heal undoes every fault: armed faults, locks the soak set, hidden guests,
// and, playing root on the node's shell, what a task lost in a node reboot
// left: a destroy's config locked "destroyed", a create's locked "create"
// with the disks it had allocated. Only root may clear those; the agent
// refuses to touch them and names the commands. A create still running is
// locked "create" too: PurgeAsRoot leaves a guest whose task runs. It
// returns the guests whose remnants root purged.
func (h *host) heal() (purged []int) {
	h.sim.ClearFaults()
	h.chaos.mu.Lock()
	locks := make([]int, 0, len(h.chaos.locks))
	for vmid := range h.chaos.locks {
		locks = append(locks, vmid)
	}
	h.chaos.hidden = map[int]bool{}
	h.sim.SetTokenACL(nil)
	h.chaos.mu.Unlock()
	for _, vmid := range locks {
		h.unlock(vmid)
	}
	h.link.setCut(false)
	for _, g := range h.sim.Guests() {
		if (g.Lock == "destroyed" || g.Lock == "create") && h.sim.PurgeAsRoot(g.VMID) == nil {
			purged = append(purged, g.VMID)
		}
	}
	return purged
}
