package activities

import (
	"context"
	"fmt"
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
func (a *Proxmox) SetConfig(ctx context.Context, in SetConfigInput) (res TaskResult, err error) {
	what := "set config of guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	res, err = a.setConfig(ctx, what, in)
	err = classify(what, err)
	a.settle(ctx, in.Approval, err)
	return res, err
}

func (a *Proxmox) setConfig(ctx context.Context, what string, in SetConfigInput) (TaskResult, error) {
	if len(in.Set) == 0 && len(in.Delete) == 0 {
		return TaskResult{}, badInput(what, "nothing to change")
	}
	for _, k := range in.Delete {
		if _, both := in.Set[k]; both {
			return TaskResult{}, badInput(what, "key %q is both set and deleted", k)
		}
	}
	for _, k := range []string{"digest", "delete", "vmid", "lock"} {
		if _, bad := in.Set[k]; bad {
			return TaskResult{}, badInput(what, "key %q cannot be set", k)
		}
	}
	kind, err := a.guestKind(ctx, what, in.VMID, in.Kind)
	if err != nil {
		return TaskResult{}, err
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
	if res, ok, err := a.resumeTask(ctx, p, has, "config"); ok {
		return res, err
	}
	g, err := a.readGuest(ctx, in.VMID, kind)
	if err != nil {
		return TaskResult{}, err
	}
	if !g.Exists {
		return TaskResult{}, notFound(what, in.VMID)
	}
	if configApplied(g, in) {
		return TaskResult{AlreadyDone: true}, nil
	}

	gated, err := destructiveDiskChange(g, in)
	if err != nil {
		return TaskResult{}, badInput(what, "%v", err)
	}
	if gated != nil {
		gated.HostID, gated.GuestID = a.HostID, vmidString(in.VMID)
		if _, err := a.authorize(ctx, what, *gated, in.VMID, in.Approval); err != nil {
			return TaskResult{}, err
		}
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
			return TaskResult{}, err
		} else if upid != "" {
			if _, err := a.wait(ctx, "config-other", upid); err != nil {
				a.log().Warn("config task under way failed", "upid", upid, "err", err)
			}
			if g, err = a.readGuest(ctx, in.VMID, kind); err != nil {
				return TaskResult{}, err
			}
			if g.Exists && configApplied(g, in) {
				return TaskResult{UPID: upid, Resumed: true}, nil
			}
		}
	}
	res, err := a.runTask(ctx, "config", method, a.guestPath(kind, in.VMID)+"/config", params)
	if err != nil {
		return TaskResult{}, err
	}
	return res, nil
}

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

// destructiveDiskChange returns the gated action for a change that detaches
// or shrinks a disk of g, nil for none. One approval covers one action, so a
// change touching more than one existing disk that way is refused.
func destructiveDiskChange(g Guest, in SetConfigInput) (*gate.Action, error) {
	var found []gate.Action
	for _, k := range in.Delete {
		if isDiskKey(g.Kind, k) && g.Config[k] != "" {
			found = append(found, gate.Action{Op: gate.OpDiskDetach, Params: map[string]any{"disk": k}})
		}
	}
	for k, v := range in.Set {
		have, ok := g.Config[k]
		if !isDiskKey(g.Kind, k) || !ok || have == "" {
			continue
		}
		want := configString(v)
		if m := allocation.FindStringSubmatch(want); m != nil && strings.HasPrefix(have, m[1]+":") {
			continue // allocation already satisfied
		}
		wantVol, _, _ := strings.Cut(want, ",")
		haveVol, _, _ := strings.Cut(have, ",")
		if wantVol != haveVol {
			found = append(found, gate.Action{Op: gate.OpDiskDetach, Params: map[string]any{"disk": k}})
			continue
		}
		if ws, hs := sizeGiB(want), sizeGiB(have); ws > 0 && hs > 0 && ws < hs {
			found = append(found, gate.Action{Op: gate.OpDiskShrink, Params: map[string]any{"disk": k, "size_gib": ws}})
		}
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return &found[0], nil
	}
	return nil, fmt.Errorf("%d disks would be detached or shrunk: one such change per step, each with its own approval", len(found))
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
