package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.temporal.io/sdk/temporal"
)

// ReadGuestInput names one guest. Kind may be empty: it is then looked up.
type ReadGuestInput struct {
	VMID int    `json:"vmid"`
	Kind string `json:"kind,omitempty"`
}

// Guest is a guest as read from Proxmox, normalised: memory in MiB (the unit
// Proxmox stores), tags sorted, disks by config key. The config values are
// the pending ones (what the guest will run with after its next restart), so
// a change that waits for a reboot is not planned again.
type Guest struct {
	VMID   int    `json:"vmid"`
	Exists bool   `json:"exists"`
	Kind   string `json:"kind,omitempty"`
	Node   string `json:"node,omitempty"`
	// Status is "running" or "stopped".
	Status      string            `json:"status,omitempty"`
	Name        string            `json:"name,omitempty"`
	MemoryMiB   int               `json:"memory_mib,omitempty"`
	Cores       int               `json:"cores,omitempty"`
	Disks       map[string]string `json:"disks,omitempty"`
	Tags        []string          `json:"tags,omitempty"`
	Protection  bool              `json:"protection,omitempty"`
	Lock        string            `json:"lock,omitempty"`
	Description string            `json:"description,omitempty"`
	Template    bool              `json:"template,omitempty"`
	// Digest of the configuration, for SetConfig's optimistic concurrency.
	Digest string `json:"digest,omitempty"`
	// Config holds every config value as a string, for what is not
	// normalised above.
	Config map[string]string `json:"config,omitempty"`
}

// ReadGuest reads one guest's status and configuration. A guest that does
// not exist is reported with Exists false, not as an error.
func (a *Proxmox) ReadGuest(ctx context.Context, in ReadGuestInput) (g Guest, err error) {
	what := "read guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	g, err = a.readGuest(ctx, in.VMID, in.Kind)
	return g, classify(what, err)
}

type statusCurrent struct {
	Status string      `json:"status"`
	Name   string      `json:"name"`
	Lock   string      `json:"lock"`
	MaxMem json.Number `json:"maxmem"`
	Uptime json.Number `json:"uptime"`
	Tags   string      `json:"tags"`
}

func (a *Proxmox) readGuest(ctx context.Context, vmid int, kind string) (Guest, error) {
	st, kind, err := a.readStatus(ctx, vmid, kind)
	if err != nil || st == nil {
		return Guest{VMID: vmid}, err
	}
	g, err := a.readConfig(ctx, vmid, kind)
	if err != nil || !g.Exists {
		return g, err // destroyed between the two reads: absent
	}
	g.Status = st.Status
	if g.Lock == "" {
		g.Lock = st.Lock
	}
	return g, nil
}

// readStatus reads guest vmid's current status, and its kind when kind is
// empty: the status of a VM, then of a container, is both the read and the
// lookup, so knowing the kind saves a call only for a container. A nil
// status is a guest that does not exist on this node: Proxmox said of every
// kind asked that its config does not exist. A refusal (403) is not
// absence: the token cannot see the guest, and the agent fails closed
// (ProxmoxPermission) instead of creating a guest over it or taking its
// destroy as done. Nothing here lists the node: a read of one guest costs
// the same however many guests the node has.
func (a *Proxmox) readStatus(ctx context.Context, vmid int, kind string) (*statusCurrent, string, error) {
	if vmid <= 0 {
		return nil, "", badInput("read guest", "vmid %d is not a VMID", vmid)
	}
	kinds := []string{KindQEMU, KindLXC}
	if kind != "" {
		if !validKind(kind) {
			return nil, "", badInput("read guest", "kind %q is not qemu or lxc", kind)
		}
		kinds = []string{kind}
	}
	for _, k := range kinds {
		var st *statusCurrent
		err := a.Client.Get(ctx, a.guestPath(k, vmid)+"/status/current", &st)
		if err == nil && st == nil {
			return nil, "", malformed("status of %s %d is null", k, vmid)
		}
		if err == nil {
			return st, k, nil
		}
		code, msg, isHTTP := httpStatus(err)
		switch {
		case isHTTP && code == 500 && isMissingGuest(msg):
			continue
		case isHTTP && code == 403 && kind == "":
			return nil, "", temporal.NewNonRetryableApplicationError(fmt.Sprintf(
				"guest %d is not visible to the API token (%d %s): the agent cannot tell whether it exists, and acts on nothing it cannot see; grant the token VM.Audit on /vms (README.md, \"A least-privilege API token\")",
				vmid, code, msg), ErrTypePermission, err)
		}
		return nil, "", err
	}
	return nil, "", nil
}

// readConfig reads guest vmid's configuration (pending values included),
// normalised, without its status; Exists is false when the guest is gone.
func (a *Proxmox) readConfig(ctx context.Context, vmid int, kind string) (Guest, error) {
	var cfg map[string]any
	if err := a.Client.Get(ctx, a.guestPath(kind, vmid)+"/config", &cfg); err != nil {
		if code, msg, ok := httpStatus(err); ok && code == 500 && isMissingGuest(msg) {
			return Guest{VMID: vmid}, nil
		}
		return Guest{}, err
	}
	if cfg == nil {
		return Guest{}, malformed("config of %s %d is null", kind, vmid)
	}
	g := normalise(vmid, kind, cfg)
	g.Node = a.Node
	return g, nil
}

var (
	qemuDiskKey = regexp.MustCompile(`^(ide|sata|scsi|virtio)\d+$|^(efidisk|tpmstate)0$|^unused\d+$`)
	lxcDiskKey  = regexp.MustCompile(`^rootfs$|^mp\d+$|^unused\d+$`)
)

func isDiskKey(kind, key string) bool {
	if kind == KindLXC {
		return lxcDiskKey.MatchString(key)
	}
	return qemuDiskKey.MatchString(key)
}

func configString(v any) string {
	switch t := v.(type) {
	case nil:
		return ""
	case string:
		return t
	case float64:
		if t == math.Trunc(t) {
			return strconv.FormatInt(int64(t), 10)
		}
		return strconv.FormatFloat(t, 'f', -1, 64)
	case bool:
		if t {
			return "1"
		}
		return "0"
	}
	return fmt.Sprint(v)
}

// parseMemoryMiB reads a config memory value: "2048", or the newer
// "current=2048[,...]" property string go-proxmox cannot parse.
func parseMemoryMiB(s string) int {
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimPrefix(strings.TrimSpace(part), "current=")
		if n, err := strconv.Atoi(part); err == nil {
			return n
		}
	}
	return 0
}

// splitTags splits Proxmox's tag list (separated by ';', ',' or spaces),
// lower-cased, sorted and without duplicates.
func splitTags(s string) []string {
	f := strings.FieldsFunc(s, func(r rune) bool { return r == ';' || r == ',' || r == ' ' })
	if len(f) == 0 {
		return nil
	}
	for i := range f {
		f[i] = strings.ToLower(f[i])
	}
	slices.Sort(f)
	return slices.Compact(f)
}

func normalise(vmid int, kind string, raw map[string]any) Guest {
	g := Guest{VMID: vmid, Exists: true, Kind: kind, Config: map[string]string{}}
	for k, v := range raw {
		g.Config[k] = configString(v)
	}
	c := g.Config
	g.Name = c["name"]
	if kind == KindLXC {
		g.Name = c["hostname"]
	}
	g.MemoryMiB = parseMemoryMiB(c["memory"])
	if g.MemoryMiB == 0 {
		g.MemoryMiB = 512 // the schema default of both kinds, which Proxmox does not write
	}
	g.Cores, _ = strconv.Atoi(c["cores"])
	if g.Cores == 0 && kind == KindQEMU {
		g.Cores = 1 // qemu's default
	}
	g.Tags = splitTags(c["tags"])
	g.Protection = c["protection"] == "1"
	g.Lock = c["lock"]
	g.Description = c["description"]
	g.Template = c["template"] == "1"
	g.Digest = c["digest"]
	for k, v := range c {
		if !isDiskKey(kind, k) || v == "" || v == "none" || strings.Contains(v, "media=cdrom") {
			continue
		}
		if g.Disks == nil {
			g.Disks = map[string]string{}
		}
		g.Disks[k] = v
	}
	return g
}

// ListGuestsInput says how to list the node's guests.
type ListGuestsInput struct {
	// Confirm makes each summary say what the guest is now, as ReadGuest
	// would, from a read of the guest when its row changed since the
	// worker last read it (listing.go); without it the summaries are the
	// listing's own figures, as stale and as shaped as pvestatd makes them.
	Confirm bool `json:"confirm,omitempty"`
}

// GuestSummary is one guest of the node. From the listing alone
// (/cluster/resources) Status is pvestatd's, up to a cycle (about 10 s)
// old and "unknown" for a guest it has not seen yet, Name is "VM <id>" or
// "CT<id>" for an unnamed guest and empty when unknown, MemoryMiB is the
// memory the guest runs with (a pending change is not in it), MaxCPU is
// sockets×cores capped at the node's CPUs (LXC: cores, else cpulimit, else
// the node's CPUs), and Cores is 0: the listing does not carry it. A
// confirmed summary has Status, Name, MemoryMiB (pending value included)
// and Cores from the guest itself.
type GuestSummary struct {
	VMID      int      `json:"vmid"`
	Kind      string   `json:"kind"`
	Name      string   `json:"name,omitempty"`
	Status    string   `json:"status,omitempty"`
	MemoryMiB int      `json:"memory_mib,omitempty"`
	Cores     int      `json:"cores,omitempty"`
	MaxCPU    int      `json:"max_cpu,omitempty"`
	Tags      []string `json:"tags,omitempty"`
	Lock      string   `json:"lock,omitempty"`
	Template  bool     `json:"template,omitempty"`
	Confirmed bool     `json:"confirmed,omitempty"`
}

// ListGuestsResult lists every guest of the node, sorted by VMID.
type ListGuestsResult struct {
	Guests []GuestSummary `json:"guests"`
}

// ListGuests lists all guests of the node: with a single API call, or with
// Confirm the reads that confirm it besides (see GuestSummary, listing.go).
func (a *Proxmox) ListGuests(ctx context.Context, in ListGuestsInput) (res ListGuestsResult, err error) {
	what := "list guests of node " + a.Node
	defer recoverPanic(what, &err)
	list, _, err := a.listGuests(ctx, in.Confirm)
	if err != nil {
		return ListGuestsResult{}, classify(what, err)
	}
	if list == nil {
		list = []GuestSummary{}
	}
	return ListGuestsResult{Guests: list}, nil
}

// listGuests lists the node, each guest confirmed when confirm is set (see
// confirmedGuests), and which guests' configuration a confirmed listing
// found changed.
func (a *Proxmox) listGuests(ctx context.Context, confirm bool) ([]GuestSummary, []int, error) {
	list, err := a.clusterGuests(ctx)
	if err != nil || !confirm {
		return list, nil, err
	}
	return a.confirmedGuests(ctx, list)
}

type clusterResource struct {
	Type     string      `json:"type"`
	VMID     json.Number `json:"vmid"`
	Node     string      `json:"node"`
	Name     string      `json:"name"`
	Status   string      `json:"status"`
	MaxMem   json.Number `json:"maxmem"`
	MaxCPU   json.Number `json:"maxcpu"`
	Tags     string      `json:"tags"`
	Lock     string      `json:"lock"`
	Template json.Number `json:"template"`
}

func (a *Proxmox) clusterGuests(ctx context.Context) ([]GuestSummary, error) {
	var rs []clusterResource
	if err := a.Client.Get(ctx, "/cluster/resources?type=vm", &rs); err != nil {
		return nil, err
	}
	var out []GuestSummary
	for _, r := range rs {
		if (r.Type != KindQEMU && r.Type != KindLXC) || r.Node != a.Node {
			continue
		}
		vmid, _ := r.VMID.Int64()
		maxmem, _ := r.MaxMem.Int64()
		cpus, _ := r.MaxCPU.Int64()
		tmpl, _ := r.Template.Int64()
		out = append(out, GuestSummary{
			VMID: int(vmid), Kind: r.Type, Name: r.Name, Status: r.Status,
			MemoryMiB: int(maxmem >> 20), MaxCPU: int(cpus), Tags: splitTags(r.Tags),
			Lock: r.Lock, Template: tmpl == 1,
		})
	}
	slices.SortFunc(out, func(x, y GuestSummary) int { return x.VMID - y.VMID })
	return out, nil
}

// guestKind resolves the kind of an existing guest for a mutating step; a
// missing guest is a non-retryable ProxmoxNotFound.
func (a *Proxmox) guestKind(ctx context.Context, what string, vmid int, kind string) (string, error) {
	if vmid <= 0 {
		return "", badInput(what, "vmid %d is not a VMID", vmid)
	}
	if kind != "" {
		if !validKind(kind) {
			return "", badInput(what, "kind %q is not qemu or lxc", kind)
		}
		return kind, nil
	}
	st, k, err := a.readStatus(ctx, vmid, "")
	if err != nil {
		return "", err
	}
	if st == nil {
		return "", notFound(what, vmid)
	}
	return k, nil
}
