package activities

import (
	"context"
	"errors"
	"fmt"
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
}

// CreateResult is the outcome of a create.
type CreateResult struct {
	TaskResult
	VMID int    `json:"vmid"`
	Kind string `json:"kind"`
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
	res, err = a.create(ctx, what, KindQEMU, in.VMID, in.Name, in.Scratch, params)
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
	res, err = a.create(ctx, what, KindLXC, in.VMID, in.Hostname, in.Scratch, params)
	return res, classify(what, err)
}

// create runs a create idempotently and keeps the ledger in step with it.
//
// The ledger gets a pending record (BeginCreate, fsync'd) before the POST and
// is confirmed after the create task succeeded. A crash at any point leaves
// one of these states, which a retry (same workflow run) resolves like this:
//
//  1. nothing recorded, nothing sent: the VMID is free and there is no
//     pending record: begin + POST as usual.
//  2. pending recorded, POST not sent (or refused): the guest does not exist:
//     POST now (the pending record stays valid).
//  3. POST accepted, UPID not yet heartbeated: the guest exists and the
//     ledger holds this run's pending record: the guest is ours. Proxmox
//     holds the "create" lock while the task runs and removes the guest when
//     the task fails, so wait until the lock is gone: guest still there =
//     created (confirm), guest gone = the create failed (POST again).
//  4. UPID heartbeated: resume waiting on that task, then confirm.
//  5. confirmed, completion not reported: the ledger says this run created
//     it and the guest exists: done.
//
// A pending record never counts as agent provenance for the gate, so a crash
// in state 2 followed by somebody else creating the same VMID cannot make
// their guest look like ours to anything but this create's own retry; that
// retry additionally requires the guest's kind and name to be the ones it
// asked for. A VMID that exists without this run's record is never claimed:
// the create fails with ProxmoxVMIDTaken.
func (a *Proxmox) create(ctx context.Context, what, kind string, vmid int, name string, scratch bool, params map[string]any) (CreateResult, error) {
	if vmid < 100 {
		return CreateResult{}, badInput(what, "vmid %d is not a VMID (100 or more)", vmid)
	}
	if a.Ledger == nil {
		return CreateResult{}, temporal.NewNonRetryableApplicationError(what+": no provenance ledger configured", ErrTypeLedger, nil)
	}
	run := runID(ctx)
	out := func(r TaskResult) CreateResult { return CreateResult{TaskResult: r, VMID: vmid, Kind: kind} }

	p, has := resumed(ctx)
	if res, ok, err := a.resumeTask(ctx, p, has, "create"); ok {
		if err != nil {
			return CreateResult{}, a.createFailed(what, vmid, run, err)
		}
		return out(res), a.confirm(what, vmid, run)
	}

	entry, recorded := a.Ledger.Entry(vmid)
	ours := recorded && entry.Run == run
	g, err := a.readGuest(ctx, vmid, "")
	if err != nil {
		return CreateResult{}, err
	}
	if g.Exists {
		taken := func(g Guest) error {
			return temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("%s: VMID %d is already used by %s %q, which this workflow run did not create", what, vmid, g.Kind, g.Name),
				ErrTypeVMIDTaken, nil)
		}
		if !ours || g.Kind != kind {
			return CreateResult{}, taken(g)
		}
		if entry.State == ledger.StateCreated {
			return out(TaskResult{AlreadyDone: true}), nil // state 5
		}
		g, err = a.waitCreateLock(ctx, vmid, kind) // state 3
		if err != nil {
			return CreateResult{}, err
		}
		if g.Exists {
			if g.Name != name {
				// Not the guest this run asked for: drop the claim.
				if err := a.Ledger.AbortCreate(vmid, run); err != nil {
					a.log().Error("ledger: could not drop pending create", "vmid", vmid, "err", err)
				}
				return CreateResult{}, taken(g)
			}
			return out(TaskResult{AlreadyDone: true}), a.confirm(what, vmid, run)
		}
		// The create task failed and Proxmox removed the guest: create again.
	}
	if !ours || entry.State != ledger.StatePending {
		if err := a.Ledger.BeginCreate(ledger.Entry{VMID: vmid, Kind: kind, Run: run,
			Workflow: activity.GetInfo(ctx).WorkflowExecution.ID, Scratch: scratch}); err != nil {
			return CreateResult{}, temporal.NewApplicationErrorWithCause(what+": record in provenance ledger: "+err.Error(), ErrTypeLedger, err)
		}
	}
	res, err := a.runTask(ctx, "create", "POST", fmt.Sprintf("/nodes/%s/%s", a.Node, kind), params)
	if err != nil {
		return CreateResult{}, a.createFailed(what, vmid, run, err)
	}
	return out(res), a.confirm(what, vmid, run)
}

func (a *Proxmox) confirm(what string, vmid int, run string) error {
	if err := a.Ledger.ConfirmCreate(vmid, run); err != nil {
		return temporal.NewApplicationErrorWithCause(what+": confirm in provenance ledger: "+err.Error(), ErrTypeLedger, err)
	}
	return nil
}

// createFailed drops the pending record when the create certainly did not
// happen (Proxmox refused it, or its task failed, which removes the guest);
// after an ambiguous error (network, 5xx) it stays for the retry to resolve.
func (a *Proxmox) createFailed(what string, vmid int, run string, err error) error {
	c := classify(what, err)
	var te *TaskError
	if errors.As(err, &te) || isNonRetryable(c) {
		if aerr := a.Ledger.AbortCreate(vmid, run); aerr != nil {
			a.log().Error("ledger: could not drop pending create", "vmid", vmid, "err", aerr)
		}
	}
	return c
}

// waitCreateLock waits while the guest carries Proxmox's "create" lock (its
// create task still runs) and returns the guest as it is then; Exists false
// means the create failed and Proxmox removed it.
func (a *Proxmox) waitCreateLock(ctx context.Context, vmid int, kind string) (Guest, error) {
	interval := a.PollInterval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	for {
		g, err := a.readGuest(ctx, vmid, kind)
		if err != nil || !g.Exists || g.Lock != "create" {
			return g, err
		}
		activity.RecordHeartbeat(ctx, Progress{Phase: "create-lock"})
		select {
		case <-ctx.Done():
			return Guest{}, ctx.Err()
		case <-time.After(interval):
		}
	}
}
