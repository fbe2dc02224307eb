package gate

import (
	"regexp"
	"slices"
	"strings"
	"time"
)

// Class is the reversibility class of an action.
type Class string

const (
	// Benign actions run without a signature.
	Benign Class = "benign"
	// Destructive actions run only with a verified, bound, role-permitted op.
	Destructive Class = "destructive"
)

// Op names shared with the rest of the agent.
const (
	OpGuestCreate   = "guest.create"
	OpGuestStart    = "guest.start"
	OpGuestStop     = "guest.stop"
	OpGuestShutdown = "guest.shutdown"
	OpGuestReboot   = "guest.reboot"
	OpGuestConfig   = "guest.config"

	OpGuestDestroy  = "guest.destroy"
	OpGuestRestore  = "guest.restore" // restore a backup over an existing guest
	OpVolumeWipe    = "volume.wipe"
	OpDiskDetach    = "disk.detach"
	OpDiskShrink    = "disk.shrink"
	OpSignersRotate = "signers.rotate"
)

// RollbackWindow bounds the compensating-rollback exemption: a guest the
// agent created may be destroyed unsigned only this long after its create
// was confirmed, on the host's clock, and only if it was never started.
const RollbackWindow = 30 * time.Minute

// Action is what is about to be done, as the executor will do it.
type Action struct {
	Op      string
	HostID  string
	GuestID string
	Params  map[string]any
}

// Provenance is what the host knows about the guest the action touches. The
// caller builds it from the host-local ledger and the guest as Proxmox shows
// it now, never from the hub or workflow input (see "Contract with the
// executors" in the package doc).
type Provenance struct {
	// AgentCreated: the ledger records a confirmed create by the agent of
	// this very guest instance (its instance marker matches the live guest).
	AgentCreated bool
	// Scratch: that create was recorded as scratch (no customer data).
	Scratch bool
	// CreatedAt is when that create was confirmed, on the host's clock.
	CreatedAt time.Time
	// InUse: the instance was handed over: the agent started it, or it was
	// seen running. It is then no fresh create to roll back.
	InUse bool
	// Volumes are the volume ids the agent's create allocated for this
	// instance.
	Volumes []string
}

// benignOps change no customer data, or only add to it. guest.config is
// benign only for allow-listed changes (see benignConfig).
var benignOps = map[string]bool{
	OpGuestCreate: true, OpGuestStart: true, OpGuestStop: true,
	OpGuestShutdown: true, OpGuestReboot: true,
}

// scratchOps destroy or overwrite a guest's data. They are destructive
// unless the agent's own provenance shows the data is not a customer's.
var scratchOps = map[string]bool{
	OpGuestDestroy: true, OpGuestRestore: true, OpDiskDetach: true, OpDiskShrink: true,
}

// benignConfigKeys are the config keys a guest.config may change unsigned:
// none of them can remove, replace or attach a disk.
var benignConfigKeys = map[string]bool{
	"name": true, "hostname": true, "memory": true, "cores": true, "tags": true, "onboot": true,
}

var (
	// diskKey is any key that names a disk or mount point of a QEMU VM or an
	// LXC container; unusedN is not one: it is only ever freed, never added.
	diskKey = regexp.MustCompile(`^(ide|sata|scsi|virtio|mp)\d+$|^(efidisk|tpmstate)0$|^rootfs$`)
	// newAllocation is "STORAGE:SIZE_GIB" (a container mount point may add
	// its path): Proxmox allocates a new, empty volume. A volume id
	// ("local-lvm:vm-102-disk-0") or import-from would attach or copy an
	// existing one.
	newAllocation = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]*:[0-9]+(,mp=[^,=]+)?$`)
)

// benignConfig reports whether a guest.config with these params (the
// config keys and values as they will be sent) is benign: every key is
// allow-listed, or is a disk key with a new allocation. Deleting keys
// ("delete") and every other key fail safe to destructive.
func benignConfig(params map[string]any) bool {
	for k, v := range params {
		if benignConfigKeys[k] {
			continue
		}
		s, isString := v.(string)
		if diskKey.MatchString(k) && isString && newAllocation.MatchString(s) {
			continue
		}
		return false
	}
	return true
}

// isBackup reports whether volid is a backup archive: never scratch, whose
// ever guest it was made from.
func isBackup(volid string) bool {
	_, name, _ := strings.Cut(volid, ":")
	return strings.HasPrefix(name, "backup/") || strings.Contains(name, "vzdump-")
}

// Classify decides the class of action by provenance and data-bearing-ness,
// not by verb alone, at now on the host's clock:
//
//   - start, stop, shutdown, reboot and create are benign; guest.config is
//     benign only for allow-listed keys and new disk allocations;
//   - guest.destroy is benign for an agent-created scratch instance, or as
//     the compensating rollback of the agent's own create: never started,
//     within RollbackWindow of the create;
//   - guest.restore, disk.detach and disk.shrink are benign only on an
//     agent-created scratch instance;
//   - volume.wipe is benign only for a volume the agent's create allocated
//     for a scratch instance, never for a backup;
//   - signers.rotate and every unknown op are destructive.
//
// Params decide only for guest.config and volume.wipe; a "scratch" in them
// is hub-supplied and means nothing.
func Classify(a Action, p Provenance, now time.Time) Class {
	switch {
	case benignOps[a.Op]:
		return Benign
	case a.Op == OpGuestConfig:
		if benignConfig(a.Params) {
			return Benign
		}
	case a.GuestID == "" || !p.AgentCreated:
	case a.Op == OpGuestDestroy && p.Scratch:
		return Benign
	case a.Op == OpGuestDestroy:
		if !p.InUse && !p.CreatedAt.IsZero() && !now.Before(p.CreatedAt) && now.Sub(p.CreatedAt) <= RollbackWindow {
			return Benign
		}
	case scratchOps[a.Op] && p.Scratch:
		return Benign
	case a.Op == OpVolumeWipe && p.Scratch:
		volume, _ := a.Params["volume"].(string)
		if volume != "" && !isBackup(volume) && slices.Contains(p.Volumes, volume) {
			return Benign
		}
	}
	return Destructive
}
