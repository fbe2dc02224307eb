package workflows

import (
	"time"

	"github.com/felhom/felhom-agent/workflows/desired"
)

// TaskQueue is the task queue of one host: its worker is the only one that
// polls it, so every activity runs on the host whose guests it touches.
func TaskQueue(host string) string { return "felhom-host-" + host }

// Activity names the workflows call; package activities registers them.
const (
	ActivityObserveGuest = "ObserveGuest"
	ActivityListGuests   = "ListGuests"
	ActivityRunSignedJob = "RunSignedJob"
	// ActivityRunGuestJob hands a signed job on a guest to the guest's
	// workflow (UpdateRunJob) and waits for its outcome.
	ActivityRunGuestJob = "RunGuestJob"

	// One activity per operation, so that a workflow's history and the Web
	// UI say what ran, and a replay notices a change in the operations or
	// their order. Each takes its own input and returns an ExecuteResult.
	ActivityCreateGuest   = "CreateGuest"
	ActivityStartGuest    = "StartGuest"
	ActivityShutdownGuest = "ShutdownGuest"
	ActivitySetConfig     = "SetConfig"
	ActivityDetachDisk    = "DetachDisk"
	ActivityDestroyGuest  = "DestroyGuest"
	ActivityRestoreBackup = "RestoreBackup"
	ActivityWipeVolume    = "WipeVolume"

	// ActivityWakeGuests wakes the guest workflows of a host listing's
	// drifted guests, in one activity.
	ActivityWakeGuests = "WakeGuests"

	// ActivityExecuteAction performs any planned action (ExecuteInput); and
	// ActivityWakeGuest wakes one guest workflow. Runs recorded before the
	// per-operation activities call them, so the host keeps them.
	ActivityExecuteAction = "ExecuteAction"
	ActivityWakeGuest     = "WakeGuest"
)

// HeartbeatTimeout is the heartbeat timeout of every activity that talks to
// Proxmox for longer than one read. An attempt heartbeats before each
// Proxmox request, so the Proxmox client's timeout must stay well below it
// (the worker's configuration refuses more than half of it): otherwise a
// slow answer makes Temporal start the next attempt beside the running one.
const HeartbeatTimeout = time.Minute

// ObserveInput asks for one guest's state.
type ObserveInput struct {
	VMID int `json:"vmid"`
	// ExpectAbsent says the workflow has not seen the guest exist: the host
	// first asks the cluster whether the VMID is free (one call, which also
	// counts guests the token cannot see) and reads the guest only if it is
	// not. A hint: a wrong one costs that call.
	ExpectAbsent bool `json:"expect_absent,omitempty"`
	// Announce, when set, is handed to the host workflow as a
	// SignalDesiredChanged before the read, by the host's worker: the guest
	// workflow's history holds no signal to deliver and no workflow task
	// for its delivery. Only guest workflows recorded from versionGuestCost
	// to before versionGuestDesiredMemo set it; later ones publish their
	// desired state in their memo.
	Announce *DesiredNotice `json:"announce,omitempty"`
}

// KnownState is what a guest workflow learnt of its guest from the step
// before, which lets the next step skip its first read. It is a claim: a
// step takes it on its first attempt only, where a wrong one costs a
// request Proxmox refuses (or answers as done) and a retry that reads.
type KnownState struct {
	Kind   desired.Kind `json:"kind"`
	Status string       `json:"status"`
}

// Provenance is what the host's own ledger says about a guest. It is only
// ever produced on the host; the workflow uses it to label actions, and the
// executing activity reads it again instead of trusting this copy.
type Provenance struct {
	AgentCreated bool `json:"agent_created"`
	// CreatedByRun was reported by hosts before provenance was bound to the
	// guest instance; current hosts leave it empty. Kept so that recorded
	// histories replay.
	CreatedByRun string `json:"created_by_run,omitempty"`
	Scratch      bool   `json:"scratch,omitempty"`
}

// Observation is a guest as the host sees it.
type Observation struct {
	Guest      desired.Observed `json:"guest"`
	Provenance Provenance       `json:"provenance"`
}

// Approval is an operator's signature over one op blob, exactly as received.
type Approval struct {
	Blob      string `json:"blob"`
	Signature string `json:"signature"`
}

// ExecuteInput asks the host to perform one planned action. Approval is
// required for a destructive action; the host decides that itself.
type ExecuteInput struct {
	Action   desired.Action `json:"action"`
	Approval *Approval      `json:"approval,omitempty"`
}

// GuestRef names the guest an operation acts on. The host refuses an
// operation for another host.
type GuestRef struct {
	Host string `json:"host"`
	VMID int    `json:"vmid"`
}

// CreateGuestInput creates a VM (kind qemu) or a container (kind lxc).
type CreateGuestInput struct {
	GuestRef
	Kind      desired.Kind      `json:"kind"`
	Name      string            `json:"name,omitempty"`
	MemoryMiB int               `json:"memory_mib"`
	Cores     int               `json:"cores"`
	Tags      []string          `json:"tags,omitempty"`
	Disks     map[string]string `json:"disks,omitempty"`
	Options   map[string]string `json:"options,omitempty"`
	// OSTemplate is a container's template volume.
	OSTemplate string `json:"ostemplate,omitempty"`
	// Scratch asks the host to record the new guest as holding no customer
	// data.
	Scratch bool `json:"scratch,omitempty"`
	// ExpectAbsent says this pass read no guest at the VMID: on its first
	// attempt, and when its ledger names no create there, the host posts
	// without asking the cluster first (Proxmox refuses to create over a
	// guest, and the step then names it). A hint, as ObserveInput's.
	ExpectAbsent bool `json:"expect_absent,omitempty"`
	// Start asks the host to start the guest once it is created, in the
	// same activity: the plan's start that follows a create
	// (versionGuestCreateStarts). Starting is benign; the host checks it
	// as it checks a StartGuest step.
	Start bool `json:"start,omitempty"`
}

// ErrTypeStartAfterCreate is the error type of a create step whose create
// succeeded and whose start (CreateGuestInput.Start) failed; the cause is
// the start's error.
const ErrTypeStartAfterCreate = "StartAfterCreate"

// StartGuestInput starts a guest; Known, when set, is its state after the
// step before (a create).
type StartGuestInput struct {
	GuestRef
	Known *KnownState `json:"known,omitempty"`
}

// ShutdownGuestInput shuts a guest down cleanly, and stops it when that
// does not finish within TimeoutSeconds and ForceStop is set.
type ShutdownGuestInput struct {
	GuestRef
	TimeoutSeconds int  `json:"timeout_seconds,omitempty"`
	ForceStop      bool `json:"force_stop,omitempty"`
}

// SetConfigInput sets configuration keys of a guest. The host decides from
// the guest's real configuration whether the change needs a signature.
type SetConfigInput struct {
	GuestRef
	Set map[string]any `json:"set"`
}

// DetachDiskInput removes a disk from a guest's configuration: destructive,
// it needs an approval of disk.detach.
type DetachDiskInput struct {
	GuestRef
	Disk     string    `json:"disk"`
	Approval *Approval `json:"approval,omitempty"`
}

// DestroyGuestInput destroys a guest. Without an approval the host runs it
// only when its own ledger says the guest is the agent's to destroy.
type DestroyGuestInput struct {
	GuestRef
	Kind     string    `json:"kind,omitempty"`
	Approval *Approval `json:"approval,omitempty"`
}

// RestoreBackupInput restores a backup over an existing guest.
type RestoreBackupInput struct {
	GuestRef
	Kind     string    `json:"kind,omitempty"`
	Archive  string    `json:"archive"`
	Storage  string    `json:"storage,omitempty"`
	Approval *Approval `json:"approval,omitempty"`
}

// WipeVolumeInput frees a storage volume. Guest is the VMID the volume's
// name belongs to, shown for the operator; the host reads it from the
// volume itself.
type WipeVolumeInput struct {
	Host     string    `json:"host"`
	Guest    string    `json:"guest,omitempty"`
	Volume   string    `json:"volume"`
	Approval *Approval `json:"approval,omitempty"`
}

// ExecuteResult reports a performed action.
type ExecuteResult struct {
	UPID   string `json:"upid,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Status is the guest's power status as a power step left it
	// ("running", "stopped"), when the step knows it without another read.
	Status string `json:"status,omitempty"`
	// After is the guest as a create left it, from the read that recorded
	// it in the host's ledger.
	After *Observation `json:"after,omitempty"`
	// Start is the result of the start that followed a create in the same
	// step (CreateGuestInput.Start).
	Start *ExecuteResult `json:"start,omitempty"`
}

// GuestSummary is one guest of a node listing, enough to detect drift.
type GuestSummary struct {
	VMID      int          `json:"vmid"`
	Kind      desired.Kind `json:"kind"`
	Name      string       `json:"name,omitempty"`
	Status    string       `json:"status"`
	MemoryMiB int          `json:"memory_mib"`
	Cores     int          `json:"cores"`
}

// ListGuestsInput asks ListGuests for a host workflow's pass. Its zero
// value, which host workflows before versionHostFromGuests send (they send
// no input), asks for the listing and the holding guests.
type ListGuestsInput struct {
	// Drift asks the host to judge the listing itself against the desired
	// states the guest workflows publish in their memo (MemoDesired) and
	// those in Announced, and to answer with the verdict (Managed, Drifted,
	// Unmanaged, Holding) instead of the listing: a pass's history then
	// holds a few VMIDs, not every guest of the node.
	Drift bool `json:"drift,omitempty"`
	// Announced are the desired states that guest workflows recorded before
	// versionGuestDesiredMemo announced to the host workflow; a guest's
	// published desired state takes precedence over its announced one.
	Announced map[string]desired.Spec `json:"announced,omitempty"`
}

// ListGuestsResult is every guest of the host's node, from one API call,
// and the guests whose workflow holds; with ListGuestsInput.Drift, the
// verdict on the listing instead of the listing.
type ListGuestsResult struct {
	Guests []GuestSummary `json:"guests"`
	// Holding are the guests whose workflow waits for a signature, is in
	// conflict or is converging (its pass reads the guest itself), as
	// Temporal's visibility shows them (a claim: it only keeps the host
	// workflow from waking them, and the host from reading them). Empty
	// when it could not be read. With Drift, only desired guests.
	Holding []int `json:"holding,omitempty"`
	// Managed, Drifted and Unmanaged are the verdict asked for by Drift:
	// the guests with a desired state, those of them the listing shows
	// otherwise, and the listed guests without one.
	Managed   []int `json:"managed,omitempty"`
	Drifted   []int `json:"drifted,omitempty"`
	Unmanaged []int `json:"unmanaged,omitempty"`
}

// MemoDesired is the memo field in which a guest workflow since
// versionGuestDesiredMemo publishes its desired state (a desired.Spec) for
// the host's pass.
const MemoDesired = "desired"

// WakeGuestsInput asks for guest workflows to re-read their guests,
// starting those that do not run.
type WakeGuestsInput struct {
	Host   string `json:"host"`
	VMIDs  []int  `json:"vmids"`
	Reason string `json:"reason"`
}

// WakeGuestInput asks for a guest workflow to re-read its guest, starting
// it if it does not run.
type WakeGuestInput struct {
	Host   string `json:"host"`
	VMID   int    `json:"vmid"`
	Reason string `json:"reason"`
}

// SignedJobInput is a one-shot destructive operation with its approval.
type SignedJobInput struct {
	Host     string         `json:"host"`
	Action   desired.Action `json:"action"`
	Approval Approval       `json:"approval"`
}

// SignedJobResult reports a finished signed job.
type SignedJobResult struct {
	Op       string    `json:"op"`
	Guest    string    `json:"guest"`
	Detail   string    `json:"detail,omitempty"`
	Finished time.Time `json:"finished"`
}

// ErrTypeGateRejection is the error type under which the host refuses an
// approval; the gate's code (pending_signature, binding_mismatch, replay,
// ...) is its one detail. Every other error is the action's own.
const ErrTypeGateRejection = "GateRejection"

// Error types of refused updates, for clients to branch on.
const (
	ErrTypeInvalidSpec     = "InvalidSpec"     // set-desired: the spec is invalid or for another guest
	ErrTypeNotPending      = "NotPending"      // approve: nothing waits for a signature
	ErrTypeInvalidApproval = "InvalidApproval" // approve: blob or signature missing
	ErrTypeInvalidJob      = "InvalidJob"      // run-job: not a job for this guest workflow
)
