package activities

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/activities/ledger"
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

func protected(what string, vmid int) error {
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("%s: guest %d has protection enabled: refusing (the guest was left as it is)", what, vmid), ErrTypeProtected, nil)
}

// DestroyGuest destroys a guest with purge, after the gate allowed it.
// Protection is checked before anything else and the guest is stopped only
// after the gate allowed, so a refused destroy never stops a guest. A guest
// that is already gone is success (AlreadyDone). A signed destroy also frees
// the guest's unreferenced disks; a benign one (scratch, or the rollback of
// the agent's own create) frees only what the guest's config references, so
// an orphaned disk of an earlier guest under the same VMID is never taken
// along unsigned.
func (a *Proxmox) DestroyGuest(ctx context.Context, in DestroyGuestInput) (res TaskResult, err error) {
	what := "destroy guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	var at *act
	res, at, err = a.destroy(ctx, what, in)
	err = classify(what, err)
	a.settle(at, err)
	return res, err
}

func (a *Proxmox) destroy(ctx context.Context, what string, in DestroyGuestInput) (TaskResult, *act, error) {
	if in.VMID <= 0 {
		return TaskResult{}, nil, badInput(what, "vmid %d is not a VMID", in.VMID)
	}
	p, has := resumed(ctx)
	res, resumedTask, err := a.resumeTask(ctx, p, has, "destroy", in.VMID, "qmdestroy", "vzdestroy")
	if resumedTask && err != nil {
		return res, nil, err
	}
	g, err := a.readGuest(ctx, in.VMID, "")
	if err != nil {
		return TaskResult{}, nil, err
	}
	if !g.Exists {
		a.finishRecorded(in.Approval)
		if !resumedTask {
			res = TaskResult{AlreadyDone: true}
		}
		return res, nil, a.forget(what, in.VMID)
	}
	if g.Protection {
		return TaskResult{}, nil, protected(what, in.VMID)
	}
	if err := a.lostTaskRemnant(ctx, what, g); err != nil {
		return TaskResult{}, nil, err
	}
	action := gate.Action{Op: gate.OpGuestDestroy, HostID: a.HostID, GuestID: vmidString(in.VMID), Params: map[string]any{"kind": g.Kind}}
	ctx, at, err := a.authorize(ctx, what, action, g, in.Approval, "")
	if err != nil {
		return TaskResult{}, nil, err
	}
	if at != nil && at.done {
		// The approved destroy completed, yet a guest is there: not the one
		// it destroyed.
		return TaskResult{}, nil, a.usedUp(what, action)
	}
	base := a.guestPath(g.Kind, in.VMID)
	if res, ok, err := a.resumeTask(ctx, p, has, "stop", in.VMID, taskType(g.Kind, "stop")); ok {
		if err != nil {
			return res, at, err
		}
	} else if g.Status == "running" {
		if _, err := a.runGuestTask(ctx, "stop", taskType(g.Kind, "stop"), in.VMID, false, "POST", base+"/status/stop", nil); err != nil {
			return TaskResult{}, at, err
		}
	}
	params := map[string]any{"purge": 1}
	if at != nil {
		params["destroy-unreferenced-disks"] = 1
	}
	res, err = a.runGuestTask(ctx, "destroy", taskType(g.Kind, "destroy"), in.VMID, false, "DELETE", base, params)
	if err != nil {
		// Gone since it was read (a destroy whose UPID heartbeat had not left
		// the worker yet finished meanwhile): the goal is met.
		if now, rerr := a.readGuest(ctx, in.VMID, g.Kind); rerr == nil && !now.Exists {
			return TaskResult{AlreadyDone: true}, at, a.forget(what, in.VMID)
		}
		return TaskResult{}, at, err
	}
	return res, at, a.forget(what, in.VMID)
}

// RestoreBackup restores a backup over an existing guest, after the gate
// allowed it (stopping the guest first if it runs). Protection is checked
// before the gate. A retry of an approved restore resumes its recorded task;
// once the act completed, the same approval restores nothing again.
func (a *Proxmox) RestoreBackup(ctx context.Context, in RestoreBackupInput) (res TaskResult, err error) {
	what := "restore backup over guest " + vmidString(in.VMID)
	defer recoverPanic(what, &err)
	var at *act
	res, at, err = a.restore(ctx, what, in)
	err = classify(what, err)
	a.settle(at, err)
	return res, err
}

func (a *Proxmox) restore(ctx context.Context, what string, in RestoreBackupInput) (TaskResult, *act, error) {
	if in.VMID <= 0 {
		return TaskResult{}, nil, badInput(what, "vmid %d is not a VMID", in.VMID)
	}
	if !strings.Contains(in.Archive, ":") {
		return TaskResult{}, nil, badInput(what, "archive %q is not a backup volume id (storage:backup/...)", in.Archive)
	}
	p, has := resumed(ctx)
	if res, ok, err := a.resumeTask(ctx, p, has, "restore", in.VMID, "qmrestore", "vzrestore"); ok {
		if err == nil {
			a.finishRecorded(in.Approval)
		}
		return res, nil, err
	}
	g, err := a.readGuest(ctx, in.VMID, "")
	if err != nil {
		return TaskResult{}, nil, err
	}
	if !g.Exists {
		return TaskResult{}, nil, notFound(what, in.VMID)
	}
	if g.Protection {
		return TaskResult{}, nil, protected(what, in.VMID)
	}
	if err := a.lostTaskRemnant(ctx, what, g); err != nil {
		return TaskResult{}, nil, err
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
	if upid, err := a.restoreUnderWay(ctx, action, g, in.Approval); err != nil {
		return TaskResult{}, nil, err
	} else if upid != "" {
		recordProgress(ctx, Progress{Phase: "restore", UPID: upid})
		a.log().Info("adopting the approved restore's task", "upid", upid)
		res, err := a.wait(ctx, "restore", upid)
		if err != nil {
			return TaskResult{}, nil, err
		}
		a.finishRecorded(in.Approval)
		res.Resumed = true
		return res, nil, nil
	}
	ctx, at, err := a.authorize(ctx, what, action, g, in.Approval, "")
	if err != nil {
		return TaskResult{}, nil, err
	}
	if at != nil && at.done {
		return TaskResult{AlreadyDone: true}, at, nil
	}
	base := a.guestPath(g.Kind, in.VMID)
	if res, ok, err := a.resumeTask(ctx, p, has, "stop", in.VMID, taskType(g.Kind, "stop")); ok {
		if err != nil {
			return res, at, err
		}
	} else if g.Status == "running" {
		if _, err := a.runGuestTask(ctx, "stop", taskType(g.Kind, "stop"), in.VMID, false, "POST", base+"/status/stop", nil); err != nil {
			return TaskResult{}, at, err
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
		"POST", fmt.Sprintf("/nodes/%s/%s", url.PathEscape(a.Node), g.Kind), post)
	if err != nil {
		return TaskResult{}, at, err
	}
	return res, at, nil
}

// restoreUnderWay finds the restore task of an approved restore whose
// request went out in an earlier attempt that did not live to record the
// task's id (a crash between the POST and its heartbeat, an answer lost).
// Once that task ran, the guest is no longer the instance the approval was
// admitted for (the restore replaced its configuration), so the gate would
// refuse the retry, and a fresh signature would restore a second time. It
// returns the task when the host's ledger says the approval's act started
// on this guest and action, and Proxmox lists a restore of the guest since
// the step was scheduled; "" otherwise, and the gate decides as usual.
// Adopting it sends nothing: the retry only waits on a task Proxmox runs.
func (a *Proxmox) restoreUnderWay(ctx context.Context, action gate.Action, g Guest, approval *gate.Approval) (string, error) {
	key := approvalKey(approval)
	if key == "" || a.Ledger == nil || a.Gate == nil {
		return "", nil
	}
	ad, ok := a.Ledger.Admission(key)
	if !ok || ad.State != ledger.Started || ad.VMID != g.VMID || ad.Instance == instanceOf(g) {
		return "", nil
	}
	if digest, err := actionDigest(action); err != nil || digest != ad.Action {
		return "", nil
	}
	if _, err := a.Gate.Readmit(ctx, gate.Request{Action: action, Provenance: a.provenanceOf(g), Approval: approval}); err != nil {
		return "", nil // not this approval's act: the gate refuses it below
	}
	return a.inFlight(ctx, g.VMID, taskType(g.Kind, "restore"), true)
}

// finishRecorded marks the admission of approval, if this host holds one,
// Done: a resumed task finished the act, or its goal is met.
func (a *Proxmox) finishRecorded(approval *gate.Approval) {
	if key := approvalKey(approval); key != "" && a.Ledger != nil {
		if _, ok := a.Ledger.Admission(key); !ok {
			return
		}
		if err := a.Ledger.FinishAct(key, false); err != nil {
			a.log().Error("ledger: could not mark the approved act done", "err", err)
		}
	}
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
	var at *act
	res, at, err = a.wipe(ctx, what, in)
	err = classify(what, err)
	a.settle(at, err)
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

// volumeUser returns a guest of this node whose config references volid,
// and the key it uses, or VMID 0 when none does. The API deletes a volume a
// guest still uses (only the web UI guards against it), and a volume may be
// attached to a guest other than the one its name says, so every guest is
// looked at.
func (a *Proxmox) volumeUser(ctx context.Context, volid string) (int, string, error) {
	guests, err := a.clusterGuests(ctx)
	if err != nil {
		return 0, "", err
	}
	for _, s := range guests {
		g, err := a.readGuest(ctx, s.VMID, s.Kind)
		if err != nil {
			return 0, "", err
		}
		for key, v := range g.Config {
			if v == volid || strings.HasPrefix(v, volid+",") {
				return g.VMID, key, nil
			}
		}
	}
	return 0, "", nil
}

func (a *Proxmox) wipe(ctx context.Context, what string, in WipeVolumeInput) (TaskResult, *act, error) {
	storage, name, ok := strings.Cut(in.Volume, ":")
	if !ok || storage == "" || name == "" {
		return TaskResult{}, nil, badInput(what, "%q is not a volume id (storage:name)", in.Volume)
	}
	p, has := resumed(ctx)
	if res, ok, err := a.resumeTask(ctx, p, has, "wipe", 0, "imgdel"); ok {
		if err == nil {
			a.finishRecorded(in.Approval)
		}
		return res, nil, err
	}
	path := fmt.Sprintf("/nodes/%s/storage/%s/content/%s", url.PathEscape(a.Node), url.PathEscape(storage), url.PathEscape(in.Volume))
	exists, err := a.volumeExists(ctx, storage, in.Volume)
	if err != nil {
		return TaskResult{}, nil, err
	}
	if !exists {
		a.finishRecorded(in.Approval)
		return TaskResult{AlreadyDone: true}, nil, nil
	}
	// Refused here, before the gate spends the approval.
	if user, key, err := a.volumeUser(ctx, in.Volume); err != nil {
		return TaskResult{}, nil, err
	} else if user > 0 {
		return TaskResult{}, nil, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("%s: guest %d still uses it as %s: detach it first (disk.detach)", what, user, key), ErrTypeVolumeInUse, nil)
	}
	owner := Guest{}
	guestID := ""
	if m := volumeOwner.FindStringSubmatch(name); m != nil {
		vmid, _ := strconv.Atoi(m[1])
		if owner, err = a.readGuest(ctx, vmid, ""); err != nil {
			return TaskResult{}, nil, err
		}
		guestID = vmidString(vmid)
	}
	action := gate.Action{Op: gate.OpVolumeWipe, HostID: a.HostID, GuestID: guestID, Params: map[string]any{"volume": in.Volume}}
	ctx, at, err := a.authorize(ctx, what, action, owner, in.Approval, "")
	if err != nil {
		return TaskResult{}, nil, err
	}
	if at != nil && at.done {
		// The approved wipe completed, yet the volume is there: a new one
		// under the same name.
		return TaskResult{}, nil, a.usedUp(what, action)
	}
	// A volume deletion of a previous attempt may still be running (its task
	// is keyed by volume, not guest): let running deletions finish and look
	// again before sending another.
	if upid, err := a.inFlight(ctx, 0, "imgdel", false); err != nil {
		return TaskResult{}, at, err
	} else if upid != "" {
		if _, err := a.wait(ctx, "wipe-other", upid); err != nil {
			a.log().Warn("volume deletion under way failed", "upid", upid, "err", err)
		}
		if exists, err := a.volumeExists(ctx, storage, in.Volume); err != nil {
			return TaskResult{}, at, err
		} else if !exists {
			return TaskResult{UPID: upid, Resumed: true}, at, nil
		}
	}
	res, err := a.runTask(ctx, "wipe", "DELETE", path, nil)
	if err != nil {
		return TaskResult{}, at, err
	}
	return res, at, nil
}
