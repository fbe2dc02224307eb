package desired

import (
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/felhom/felhom-agent/gate"
)

// Op names a plan uses: the gate's, which its classifier and the signed
// op blobs speak.
const (
	OpCreate   = gate.OpGuestCreate
	OpStart    = gate.OpGuestStart
	OpShutdown = gate.OpGuestShutdown
	OpConfig   = gate.OpGuestConfig
	OpDestroy  = gate.OpGuestDestroy
	OpDetach   = gate.OpDiskDetach
	OpShrink   = gate.OpDiskShrink
)

// Observed is a guest as read from Proxmox, normalised like a Spec.
type Observed struct {
	Exists     bool              `json:"exists"`
	Kind       Kind              `json:"kind,omitempty"`
	Status     string            `json:"status,omitempty"` // running | stopped
	Name       string            `json:"name,omitempty"`
	MemoryMiB  int               `json:"memory_mib,omitempty"`
	Cores      int               `json:"cores,omitempty"`
	Disks      map[string]string `json:"disks,omitempty"`
	Tags       []string          `json:"tags,omitempty"`
	Protection bool              `json:"protection,omitempty"`
	Lock       string            `json:"lock,omitempty"`
}

// Action is one step of a plan. Op, Host, Guest and Params are exactly what
// a signed op must name to authorise the step when it is destructive.
type Action struct {
	Op     string         `json:"op"`
	Host   string         `json:"host"`
	Guest  string         `json:"guest"`
	Params map[string]any `json:"params"`
	// Destructive is the planner's label, for display and for deciding to
	// wait for a signature. The executing activity classifies again on the
	// host, from the host's ledger; this label is never trusted there.
	Destructive bool   `json:"destructive"`
	Reason      string `json:"reason"`
}

// Plan is the ordered list of actions that brings a guest from observed to
// desired, and what the planner will not do by itself.
type Plan struct {
	Actions []Action `json:"actions"`
	// Notes are differences the plan does not act on, each in a sentence.
	Notes []string `json:"notes,omitempty"`
}

// Empty reports whether there is nothing to do.
func (p Plan) Empty() bool { return len(p.Actions) == 0 }

// Classifier labels an op; the workflow passes the gate's classifier with
// the provenance the host reported.
type Classifier func(op string) (destructive bool)

// Make plans spec (normalised) against obs. Config changes come before a
// start, so a guest boots with its new configuration; a destroy is the only
// action for an absent guest: the executor shuts the guest down itself, after
// the gate allowed it, so that a refused destroy never stops a guest. A disk
// larger than the spec is a note: Proxmox cannot shrink a disk through its
// API, so no executor could perform the step, and holding it for a signature
// would keep every later step from running.
func Make(spec Spec, obs Observed, destructive Classifier) Plan {
	return makePlan(spec, obs, destructive, false)
}

// MakeWithShrink is Make as it planned before a larger disk became a note:
// it plans a disk.shrink action. Only guest workflow runs recorded then call
// it, so that they replay the plans they made.
func MakeWithShrink(spec Spec, obs Observed, destructive Classifier) Plan {
	return makePlan(spec, obs, destructive, true)
}

func makePlan(spec Spec, obs Observed, destructive Classifier, shrinkAction bool) Plan {
	var p Plan
	guest := strconv.Itoa(spec.VMID)
	add := func(op, reason string, params map[string]any) {
		if params == nil {
			params = map[string]any{}
		}
		p.Actions = append(p.Actions, Action{
			Op: op, Host: spec.Host, Guest: guest, Params: params,
			Destructive: destructive(op), Reason: reason,
		})
	}

	switch {
	case spec.State == Absent && !obs.Exists:
		return p
	case spec.State == Absent:
		add(OpDestroy, "desired state is absent", map[string]any{"kind": string(obs.Kind)})
		return p
	case !obs.Exists:
		add(OpCreate, "guest does not exist", createParams(spec))
		if spec.State == Running {
			add(OpStart, "desired state is running", nil)
		}
		return p
	case obs.Kind != spec.Kind:
		p.Notes = append(p.Notes, "guest "+guest+" is a "+string(obs.Kind)+", the spec asks for a "+string(spec.Kind)+": nothing is changed; destroy it explicitly to replace it")
		return p
	}

	for _, key := range sortedKeys(obs.Disks) {
		if _, ok := spec.Disks[key]; !ok && len(spec.Disks) > 0 {
			add(OpDetach, "disk "+key+" is not in the spec", map[string]any{"disk": key})
		}
	}
	changes := map[string]any{}
	for _, key := range sortedKeys(spec.Disks) {
		want, _ := ParseVolume(spec.Disks[key])
		have, ok := obs.Disks[key]
		if !ok {
			changes[key] = want.Storage + ":" + strconv.Itoa(want.SizeGiB)
			continue
		}
		got, err := ParseVolume(have)
		switch {
		case err != nil:
			p.Notes = append(p.Notes, "disk "+key+": cannot read its size from "+strconv.Quote(have))
		case want.SizeGiB < got.SizeGiB && shrinkAction:
			add(OpShrink, "disk "+key+" is larger than the spec", map[string]any{"disk": key, "size_gib": want.SizeGiB})
		case want.SizeGiB < got.SizeGiB:
			p.Notes = append(p.Notes, fmt.Sprintf("disk %s is %d GiB, larger than the spec's %d GiB: Proxmox cannot shrink a disk; "+
				"replace it (add a new disk, move the data, detach the old one) or raise the spec", key, got.SizeGiB, want.SizeGiB))
		case want.SizeGiB > got.SizeGiB:
			p.Notes = append(p.Notes, "disk "+key+" is smaller than the spec: growing disks is not automated yet")
		}
	}
	if spec.Name != "" && spec.Name != obs.Name {
		changes["name"] = spec.Name
	}
	if spec.MemoryMiB != obs.MemoryMiB {
		changes["memory"] = spec.MemoryMiB
	}
	if spec.Cores != obs.Cores {
		changes["cores"] = spec.Cores
	}
	if !slices.Equal(spec.Tags, normaliseTags(obs.Tags)) {
		changes["tags"] = joinTags(spec.Tags)
	}
	if len(changes) > 0 {
		add(OpConfig, "configuration differs", changes)
	}

	switch {
	case spec.State == Running && obs.Status != "running":
		add(OpStart, "desired state is running", nil)
	case spec.State == Stopped && obs.Status == "running":
		add(OpShutdown, "desired state is stopped", map[string]any{"timeout_seconds": 120, "force_stop": true})
	}
	return p
}

func createParams(s Spec) map[string]any {
	params := map[string]any{
		"kind":   string(s.Kind),
		"memory": s.MemoryMiB,
		"cores":  s.Cores,
	}
	if s.Name != "" {
		params["name"] = s.Name
	}
	if len(s.Tags) > 0 {
		params["tags"] = joinTags(s.Tags)
	}
	if len(s.Disks) > 0 {
		disks := map[string]any{}
		for k, v := range s.Disks {
			disks[k] = v
		}
		params["disks"] = disks
	}
	if len(s.Options) > 0 {
		opts := map[string]any{}
		for k, v := range s.Options {
			opts[k] = v
		}
		params["options"] = opts
	}
	if s.OSTemplate != "" {
		params["ostemplate"] = s.OSTemplate
	}
	if s.Scratch {
		params["scratch"] = true
	}
	return params
}

func joinTags(tags []string) string {
	out := ""
	for i, t := range tags {
		if i > 0 {
			out += ";"
		}
		out += t
	}
	return out
}

func normaliseTags(tags []string) []string {
	if len(tags) == 0 {
		return nil
	}
	out := slices.Clone(tags)
	slices.Sort(out)
	return slices.Compact(out)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
