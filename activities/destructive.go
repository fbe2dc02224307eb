package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/gate"
)

// DestroyGuestInput asks to destroy a guest. The gated action is
// {op: guest.destroy, guest_id: VMID, params: {"kind": "qemu"|"lxc"}}, with
// the kind Proxmox reports (not the input's).
type DestroyGuestInput struct {
	VMID int    `json:"vmid"`
	Kind string `json:"kind,omitempty"`
	// Approval is the operator-signed op, when the destroy is destructive.
	Approval *gate.Approval `json:"approval,omitempty"`
}

// RestoreBackupInput asks to restore a backup over an existing guest. The
// gated action is {op: guest.restore, guest_id: VMID, params:
// {"archive": Archive} plus "storage": Storage when set, plus "kind": the
// guest's real kind when Kind is set}.
type RestoreBackupInput struct {
	VMID int    `json:"vmid"`
	Kind string `json:"kind,omitempty"`
	// Archive is the backup volume, e.g. "local:backup/vzdump-qemu-101-2026_01_01-00_00_00.vma.zst".
	Archive string `json:"archive"`
	// Storage for the restored disks ("" keeps Proxmox's default).
	Storage  string         `json:"storage,omitempty"`
	Approval *gate.Approval `json:"approval,omitempty"`
}

// WipeVolumeInput asks to free (destroy) a storage volume. The gated action
// is {op: volume.wipe, guest_id: the VMID owning the volume by its name ("" for
// none), params: {"volume": Volume}}.
type WipeVolumeInput struct {
	// Volume is the volume id, "storage:name", e.g. "local-lvm:vm-101-disk-1".
	Volume   string         `json:"volume"`
	Approval *gate.Approval `json:"approval,omitempty"`
}

// runID is the workflow run the activity belongs to.
func runID(ctx context.Context) string {
	return activity.GetInfo(ctx).WorkflowExecution.RunID
}

// admissionKey names one activity's use of one approval: a retry of the
// same activity (same run, same activity id) with the same signed bytes
// finds it again, nothing else does.
func admissionKey(ctx context.Context, ap *gate.Approval) string {
	if ap == nil {
		return ""
	}
	info := activity.GetInfo(ctx)
	h := sha256.New()
	fmt.Fprintf(h, "%d:", len(ap.Blob))
	h.Write(ap.Blob)
	h.Write(ap.Signature)
	return hex.EncodeToString(h.Sum(nil)) + "/" + info.WorkflowExecution.RunID + "/" + info.ActivityID
}

func (a *Proxmox) provenance(vmid int) gate.Provenance {
	if a.Ledger == nil || vmid <= 0 {
		return gate.Provenance{}
	}
	p := a.Ledger.Lookup(vmid)
	return gate.Provenance{AgentCreated: p.AgentCreated, CreatedByRun: p.CreatedByRun, Scratch: p.Scratch}
}

// authorize runs the gate on this host for action. A rejection is a
// non-retryable application error whose type is the gate's code.
//
// The nonce of a signed approval is spent by the first attempt that passes
// the gate. So that a retry of the same activity (after a crash before its
// task was recorded) is not refused as a replay, an admission keyed by the
// approval, the run and the activity id is recorded in the ledger right after
// the gate allowed; a "replay" rejection with a live admission for exactly
// that key proceeds. Decide rejects a replay only after every other check
// (signature, signer, host, time window, binding) passed again.
func (a *Proxmox) authorize(ctx context.Context, what string, action gate.Action, vmid int, approval *gate.Approval) (admission string, err error) {
	if a.Gate == nil {
		return "", temporal.NewNonRetryableApplicationError(what+": no gate configured on this host: refusing", "gate_missing", nil)
	}
	req := gate.Request{Action: action, Provenance: a.provenance(vmid), CurrentRun: runID(ctx), Approval: approval}
	key := admissionKey(ctx, approval)
	dec, err := a.Gate.Decide(ctx, req)
	if err != nil {
		code := gate.Code(err)
		if (code == "replay" || errors.Is(err, gate.ErrReplay)) && key != "" && a.Ledger != nil && a.Ledger.Admitted(key) {
			a.log().Info("gate: approval already admitted for this activity; continuing", "op", action.Op, "guest", action.GuestID)
			return key, nil
		}
		a.log().Warn("gate refused", "op", action.Op, "guest", action.GuestID, "code", code, "err", err)
		return "", temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("%s: refused by the gate on host %s (%s): %v", what, a.HostID, code, err), code, err)
	}
	if !dec.Allowed {
		code := dec.Code
		if code == "" {
			code = "refused"
		}
		return "", temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("%s: refused by the gate on host %s (%s)", what, a.HostID, code), code, nil)
	}
	if dec.Op != nil && key != "" {
		if a.Ledger == nil {
			return "", temporal.NewNonRetryableApplicationError(what+": no provenance ledger to record the admission in", ErrTypeLedger, nil)
		}
		if err := a.Ledger.Admit(key, vmid, runID(ctx)); err != nil {
			return "", temporal.NewApplicationErrorWithCause(what+": record admission: "+err.Error(), ErrTypeLedger, err)
		}
		return key, nil
	}
	return "", nil
}

// spend marks the admission under key used up.
func (a *Proxmox) spend(key string) {
	if key == "" || a.Ledger == nil {
		return
	}
	if err := a.Ledger.Spend(key); err != nil {
		a.log().Error("ledger: could not mark admission spent", "err", err)
	}
}

// settle spends this activity's admission once no retry of it can follow:
// it succeeded, or failed for good.
func (a *Proxmox) settle(ctx context.Context, approval *gate.Approval, err error) {
	if err != nil && !isNonRetryable(err) {
		return
	}
	a.spend(admissionKey(ctx, approval))
}

func (a *Proxmox) forget(ctx context.Context, what string, vmid int) error {
	if a.Ledger == nil {
		return nil
	}
	if err := a.Ledger.Remove(vmid, runID(ctx)); err != nil {
		return temporal.NewApplicationErrorWithCause(what+": record removal in the provenance ledger: "+err.Error(), ErrTypeLedger, err)
	}
	return nil
}

func protected(what string, vmid int) error {
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("%s: guest %d has protection enabled: refusing (the guest was left as it is)", what, vmid), ErrTypeProtected, nil)
}

// DestroyGuest destroys a guest with purge and its unreferenced disks, after
// the gate allowed it. Protection is checked before anything else and the
// guest is stopped only after the gate allowed, so a refused destroy never
// stops a guest. A guest that is already gone is success (AlreadyDone).
func (a *Proxmox) DestroyGuest(ctx context.Context, in DestroyGuestInput) (res TaskResult, err error) {
	what := "destroy guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	res, err = a.destroy(ctx, what, in)
	err = classify(what, err)
	a.settle(ctx, in.Approval, err)
	return res, err
}

func (a *Proxmox) destroy(ctx context.Context, what string, in DestroyGuestInput) (TaskResult, error) {
	if in.VMID <= 0 {
		return TaskResult{}, badInput(what, "vmid %d is not a VMID", in.VMID)
	}
	p, has := resumed(ctx)
	if res, ok, err := a.resumeTask(ctx, p, has, "destroy"); ok {
		if err != nil {
			return res, err
		}
		return res, a.forget(ctx, what, in.VMID)
	}
	g, err := a.readGuest(ctx, in.VMID, "")
	if err != nil {
		return TaskResult{}, err
	}
	if !g.Exists {
		return TaskResult{AlreadyDone: true}, a.forget(ctx, what, in.VMID)
	}
	if g.Protection {
		return TaskResult{}, protected(what, in.VMID)
	}
	action := gate.Action{Op: gate.OpGuestDestroy, HostID: a.HostID, GuestID: vmidString(in.VMID), Params: map[string]any{"kind": g.Kind}}
	if _, err := a.authorize(ctx, what, action, in.VMID, in.Approval); err != nil {
		return TaskResult{}, err
	}
	base := a.guestPath(g.Kind, in.VMID)
	if res, ok, err := a.resumeTask(ctx, p, has, "stop"); ok {
		if err != nil {
			return res, err
		}
	} else if g.Status == "running" {
		if _, err := a.runGuestTask(ctx, "stop", taskType(g.Kind, "stop"), in.VMID, false, "POST", base+"/status/stop", nil); err != nil {
			return TaskResult{}, err
		}
	}
	res, err := a.runGuestTask(ctx, "destroy", taskType(g.Kind, "destroy"), in.VMID, false,
		"DELETE", base, map[string]any{"purge": 1, "destroy-unreferenced-disks": 1})
	if err != nil {
		// Gone since it was read (a destroy whose UPID heartbeat had not left
		// the worker yet finished meanwhile): the goal is met.
		if now, rerr := a.readGuest(ctx, in.VMID, g.Kind); rerr == nil && !now.Exists {
			return TaskResult{AlreadyDone: true}, a.forget(ctx, what, in.VMID)
		}
		return TaskResult{}, err
	}
	return res, a.forget(ctx, what, in.VMID)
}

// RestoreBackup restores a backup over an existing guest, after the gate
// allowed it (stopping the guest first if it runs). Without a recorded task
// a retry restores again: restoring the same archive twice leaves the same
// result.
func (a *Proxmox) RestoreBackup(ctx context.Context, in RestoreBackupInput) (res TaskResult, err error) {
	what := "restore backup over guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	res, err = a.restore(ctx, what, in)
	err = classify(what, err)
	a.settle(ctx, in.Approval, err)
	return res, err
}

func (a *Proxmox) restore(ctx context.Context, what string, in RestoreBackupInput) (TaskResult, error) {
	if in.VMID <= 0 {
		return TaskResult{}, badInput(what, "vmid %d is not a VMID", in.VMID)
	}
	if !strings.Contains(in.Archive, ":") {
		return TaskResult{}, badInput(what, "archive %q is not a backup volume id (storage:backup/...)", in.Archive)
	}
	p, has := resumed(ctx)
	if res, ok, err := a.resumeTask(ctx, p, has, "restore"); ok {
		return res, err
	}
	g, err := a.readGuest(ctx, in.VMID, "")
	if err != nil {
		return TaskResult{}, err
	}
	if !g.Exists {
		return TaskResult{}, notFound(what, in.VMID)
	}
	if g.Protection {
		return TaskResult{}, protected(what, in.VMID)
	}
	params := map[string]any{"archive": in.Archive}
	if in.Storage != "" {
		params["storage"] = in.Storage
	}
	if in.Kind != "" {
		// Named by the request, valued by Proxmox: an approval for the other
		// kind does not bind.
		params["kind"] = g.Kind
	}
	action := gate.Action{Op: gate.OpGuestRestore, HostID: a.HostID, GuestID: vmidString(in.VMID), Params: params}
	if _, err := a.authorize(ctx, what, action, in.VMID, in.Approval); err != nil {
		return TaskResult{}, err
	}
	base := a.guestPath(g.Kind, in.VMID)
	if res, ok, err := a.resumeTask(ctx, p, has, "stop"); ok {
		if err != nil {
			return res, err
		}
	} else if g.Status == "running" {
		if _, err := a.runGuestTask(ctx, "stop", taskType(g.Kind, "stop"), in.VMID, false, "POST", base+"/status/stop", nil); err != nil {
			return TaskResult{}, err
		}
	}
	post := map[string]any{"vmid": in.VMID, "force": 1}
	if in.Storage != "" {
		post["storage"] = in.Storage
	}
	if g.Kind == KindLXC {
		post["ostemplate"] = in.Archive
		post["restore"] = 1
	} else {
		post["archive"] = in.Archive
	}
	res, err := a.runGuestTask(ctx, "restore", taskType(g.Kind, "restore"), in.VMID, true,
		"POST", fmt.Sprintf("/nodes/%s/%s", a.Node, g.Kind), post)
	if err != nil {
		return TaskResult{}, err
	}
	return res, nil
}

// volumeOwner reads the owning VMID from a volume name: images
// (vm-101-disk-0, base-, subvol-, basevol-) and backups
// (backup/vzdump-qemu-101-...).
var volumeOwner = regexp.MustCompile(`^(?:[^/]*/)?(?:(?:vm|base|subvol|basevol)-|vzdump-(?:qemu|lxc)-)(\d+)-`)

// WipeVolume frees a storage volume (its data is gone), after the gate
// allowed it. A volume that no longer exists is success (AlreadyDone).
func (a *Proxmox) WipeVolume(ctx context.Context, in WipeVolumeInput) (res TaskResult, err error) {
	what := "wipe volume " + in.Volume
	defer recoverPanic(what, &err)
	res, err = a.wipe(ctx, what, in)
	err = classify(what, err)
	a.settle(ctx, in.Approval, err)
	return res, err
}

// volumeExists looks for volid in its storage's content listing: the error
// pve gives for a missing volume is the storage tool's own and differs by
// storage type, so it is not read.
func (a *Proxmox) volumeExists(ctx context.Context, storage, volid string) (bool, error) {
	var list []struct {
		VolID string `json:"volid"`
	}
	path := fmt.Sprintf("/nodes/%s/storage/%s/content", url.PathEscape(a.Node), url.PathEscape(storage))
	if err := a.Client.Get(ctx, path, &list); err != nil {
		return false, err
	}
	for _, v := range list {
		if v.VolID == volid {
			return true, nil
		}
	}
	return false, nil
}

func (a *Proxmox) wipe(ctx context.Context, what string, in WipeVolumeInput) (TaskResult, error) {
	storage, name, ok := strings.Cut(in.Volume, ":")
	if !ok || storage == "" || name == "" {
		return TaskResult{}, badInput(what, "%q is not a volume id (storage:name)", in.Volume)
	}
	p, has := resumed(ctx)
	if res, ok, err := a.resumeTask(ctx, p, has, "wipe"); ok {
		return res, err
	}
	path := fmt.Sprintf("/nodes/%s/storage/%s/content/%s", a.Node, storage, url.PathEscape(in.Volume))
	exists, err := a.volumeExists(ctx, storage, in.Volume)
	if err != nil {
		return TaskResult{}, err
	}
	if !exists {
		return TaskResult{AlreadyDone: true}, nil
	}
	owner := 0
	if m := volumeOwner.FindStringSubmatch(name); m != nil {
		owner, _ = strconv.Atoi(m[1])
	}
	// The API deletes a disk a guest still uses (only the web UI guards
	// against it): refuse here, before the gate spends the approval.
	if owner > 0 {
		g, err := a.readGuest(ctx, owner, "")
		if err != nil {
			return TaskResult{}, err
		}
		for key, v := range g.Config {
			if v == in.Volume || strings.HasPrefix(v, in.Volume+",") {
				return TaskResult{}, temporal.NewNonRetryableApplicationError(
					fmt.Sprintf("%s: guest %d still uses it as %s: detach it first (disk.detach)", what, owner, key), ErrTypeVolumeInUse, nil)
			}
		}
	}
	guestID := ""
	if owner > 0 {
		guestID = vmidString(owner)
	}
	action := gate.Action{Op: gate.OpVolumeWipe, HostID: a.HostID, GuestID: guestID, Params: map[string]any{"volume": in.Volume}}
	if _, err := a.authorize(ctx, what, action, owner, in.Approval); err != nil {
		return TaskResult{}, err
	}
	// A volume deletion of a previous attempt may still be running (its task
	// is keyed by volume, not guest): let running deletions finish and look
	// again before sending another.
	if upid, err := a.inFlight(ctx, 0, "imgdel", false); err != nil {
		return TaskResult{}, err
	} else if upid != "" {
		if _, err := a.wait(ctx, "wipe-other", upid); err != nil {
			a.log().Warn("volume deletion under way failed", "upid", upid, "err", err)
		}
		if exists, err := a.volumeExists(ctx, storage, in.Volume); err != nil {
			return TaskResult{}, err
		} else if !exists {
			return TaskResult{UPID: upid, Resumed: true}, nil
		}
	}
	res, err := a.runTask(ctx, "wipe", "DELETE", path, nil)
	if err != nil {
		return TaskResult{}, err
	}
	return res, nil
}
