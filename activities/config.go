package activities

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/felhom/felhom-agent/gate"
)

// SetConfigInput changes a guest's configuration.
type SetConfigInput struct {
	VMID int    `json:"vmid"`
	Kind string `json:"kind,omitempty"`
	// Digest is the config digest the change was planned against (from
	// ReadGuest); Proxmox refuses the change if the config moved since.
	Digest string `json:"digest,omitempty"`
	// Set maps config keys to values: {"memory": 4096, "cores": 2,
	// "tags": "a;b", "scsi1": "local-lvm:16"}.
	Set map[string]any `json:"set,omitempty"`
	// Delete lists config keys to remove.
	Delete []string `json:"delete,omitempty"`
	// Approval is needed when the change detaches a disk (deleting a disk key,
	// or pointing it at another volume: {op: disk.detach, params: {"disk": KEY}})
	// or shrinks one ({op: disk.shrink, params: {"disk": KEY, "size_gib": N}}).
	Approval *gate.Approval `json:"approval,omitempty"`
}

// SetConfig applies a configuration change (QEMU: an asynchronous POST with a
// task; LXC: a synchronous PUT). A change that is already in place is success
// (AlreadyDone), which also makes a retry after a crash idempotent: the digest
// changed with the first attempt, and the second finds its values set. Values
// are compared as Proxmox stores them, pending values included, so a change
// that waits for a reboot counts as applied.
//
// The gate classifies the change: allow-listed keys and new disks are
// benign, every other key needs a signed guest.config; removing a disk is a
// disk.detach, freeing an unusedN disk a volume.wipe; a change to an existing
// disk is refused (see configAction).
func (a *Proxmox) SetConfig(ctx context.Context, in SetConfigInput) (res TaskResult, err error) {
	what := "set config of guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	var at *act
	res, at, err = a.setConfig(ctx, what, in)
	err = classify(what, err)
	a.settle(at, err)
	return res, err
}

func (a *Proxmox) setConfig(ctx context.Context, what string, in SetConfigInput) (TaskResult, *act, error) {
	if len(in.Set) == 0 && len(in.Delete) == 0 {
		return TaskResult{}, nil, badInput(what, "nothing to change")
	}
	for _, k := range in.Delete {
		if _, both := in.Set[k]; both {
			return TaskResult{}, nil, badInput(what, "key %q is both set and deleted", k)
		}
	}
	for _, k := range []string{"digest", "delete", "vmid", "lock"} {
		if _, bad := in.Set[k]; bad {
			return TaskResult{}, nil, badInput(what, "key %q cannot be set", k)
		}
	}
	kind, err := a.guestKind(ctx, what, in.VMID, in.Kind)
	if err != nil {
		return TaskResult{}, nil, err
	}
	if err := checkValues(what, kind, in.Set); err != nil {
		return TaskResult{}, nil, err
	}
	if name, ok := in.Set["name"]; ok && kind == KindLXC {
		// A container's name is its hostname.
		set := make(map[string]any, len(in.Set))
		for k, v := range in.Set {
			set[k] = v
		}
		delete(set, "name")
		set["hostname"] = name
		in.Set = set
	}
	p, has := resumed(ctx)
	if res, ok, err := a.resumeTask(ctx, p, has, "config", in.VMID, taskType(kind, "config")); ok {
		return res, nil, err
	}
	g, err := a.readGuest(ctx, in.VMID, kind)
	if err != nil {
		return TaskResult{}, nil, err
	}
	if !g.Exists {
		return TaskResult{}, nil, notFound(what, in.VMID)
	}
	if err := a.lostTaskRemnant(ctx, what, g); err != nil {
		return TaskResult{}, nil, err
	}
	if configApplied(g, in) {
		return TaskResult{AlreadyDone: true}, nil, nil
	}

	action, err := configAction(g, in)
	if err != nil {
		return TaskResult{}, nil, badInput(what, "%v", err)
	}
	action.HostID, action.GuestID = a.HostID, vmidString(in.VMID)
	if g.Protection && diskOp[action.Op] {
		// Proxmox refuses it; refused here, before the gate spends the
		// approval.
		return TaskResult{}, nil, protected(what, in.VMID)
	}
	ctx, at, err := a.authorize(ctx, what, action, g, in.Approval, "")
	if err != nil {
		return TaskResult{}, nil, err
	}
	if at != nil && at.done {
		return TaskResult{AlreadyDone: true}, at, nil
	}

	params := map[string]any{}
	for k, v := range in.Set {
		params[k] = configString(v)
	}
	if len(in.Delete) > 0 {
		params["delete"] = strings.Join(in.Delete, ",")
	}
	if in.Digest != "" {
		params["digest"] = in.Digest
	}
	method := "POST"
	if kind == KindLXC {
		method = "PUT"
	}
	if kind == KindQEMU {
		// A config task of a previous attempt may still be running: let it
		// finish and look again, rather than sending the change twice. (A
		// config task of somebody else is only waited for, never taken for
		// ours.)
		if upid, err := a.inFlight(ctx, in.VMID, taskType(kind, "config"), false); err != nil {
			return TaskResult{}, at, err
		} else if upid != "" {
			if _, err := a.wait(ctx, "config-other", upid); err != nil {
				a.log().Warn("config task under way failed", "upid", upid, "err", err)
			}
			if g, err = a.readGuest(ctx, in.VMID, kind); err != nil {
				return TaskResult{}, at, err
			}
			if g.Exists && configApplied(g, in) {
				return TaskResult{UPID: upid, Resumed: true}, at, nil
			}
		}
	}
	res, err := a.runTask(ctx, "config", method, a.guestPath(kind, in.VMID)+"/config", params)
	if err != nil {
		return TaskResult{}, at, err
	}
	return res, at, nil
}

// diskOp are the gated ops of a config change that remove or shrink a
// disk, which Proxmox refuses on a protected guest.
var diskOp = map[string]bool{gate.OpDiskDetach: true, gate.OpVolumeWipe: true, gate.OpDiskShrink: true}

var allocation = regexp.MustCompile(`^([^:,]+):(\d+(?:\.\d+)?)(,.*)?$`)

// configApplied reports whether every change of in is already in g.
func configApplied(g Guest, in SetConfigInput) bool {
	for _, k := range in.Delete {
		if _, ok := g.Config[k]; ok {
			return false
		}
	}
	for k, v := range in.Set {
		want, have := configString(v), g.Config[k]
		_, present := g.Config[k]
		switch {
		case !present:
			return false
		case want == have:
		case k == "memory":
			if parseMemoryMiB(want) != parseMemoryMiB(have) {
				return false
			}
		case k == "tags":
			if !slices.Equal(splitTags(want), splitTags(have)) {
				return false
			}
		case isDiskKey(g.Kind, k):
			// "local-lvm:16" allocates a disk: done if the key holds a volume
			// on that storage.
			m := allocation.FindStringSubmatch(want)
			if m == nil || !strings.HasPrefix(have, m[1]+":") {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// configAction is the gated action of a change to g: the action exactly as
// it will be done, for the gate to classify and an approval to bind to.
//
//   - deleting a disk key detaches the disk: disk.detach {"disk": KEY}
//     (Proxmox keeps the volume as unusedN);
//   - deleting an unusedN key frees its volume for good:
//     volume.wipe {"volume": VOLID};
//   - setting an existing disk key to a smaller size of the same volume
//     shrinks it: disk.shrink {"disk": KEY, "size_gib": N}; any other change
//     of an existing disk key (another volume, an allocation that would
//     replace it, other options) is refused: Proxmox would detach the disk
//     it replaces;
//   - everything else is one guest.config whose params are the keys set as
//     given and, when keys are deleted, "delete": "k1,k2". The gate allows
//     it unsigned only for allow-listed keys and new disk allocations (a
//     disk key appears here only when g has no such disk).
//
// One approval covers one action, so a change that would need more than one
// (a disk and other keys, or two disks) is refused: one step each.
func configAction(g Guest, in SetConfigInput) (gate.Action, error) {
	var disk []gate.Action
	rest := map[string]any{}
	var deletes []string
	for _, k := range in.Delete {
		have := g.Config[k]
		switch {
		case !isDiskKey(g.Kind, k) || have == "":
			deletes = append(deletes, k)
		case strings.HasPrefix(k, "unused"):
			vol, _, _ := strings.Cut(have, ",")
			disk = append(disk, gate.Action{Op: gate.OpVolumeWipe, Params: map[string]any{"volume": vol}})
		default:
			disk = append(disk, gate.Action{Op: gate.OpDiskDetach, Params: map[string]any{"disk": k}})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(in.Set)) {
		v := in.Set[k]
		have, exists := g.Config[k]
		if !isDiskKey(g.Kind, k) || !exists || have == "" {
			rest[k] = v
			continue
		}
		want := configString(v)
		wantVol, _, _ := strings.Cut(want, ",")
		haveVol, _, _ := strings.Cut(have, ",")
		if ws, hs := sizeGiB(want), sizeGiB(have); wantVol == haveVol && ws > 0 && hs > 0 && ws < hs {
			disk = append(disk, gate.Action{Op: gate.OpDiskShrink, Params: map[string]any{"disk": k, "size_gib": ws}})
			continue
		}
		return gate.Action{}, fmt.Errorf("%s: %q would replace the disk %q it holds; detach it first (disk.detach), then add a new disk", k, want, have)
	}
	if len(deletes) > 0 {
		rest["delete"] = strings.Join(deletes, ",")
	}
	switch {
	case len(disk) == 0:
		return gate.Action{Op: gate.OpGuestConfig, Params: rest}, nil
	case len(disk) == 1 && len(rest) == 0:
		return disk[0], nil
	}
	return gate.Action{}, fmt.Errorf("the change detaches, frees or shrinks %d disks and sets %d other keys: one such change per step, each with its own approval", len(disk), len(rest))
}

// sizeGiB reads the size=N[KMGT] option of a disk value, in GiB (rounded
// down), 0 when absent.
func sizeGiB(v string) int {
	for _, opt := range strings.Split(v, ",") {
		s, ok := strings.CutPrefix(opt, "size=")
		if !ok || s == "" {
			continue
		}
		mult := 1.0 / (1 << 30)
		switch s[len(s)-1] {
		case 'K':
			mult, s = 1.0/(1<<20), s[:len(s)-1]
		case 'M':
			mult, s = 1.0/(1<<10), s[:len(s)-1]
		case 'G':
			mult, s = 1, s[:len(s)-1]
		case 'T':
			mult, s = 1<<10, s[:len(s)-1]
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0
		}
		return int(f * mult)
	}
	return 0
}
