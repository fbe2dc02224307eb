package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/activities/ledger"
)

// CreateVMInput creates a QEMU VM with a chosen VMID.
type CreateVMInput struct {
	VMID      int      `json:"vmid"`
	Name      string   `json:"name"`
	MemoryMiB int      `json:"memory_mib"`
	Cores     int      `json:"cores"`
	Tags      []string `json:"tags,omitempty"`
	// Disks by config key, in Proxmox's allocation syntax: {"scsi0": "local-lvm:8"}.
	Disks map[string]string `json:"disks,omitempty"`
	// Options are further config keys passed as they are (net0, ostype, ...).
	Options map[string]string `json:"options,omitempty"`
	// Scratch records the guest as agent-created scratch in the host's ledger:
	// destroying it later is benign.
	Scratch bool `json:"scratch,omitempty"`
	// ExpectAbsent: see workflows.CreateGuestInput.
	ExpectAbsent bool `json:"expect_absent,omitempty"`
}

// CreateContainerInput creates an LXC container with a chosen VMID.
type CreateContainerInput struct {
	VMID       int    `json:"vmid"`
	Hostname   string `json:"hostname"`
	OSTemplate string `json:"ostemplate"`
	MemoryMiB  int    `json:"memory_mib"`
	Cores      int    `json:"cores"`
	// RootFS in allocation syntax, e.g. "local-lvm:8".
	RootFS string   `json:"rootfs"`
	Tags   []string `json:"tags,omitempty"`
	// Mounts by config key: {"mp0": "local-lvm:16,mp=/data"}.
	Mounts  map[string]string `json:"mounts,omitempty"`
	Options map[string]string `json:"options,omitempty"`
	Scratch bool              `json:"scratch,omitempty"`
	// ExpectAbsent: see workflows.CreateGuestInput.
	ExpectAbsent bool `json:"expect_absent,omitempty"`
}

// CreateResult is the outcome of a create.
type CreateResult struct {
	TaskResult
	VMID int    `json:"vmid"`
	Kind string `json:"kind"`
	// Guest is the new guest as read to record it in the ledger (status
	// left empty), when this attempt read it.
	Guest *Guest `json:"guest,omitempty"`
}

// CreateVM creates a QEMU VM and records in the host's ledger that this
// workflow run created it. See create for the crash reasoning.
func (a *Proxmox) CreateVM(ctx context.Context, in CreateVMInput) (res CreateResult, err error) {
	what := "create VM " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	if in.Name == "" || in.MemoryMiB <= 0 {
		return CreateResult{}, badInput(what, "name and memory_mib are required")
	}
	params := map[string]any{"vmid": in.VMID, "name": in.Name, "memory": in.MemoryMiB}
	if in.Cores > 0 {
		params["cores"] = in.Cores
	}
	if len(in.Tags) > 0 {
		params["tags"] = strings.Join(in.Tags, ";")
	}
	for k, v := range in.Disks {
		if !isDiskKey(KindQEMU, k) {
			return CreateResult{}, badInput(what, "%q is not a VM disk key", k)
		}
		params[k] = v
	}
	for k, v := range in.Options {
		if _, dup := params[k]; dup {
			return CreateResult{}, badInput(what, "option %q is set twice", k)
		}
		params[k] = v
	}
	res, err = a.create(ctx, what, KindQEMU, in.VMID, in.Name, in.Scratch, in.ExpectAbsent, params)
	return res, classify(what, err)
}

// CreateContainer creates an LXC container and records in the host's ledger
// that this workflow run created it.
func (a *Proxmox) CreateContainer(ctx context.Context, in CreateContainerInput) (res CreateResult, err error) {
	what := "create container " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	if in.Hostname == "" || in.OSTemplate == "" || in.RootFS == "" || in.MemoryMiB <= 0 {
		return CreateResult{}, badInput(what, "hostname, ostemplate, rootfs and memory_mib are required")
	}
	params := map[string]any{"vmid": in.VMID, "hostname": in.Hostname, "ostemplate": in.OSTemplate,
		"memory": in.MemoryMiB, "rootfs": in.RootFS}
	if in.Cores > 0 {
		params["cores"] = in.Cores
	}
	if len(in.Tags) > 0 {
		params["tags"] = strings.Join(in.Tags, ";")
	}
	for k, v := range in.Mounts {
		if !isDiskKey(KindLXC, k) || k == "rootfs" {
			return CreateResult{}, badInput(what, "%q is not a container mount point key", k)
		}
		params[k] = v
	}
	for k, v := range in.Options {
		if _, dup := params[k]; dup {
			return CreateResult{}, badInput(what, "option %q is set twice", k)
		}
		params[k] = v
	}
	res, err = a.create(ctx, what, KindLXC, in.VMID, in.Hostname, in.Scratch, in.ExpectAbsent, params)
	return res, classify(what, err)
}

// create runs a create idempotently and keeps the ledger in step with it.
//
// The create writes a fresh random instance marker into the guest's
// description and records it in the ledger (BeginCreate, fsync'd) before the
// POST; the record is confirmed, with the SMBIOS uuid and volumes Proxmox
// gave the guest, once a guest carrying that marker exists. Whatever a retry
// receives through Temporal (heartbeat details, run ids) is a claim; it
// decides from the ledger and from the guest Proxmox shows:
//
//  1. no guest at the VMID: POST, reusing the marker of a pending record of
//     the same kind (a crashed attempt's) or a new one.
//  2. a guest carrying the pending record's marker, of the asked kind and
//     name: the crashed attempt created it. While Proxmox holds its "create"
//     lock and a create task for it runs: wait (at most CreateWait), then
//     look again (guest gone = the create failed: POST again). Confirm. A
//     guest locked "create" that no task holds was left by a create its
//     node lost, without the marker (pve writes it with the rest of the
//     config at the end): ProxmoxInterrupted, naming the root commands that
//     remove it; the pending record stays, and the create after that
//     clean-up reuses its marker.
//  3. any other guest: the VMID is taken (ProxmoxVMIDTaken); the ledger
//     entry, if pending, is dropped, and nothing about the guest is claimed.
//
// A recorded UPID is resumed only if it names this node's create task for
// this VMID, started after the pending record was written; whatever it
// reports, the guest itself decides as above. A pending record never counts
// as agent provenance for the gate.
func (a *Proxmox) create(ctx context.Context, what, kind string, vmid int, name string, scratch, expectAbsent bool, params map[string]any) (CreateResult, error) {
	if vmid < 100 {
		return CreateResult{}, badInput(what, "vmid %d is not a VMID (100 or more)", vmid)
	}
	if a.Ledger == nil {
		return CreateResult{}, temporal.NewNonRetryableApplicationError(what+": no provenance ledger configured", ErrTypeLedger, nil)
	}
	for _, k := range []string{"description", "smbios1", "vmgenid", "meta", "lock", "protection", "template", "unique", "force", "archive", "restore"} {
		if _, ok := params[k]; ok {
			return CreateResult{}, badInput(what, "option %q is the agent's or Proxmox's own and cannot be set by a create", k)
		}
	}
	for k, v := range params {
		if isDiskKey(kind, k) && (strings.HasPrefix(k, "unused") || !newAllocation(configString(v))) {
			return CreateResult{}, badInput(what, "%s: %q is not a new disk (STORAGE:SIZE_GIB): a create never attaches or imports an existing volume", k, configString(v))
		}
	}
	if err := checkValues(what, kind, params); err != nil {
		return CreateResult{}, err
	}
	out := func(r TaskResult) CreateResult { return CreateResult{TaskResult: r, VMID: vmid, Kind: kind} }

	entry, recorded := a.Ledger.Entry(vmid)
	pending := recorded && entry.State == ledger.StatePending && entry.Kind == kind
	p, has := resumed(ctx)
	var resumedRes *TaskResult
	if pending {
		res, ok, err := a.resumeTask(ctx, p, has, "create", vmid, taskType(kind, "create"))
		if ok && err != nil {
			var te *TaskError
			if !errors.As(err, &te) {
				return CreateResult{}, err
			}
			// The create task failed: the guest state below decides.
		} else if ok {
			resumedRes = &res
		}
	}

	// Without a ledger record for the VMID no earlier attempt posted (the
	// record is fsync'd before the POST), and whatever guest is there is not
	// the agent's: one call asks the cluster whether the VMID is free
	// (vmidFree), and the guest is read only when it is not. With a record
	// the guest decides, as below.
	var (
		g   Guest
		err error
	)
	// The workflow's word that its read found no guest (expectAbsent) is
	// taken on a first attempt only, for that one call: Proxmox's refusal
	// still names a guest that is there.
	free := !recorded && expectAbsent && activity.GetInfo(ctx).Attempt <= 1
	if !recorded && !free {
		if free, err = a.vmidFree(ctx, vmid); err != nil {
			return CreateResult{}, err
		}
	}
	if !free {
		if g, err = a.readGuest(ctx, vmid, ""); err != nil {
			return CreateResult{}, err
		}
	}
	if g.Exists && pending && g.Kind == kind && g.Lock == "create" {
		// A create under way shows its marker only once its task is done;
		// one whose task was lost never will (see waitCreateLock). The
		// pending record stays either way: the guest may be this create's.
		if g, err = a.waitCreateLock(ctx, what, vmid, kind); err != nil {
			return CreateResult{}, err
		}
	}
	if g.Exists {
		if !pending || g.Kind != kind || markerOf(g.Description) != entry.Instance {
			if pending {
				a.abort(vmid, entry.Instance)
			}
			if recorded && entry.State == ledger.StateCreated && g.Kind == kind && markerOf(g.Description) == entry.Instance {
				return out(TaskResult{AlreadyDone: true}), nil // confirmed, completion not reported
			}
			return CreateResult{}, a.taken(what, g)
		}
		if g.Name != name {
			a.abort(vmid, entry.Instance)
			return CreateResult{}, a.taken(what, g)
		}
		if err := a.confirm(what, g, entry.Instance); err != nil {
			return CreateResult{}, err
		}
		if resumedRes != nil {
			return out(*resumedRes), nil
		}
		return out(TaskResult{AlreadyDone: true}), nil
	}
	// No guest: the create never reached Proxmox, or its task failed and
	// Proxmox removed the guest. Create (again).

	marker := entry.Instance
	if !pending {
		if marker, err = newInstanceMarker(); err != nil {
			return CreateResult{}, temporal.NewApplicationErrorWithCause(what+": "+err.Error(), ErrTypeLedger, err)
		}
		if err := a.Ledger.BeginCreate(ledger.Entry{VMID: vmid, Kind: kind, Instance: marker,
			Workflow: activity.GetInfo(ctx).WorkflowExecution.ID, Scratch: scratch}); err != nil {
			return CreateResult{}, temporal.NewApplicationErrorWithCause(what+": record in provenance ledger: "+err.Error(), ErrTypeLedger, err)
		}
	}
	post := maps.Clone(params)
	post["description"] = markerLine + marker
	res, err := a.runTask(ctx, "create", "POST", fmt.Sprintf("/nodes/%s/%s", url.PathEscape(a.Node), kind), post)
	if err != nil && vmidInUse(err) {
		return CreateResult{}, a.takenByRefusal(ctx, what, vmid, marker, err)
	}
	if err != nil {
		return CreateResult{}, a.createFailed(ctx, what, vmid, kind, marker, err)
	}
	// The marker, the SMBIOS uuid and the volumes are in the configuration;
	// the status adds nothing to what the ledger records.
	if g, err = a.readConfig(ctx, vmid, kind); err != nil {
		return CreateResult{}, err
	}
	if !g.Exists || markerOf(g.Description) != marker {
		return CreateResult{}, temporal.NewApplicationError(
			fmt.Sprintf("%s: the create task succeeded but the guest does not carry its instance marker yet", what), ErrTypeUnavailable)
	}
	r := out(res)
	r.Guest = &g
	return r, a.confirm(what, g, marker)
}

// vmidFree asks the cluster whether no guest of any kind, on any node, has
// vmid (/cluster/nextid?vmid=N: N when free, 400 "VM N already exists"
// otherwise). The cluster's VM list names every guest, also those the
// token cannot audit, so "free" is a fact; any other answer is "not known
// free", and the caller reads the guest.
func (a *Proxmox) vmidFree(ctx context.Context, vmid int) (bool, error) {
	var id json.Number
	err := a.Client.Get(ctx, "/cluster/nextid?vmid="+strconv.Itoa(vmid), &id)
	if err == nil {
		return id.String() == strconv.Itoa(vmid), nil
	}
	if code, _, ok := httpStatus(err); ok && code == 400 {
		return false, nil
	}
	return false, err
}

// vmidInUse reports Proxmox's refusal to create a guest at a VMID that a
// guest of either kind has ("VM 101 already exists on node 'pve1'"), which
// it answers before any task starts.
func vmidInUse(err error) bool {
	code, msg, ok := httpStatus(err)
	return ok && code == 500 && contains(msg, "already exists")
}

// takenByRefusal handles Proxmox's refusal to create over a guest: the
// pending record just written is dropped (the POST did nothing) and the
// guest there is named, as the read before a POST would have.
func (a *Proxmox) takenByRefusal(ctx context.Context, what string, vmid int, marker string, refusal error) error {
	a.abort(vmid, marker)
	g, err := a.readGuest(ctx, vmid, "")
	if err != nil {
		return err
	}
	if !g.Exists {
		// Gone since the refusal: the next attempt creates it.
		return classify(what, refusal)
	}
	return a.taken(what, g)
}

func (a *Proxmox) taken(what string, g Guest) error {
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("%s: VMID %d is already used by %s %q, which the agent did not create as asked", what, g.VMID, g.Kind, g.Name),
		ErrTypeVMIDTaken, nil)
}

func (a *Proxmox) abort(vmid int, marker string) {
	if err := a.Ledger.AbortCreate(vmid, marker); err != nil {
		a.log().Error("ledger: could not drop pending create", "vmid", vmid, "err", err)
	}
}

// confirm records the create of the live guest g, which carries marker.
func (a *Proxmox) confirm(what string, g Guest, marker string) error {
	smbios := ""
	if g.Kind == KindQEMU {
		smbios = smbiosUUID(g.Config)
	}
	if err := a.Ledger.ConfirmCreate(g.VMID, marker, smbios, volumesOf(g)); err != nil {
		return temporal.NewApplicationErrorWithCause(what+": confirm in provenance ledger: "+err.Error(), ErrTypeLedger, err)
	}
	return nil
}

// createFailed drops the pending record when the create certainly did not
// happen: Proxmox refused the request, or its task failed and Proxmox
// removed the guest. A failed task whose guest is still there (a lost task
// leaves it locked "create"), or an ambiguous error (network, 5xx, a 596
// after the fact), keeps the record for the retry to resolve from the
// guest's state.
func (a *Proxmox) createFailed(ctx context.Context, what string, vmid int, kind, marker string, err error) error {
	c := classify(what, err)
	var te *TaskError
	switch {
	case errors.As(err, &te):
		if g, rerr := a.readGuest(ctx, vmid, kind); rerr == nil && !g.Exists {
			a.abort(vmid, marker)
		}
	case isNonRetryable(c):
		a.abort(vmid, marker)
	}
	return c
}

// newAllocation reports whether a disk value asks Proxmox for a new, empty
// volume ("STORAGE:SIZE_GIB[,options]") rather than naming an existing one
// or importing one.
func newAllocation(v string) bool {
	vol, opts, _ := strings.Cut(v, ",")
	m := allocation.FindStringSubmatch(vol)
	if m == nil {
		return false
	}
	for _, o := range strings.Split(opts, ",") {
		k, _, _ := strings.Cut(o, "=")
		if k == "import-from" || k == "file" || k == "volume" {
			return false
		}
	}
	return true
}

// DefaultCreateWait bounds how long a create waits for a create task of
// its guest that is still under way (Proxmox.CreateWait).
const DefaultCreateWait = time.Hour

// waitCreateLock waits while the guest carries Proxmox's "create" lock and
// a create task for it runs, for at most CreateWait, and returns the guest
// as it is then; Exists false means the create failed and Proxmox removed
// it. A guest locked "create" that no task holds was left by a create its
// node lost: pve writes the config, marker included, only at the end of
// the task, so nothing on the guest says whose it is and the API cannot
// remove it (lostTaskRemnant); it is never taken for the agent's.
func (a *Proxmox) waitCreateLock(ctx context.Context, what string, vmid int, kind string) (Guest, error) {
	interval := a.PollInterval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	wait := a.CreateWait
	if wait <= 0 {
		wait = DefaultCreateWait
	}
	deadline := time.Now().Add(wait)
	for {
		g, err := a.readGuest(ctx, vmid, kind)
		if err != nil || !g.Exists || g.Lock != "create" {
			return g, err
		}
		upid, err := a.lockHolder(ctx, g)
		if err != nil {
			return Guest{}, err
		}
		if upid == "" {
			if err := a.lostTaskRemnant(ctx, what, g); err != nil {
				return Guest{}, err
			}
			continue // a task took the lock meanwhile, or the guest changed
		}
		if !time.Now().Before(deadline) {
			return Guest{}, temporal.NewApplicationError(
				fmt.Sprintf("%s: guest %d is still being created after %s: its create task %s still runs", what, vmid, wait, upid), ErrTypeLocked)
		}
		recordProgress(ctx, Progress{Phase: "create-lock"})
		select {
		case <-ctx.Done():
			return Guest{}, ctx.Err()
		case <-time.After(interval):
		}
	}
}
