package activities

import (
	"context"
	"fmt"
	"strconv"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// This file holds one activity per operation a guest workflow runs. Each is
// a thin translation to the Proxmox activities of this package, which check
// everything again on this host (the gate for every destructive step, the
// guest's real state, the ledger): the Temporal server may call any of them
// with any input, as it may ExecuteAction. What they add is the host check
// and one error type for every gate refusal (see taskOutcome).

// onThisHost refuses an operation addressed to another host.
func (h *Host) onThisHost(host string) error {
	if host != h.Proxmox.HostID {
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("operation for host %q sent to host %q", host, h.Proxmox.HostID), ErrTypeBadRequest, nil)
	}
	return nil
}

// CreateGuest creates a VM or a container and records it in the host's
// ledger as the agent's own.
func (h *Host) CreateGuest(ctx context.Context, in workflows.CreateGuestInput) (workflows.ExecuteResult, error) {
	if err := h.onThisHost(in.Host); err != nil {
		return workflows.ExecuteResult{}, err
	}
	name := in.Name
	if name == "" {
		// Proxmox names an unnamed guest itself; the activities want a name
		// they can check a half-done create against.
		name = "guest-" + strconv.Itoa(in.VMID)
	}
	var (
		res CreateResult
		err error
	)
	switch in.Kind {
	case desired.QEMU:
		res, err = h.Proxmox.CreateVM(ctx, CreateVMInput{
			VMID: in.VMID, Name: name, MemoryMiB: in.MemoryMiB, Cores: in.Cores, Tags: in.Tags,
			Disks: in.Disks, Options: in.Options, Scratch: in.Scratch, ExpectAbsent: in.ExpectAbsent,
		})
	case desired.LXC:
		mounts := map[string]string{}
		for k, v := range in.Disks {
			if k != "rootfs" {
				mounts[k] = v
			}
		}
		res, err = h.Proxmox.CreateContainer(ctx, CreateContainerInput{
			VMID: in.VMID, Hostname: name, OSTemplate: in.OSTemplate, MemoryMiB: in.MemoryMiB, Cores: in.Cores,
			RootFS: in.Disks["rootfs"], Tags: in.Tags, Mounts: mounts, Options: in.Options, Scratch: in.Scratch,
			ExpectAbsent: in.ExpectAbsent,
		})
	default:
		return workflows.ExecuteResult{}, temporal.NewNonRetryableApplicationError("create: kind must be qemu or lxc", ErrTypeBadRequest, nil)
	}
	out, err := taskOutcome(res.TaskResult, err)
	if err == nil && res.Guest != nil {
		// The guest as the create left it: stopped, unless an option asked
		// Proxmox to start it, when its status is left unsaid.
		g := *res.Guest
		if g.Status = "stopped"; in.Options["start"] != "" && in.Options["start"] != "0" {
			g.Status = ""
		}
		after := h.observation(g)
		out.After = &after
		h.Proxmox.remember(g)
	}
	if err != nil || !in.Start {
		return out, err
	}
	return h.startCreated(ctx, in.GuestRef, out)
}

// startCreated is the start that follows a create in the same step
// (CreateGuestInput.Start): the same request, task and checks as the
// StartGuest step, one activity fewer. A retry of the step finds the
// create done (the ledger and the guest's marker decide, see create) and
// starts the guest if it still needs it. A failed start is returned as
// workflows.ErrTypeStartAfterCreate, retryable as the start's own error
// was, so that the workflow knows the guest exists.
func (h *Host) startCreated(ctx context.Context, ref workflows.GuestRef, created workflows.ExecuteResult) (workflows.ExecuteResult, error) {
	start := workflows.StartGuestInput{GuestRef: ref}
	if a := created.After; a != nil && a.Guest.Status == "stopped" {
		start.Known = &workflows.KnownState{Kind: a.Guest.Kind, Status: a.Guest.Status}
	}
	res, err := h.StartGuest(ctx, start)
	if err != nil {
		return created, temporal.NewApplicationErrorWithOptions(err.Error(), workflows.ErrTypeStartAfterCreate,
			temporal.ApplicationErrorOptions{NonRetryable: isNonRetryable(err), Cause: err})
	}
	created.Start = &res
	if created.After != nil {
		created.After.Guest.Status = res.Status
	}
	return created, nil
}

// StartGuest starts a guest; a running guest is success. With Known, its
// first attempt takes the guest's kind and status from the step before
// instead of reading them (see Proxmox.StartKnown).
func (h *Host) StartGuest(ctx context.Context, in workflows.StartGuestInput) (workflows.ExecuteResult, error) {
	if err := h.onThisHost(in.Host); err != nil {
		return workflows.ExecuteResult{}, err
	}
	gi := GuestInput{VMID: in.VMID}
	if k := in.Known; k != nil && activity.GetInfo(ctx).Attempt <= 1 && k.Status == "stopped" {
		gi.Kind = string(k.Kind)
		return h.withStatus(in.VMID, "running")(taskOutcome(h.Proxmox.startKnownStopped(ctx, gi)))
	}
	return h.withStatus(in.VMID, "running")(taskOutcome(h.Proxmox.StartGuest(ctx, gi)))
}

// ShutdownGuest shuts a guest down; a stopped guest is success.
func (h *Host) ShutdownGuest(ctx context.Context, in workflows.ShutdownGuestInput) (workflows.ExecuteResult, error) {
	if err := h.onThisHost(in.Host); err != nil {
		return workflows.ExecuteResult{}, err
	}
	return h.withStatus(in.VMID, "stopped")(taskOutcome(h.Proxmox.ShutdownGuest(ctx, ShutdownGuestInput{VMID: in.VMID, TimeoutSeconds: in.TimeoutSeconds, ForceStop: in.ForceStop})))
}

// withStatus reports, on a power step's success, the status it left the
// guest in (the step checked it: the guest was already there, its own task
// ended, or the state wait saw it), and remembers it for the host's
// listing.
func (h *Host) withStatus(vmid int, status string) func(res workflows.ExecuteResult, err error) (workflows.ExecuteResult, error) {
	return func(res workflows.ExecuteResult, err error) (workflows.ExecuteResult, error) {
		if err == nil {
			res.Status = status
			h.Proxmox.rememberStatus(vmid, status)
		}
		return res, err
	}
}

// SetConfig sets configuration keys; a change outside the allow-list is
// refused here as needing a signature.
func (h *Host) SetConfig(ctx context.Context, in workflows.SetConfigInput) (workflows.ExecuteResult, error) {
	if err := h.onThisHost(in.Host); err != nil {
		return workflows.ExecuteResult{}, err
	}
	defer h.Proxmox.confirmed.forget(in.VMID) // the listing reads it again
	return taskOutcome(h.Proxmox.SetConfig(ctx, SetConfigInput{VMID: in.VMID, Set: in.Set}))
}

// DetachDisk removes a disk from a guest's configuration, after the gate
// allowed it.
func (h *Host) DetachDisk(ctx context.Context, in workflows.DetachDiskInput) (workflows.ExecuteResult, error) {
	if err := h.onThisHost(in.Host); err != nil {
		return workflows.ExecuteResult{}, err
	}
	if in.Disk == "" {
		return workflows.ExecuteResult{}, badInput("detach disk", "no disk named")
	}
	defer h.Proxmox.confirmed.forget(in.VMID) // the listing reads it again
	return taskOutcome(h.Proxmox.SetConfig(ctx, SetConfigInput{VMID: in.VMID, Delete: []string{in.Disk}, Approval: gateApproval(in.Approval)}))
}

// DestroyGuest destroys a guest, after the gate allowed it.
func (h *Host) DestroyGuest(ctx context.Context, in workflows.DestroyGuestInput) (workflows.ExecuteResult, error) {
	if err := h.onThisHost(in.Host); err != nil {
		return workflows.ExecuteResult{}, err
	}
	defer h.Proxmox.confirmed.forget(in.VMID) // the listing reads it again
	return taskOutcome(h.Proxmox.DestroyGuest(ctx, DestroyGuestInput{VMID: in.VMID, Kind: in.Kind, Approval: gateApproval(in.Approval)}))
}

// RestoreBackup restores a backup over an existing guest, after the gate
// allowed it.
func (h *Host) RestoreBackup(ctx context.Context, in workflows.RestoreBackupInput) (workflows.ExecuteResult, error) {
	if err := h.onThisHost(in.Host); err != nil {
		return workflows.ExecuteResult{}, err
	}
	defer h.Proxmox.confirmed.forget(in.VMID) // the listing reads it again
	return taskOutcome(h.Proxmox.RestoreBackup(ctx, RestoreBackupInput{
		VMID: in.VMID, Kind: in.Kind, Archive: in.Archive, Storage: in.Storage, Approval: gateApproval(in.Approval),
	}))
}

// WipeVolume frees a storage volume, after the gate allowed it.
func (h *Host) WipeVolume(ctx context.Context, in workflows.WipeVolumeInput) (workflows.ExecuteResult, error) {
	if err := h.onThisHost(in.Host); err != nil {
		return workflows.ExecuteResult{}, err
	}
	return taskOutcome(h.Proxmox.WipeVolume(ctx, WipeVolumeInput{Volume: in.Volume, Approval: gateApproval(in.Approval)}))
}
