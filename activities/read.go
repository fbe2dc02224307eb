package activities

import (
	"cmp"
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
	if vmid <= 0 {
		return Guest{}, badInput("read guest", "vmid %d is not a VMID", vmid)
	}
	if kind == "" {
		found, k, err := a.lookupKind(ctx, vmid)
		if err != nil {
			return Guest{}, err
		}
		if !found {
			return Guest{VMID: vmid}, nil
		}
		kind = k
	}
	if !validKind(kind) {
		return Guest{}, badInput("read guest", "kind %q is not qemu or lxc", kind)
	}
	base := a.guestPath(kind, vmid)
	var st *statusCurrent
	if err := a.Client.Get(ctx, base+"/status/current", &st); err != nil {
		if code, msg, ok := httpStatus(err); ok && code == 500 && isMissingGuest(msg) {
			return Guest{VMID: vmid}, nil
		}
		return Guest{}, err
	}
	if st == nil {
		return Guest{}, malformed("status of %s %d is null", kind, vmid)
	}
	if st.Status == "" {
		// Proxmox always says running or stopped; taken as stopped, a
		// running guest would be started again, or a stopped one shut down.
		return Guest{}, malformed("status of %s %d has no status", kind, vmid)
	}
	var cfg map[string]any
	if err := a.Client.Get(ctx, base+"/config", &cfg); err != nil {
		if code, msg, ok := httpStatus(err); ok && code == 500 && isMissingGuest(msg) {
			return Guest{VMID: vmid}, nil // destroyed between the two reads
		}
		return Guest{}, err
	}
	if cfg == nil {
		return Guest{}, malformed("config of %s %d is null", kind, vmid)
	}
	g := normalise(vmid, kind, cfg)
	g.Node = a.Node
	g.Status = st.Status
	if g.Lock == "" {
		g.Lock = st.Lock
	}
	return g, nil
}

// lookupKind finds whether vmid is a qemu or lxc guest of this node with one
// /cluster/resources call. That listing silently leaves out guests the API
// token cannot audit, so a VMID it does not name is read directly (probeKind)
// before it counts as absent.
func (a *Proxmox) lookupKind(ctx context.Context, vmid int) (bool, string, error) {
	list, err := a.clusterGuests(ctx)
	if err != nil {
		return false, "", err
	}
	for _, r := range list {
		if r.VMID == vmid {
			return true, r.Kind, nil
		}
	}
	return a.probeKind(ctx, vmid)
}

// probeKind reads vmid's status as a VM and as a container: absent only
// when Proxmox says of both that the config does not exist. A refusal means
// the token cannot see the guest, which is not its absence: the agent then
// fails closed (ProxmoxPermission) instead of creating a guest over it or
// taking its destroy as done.
func (a *Proxmox) probeKind(ctx context.Context, vmid int) (bool, string, error) {
	for _, kind := range []string{KindQEMU, KindLXC} {
		var st *statusCurrent
		err := a.Client.Get(ctx, a.guestPath(kind, vmid)+"/status/current", &st)
		if err == nil {
			return true, kind, nil
		}
		code, msg, ok := httpStatus(err)
		switch {
		case ok && code == 500 && isMissingGuest(msg):
			continue
		case ok && code == 403:
			return false, "", temporal.NewNonRetryableApplicationError(fmt.Sprintf(
				"guest %d is not visible to the API token (%d %s): the agent cannot tell whether it exists, and acts on nothing it cannot see; grant the token VM.Audit on /vms (README.md, \"A least-privilege API token\")",
				vmid, code, msg), ErrTypePermission, err)
		}
		return false, "", err
	}
	return false, "", nil
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
	// Confirm reads every listed guest (confirmedGuests) so that each
	// summary says what the guest is now, as ReadGuest would; without it
	// the summaries are the listing's own figures, as stale and as shaped
	// as pvestatd makes them.
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
// Confirm one read of each guest besides (see GuestSummary).
func (a *Proxmox) ListGuests(ctx context.Context, in ListGuestsInput) (res ListGuestsResult, err error) {
	what := "list guests of node " + a.Node
	defer recoverPanic(what, &err)
	list, err := a.clusterGuests(ctx)
	if err == nil && in.Confirm {
		list, err = a.confirmedGuests(ctx, list)
	}
	if err != nil {
		return ListGuestsResult{}, classify(what, err)
	}
	if list == nil {
		list = []GuestSummary{}
	}
	return ListGuestsResult{Guests: list}, nil
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
	return guestSummaries(rs, a.Node), nil
}

// guestSummaries are the guests of node in a /cluster/resources listing,
// sorted by VMID.
func guestSummaries(rs []clusterResource, node string) []GuestSummary {
	var out []GuestSummary
	for _, r := range rs {
		if (r.Type != KindQEMU && r.Type != KindLXC) || r.Node != node {
			continue
		}
		vmid, err := r.VMID.Int64()
		if err != nil || vmid < 1 || vmid > 999999999 {
			// Not a guest the agent can name; a read of a VMID it does not
			// list asks Proxmox directly (lookupKind).
			continue
		}
		maxmem, _ := r.MaxMem.Int64()
		cpus, _ := r.MaxCPU.Int64()
		tmpl, _ := r.Template.Int64()
		out = append(out, GuestSummary{
			VMID: int(vmid), Kind: r.Type, Name: r.Name, Status: r.Status,
			MemoryMiB: int(maxmem >> 20), MaxCPU: int(cpus), Tags: splitTags(r.Tags),
			Lock: r.Lock, Template: tmpl == 1,
		})
	}
	slices.SortFunc(out, func(x, y GuestSummary) int { return cmp.Compare(x.VMID, y.VMID) })
	return out
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
	found, k, err := a.lookupKind(ctx, vmid)
	if err != nil {
		return "", err
	}
	if !found {
		return "", notFound(what, vmid)
	}
	return k, nil
}
