package gate

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

// Action is what is about to be done, as the executor will do it.
type Action struct {
	Op      string
	HostID  string
	GuestID string
	Params  map[string]any
}

// Provenance is what the host-local ledger says about the guest. It must be
// read by the caller from that ledger, never from the hub or workflow input.
type Provenance struct {
	AgentCreated bool   // the agent created this guest
	CreatedByRun string // workflow run id that created it
	Scratch      bool   // the agent created it with a scratch tag
}

// benignOps change no customer data, or only add to it.
var benignOps = map[string]bool{
	OpGuestCreate: true, OpGuestStart: true, OpGuestStop: true,
	OpGuestShutdown: true, OpGuestReboot: true, OpGuestConfig: true,
}

// guestDataOps destroy or overwrite a guest's data. They are destructive
// unless the agent's own provenance shows the data is not a customer's.
var guestDataOps = map[string]bool{
	OpGuestDestroy: true, OpGuestRestore: true, OpVolumeWipe: true,
	OpDiskDetach: true, OpDiskShrink: true,
}

// Classify decides the class of action by provenance and data-bearing-ness,
// not by verb alone. A data-destroying op is benign only when the host-local
// provenance says the agent created the guest in this very workflow run (a
// compensating rollback) or created it as scratch. Params are never
// consulted: a "scratch" tag in them is hub-supplied. Signer rotation and any
// unknown op are destructive.
func Classify(a Action, p Provenance, currentRun string) Class {
	switch {
	case benignOps[a.Op]:
		return Benign
	case guestDataOps[a.Op] && a.GuestID != "" && p.AgentCreated:
		if p.Scratch || (p.CreatedByRun != "" && p.CreatedByRun == currentRun) {
			return Benign
		}
	}
	return Destructive
}
