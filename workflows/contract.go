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
	ActivityObserveGuest  = "ObserveGuest"
	ActivityExecuteAction = "ExecuteAction"
	ActivityListGuests    = "ListGuests"
	ActivityWakeGuest     = "WakeGuest"
	ActivityRunSignedJob  = "RunSignedJob"
)

// ObserveInput asks for one guest's state.
type ObserveInput struct {
	VMID int `json:"vmid"`
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

// ExecuteResult reports a performed action.
type ExecuteResult struct {
	UPID   string `json:"upid,omitempty"`
	Detail string `json:"detail,omitempty"`
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

// ListGuestsResult is every guest of the host's node, from one API call.
type ListGuestsResult struct {
	Guests []GuestSummary `json:"guests"`
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
)
