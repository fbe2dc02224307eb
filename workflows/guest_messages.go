package workflows

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// Names of the guest workflow's messages.
const (
	// UpdateSetDesired and SignalSetDesired carry a desired.Spec. The Update
	// answers with the accepted generation or the validation error; the
	// Signal is for Signal-With-Start by the hub.
	UpdateSetDesired = "set-desired"
	SignalSetDesired = "set-desired"
	// SignalApprove and UpdateApprove carry an Approval for the pending
	// destructive action. The Update answers with the host's verdict.
	SignalApprove = "approve"
	UpdateApprove = "approve"
	// SignalReconcile asks the workflow to re-read its guest now, also while
	// an action waits for a signature (the guest is planned again). Its
	// payload, a string, is only logged.
	SignalReconcile = "reconcile"
	// UpdateRunJob carries a SignedJobInput: a signed one-shot operation on
	// this guest (guest.destroy, guest.restore, volume.wipe), which the
	// workflow runs between two passes, so that no step of its own runs
	// beside it. It answers with the job's ExecuteResult or its failure; a
	// refusal by the host is a GateRejection with the gate's code.
	UpdateRunJob = "run-job"
	// QueryStatus returns a GuestStatus; QueryPending the PendingAction or nil.
	QueryStatus  = "status"
	QueryPending = "pending"
)

// Phases of a guest workflow, as shown in FelhomPhase.
const (
	PhaseWaiting    = "waiting_for_desired_state"
	PhaseConverging = "converging"
	PhaseConverged  = "converged"
	PhasePending    = "pending_signature"
	PhaseFailed     = "failed"
	PhaseConflict   = "conflict"
	// PhaseRunningJob: a signed job on the guest runs (see UpdateRunJob).
	PhaseRunningJob = "running_job"
)

// GuestWorkflowID is the ID of the workflow that owns one guest: Temporal
// runs at most one execution per ID, which serialises every mutation of
// the guest.
func GuestWorkflowID(host string, vmid int) string {
	return "guest/" + host + "/" + strconv.Itoa(vmid)
}

// GuestInput starts (or continues) a guest workflow.
type GuestInput struct {
	Host string `json:"host"`
	VMID int    `json:"vmid"`
	// Desired may be empty at start; it then arrives by Update or Signal.
	Desired *desired.Spec `json:"desired,omitempty"`
	// Carried over by continue-as-new.
	Generation int            `json:"generation,omitempty"`
	Recent     []ActionRecord `json:"recent,omitempty"`
	// ResyncEvery is how often a converged guest is read again on its own.
	// Zero (and one hour, the default before versionGuestCost) means never:
	// the host workflow wakes a guest that drifted (see versionGuestCost);
	// runs recorded before versionGuestCost read it every hour.
	ResyncEvery time.Duration `json:"resync_every,omitempty"`
	// MaxHistoryEvents bounds a run's history before it continues as new
	// (sooner when the server suggests it). Zero means 2000.
	MaxHistoryEvents int `json:"max_history_events,omitempty"`
	// RetryEvery is how long a failed pass waits before the guest is read
	// again on its own; a new desired state or a wake-up is sooner. Zero
	// means five minutes.
	RetryEvery time.Duration `json:"retry_every,omitempty"`
	// Carry is the rest of a run's state, handed over by continue-as-new.
	Carry *GuestCarry `json:"carry,omitempty"`
}

// withDefaults fills the zero settings of a GuestInput.
func (in GuestInput) withDefaults() GuestInput {
	if in.ResyncEvery == 0 {
		in.ResyncEvery = time.Hour
	}
	if in.MaxHistoryEvents == 0 {
		in.MaxHistoryEvents = 2000
	}
	if in.RetryEvery == 0 {
		in.RetryEvery = 5 * time.Minute
	}
	return in
}

// GuestCarry is what a guest workflow run hands to the next when it
// continues as new, beside Desired, Generation and Recent: the next run
// picks up where this one stopped, a pending action included.
type GuestCarry struct {
	Phase     string `json:"phase"`
	LastError string `json:"last_error,omitempty"`
	// Pending is the action waiting for a signature; the next run shows it
	// at once and, when its first pass plans the same action again, keeps
	// its Since and LastRejection.
	Pending *PendingAction `json:"pending,omitempty"`
	// ReadAgain asks the next run to read its guest at once.
	ReadAgain bool `json:"read_again,omitempty"`
	// NextPass is when the guest is due to be read on its own: the resync
	// after a pass, the retry after a failure.
	NextPass time.Time `json:"next_pass"`
	// Unconverged counts passes in a row that ran their whole plan and
	// found more to do.
	Unconverged int `json:"unconverged,omitempty"`
	// Observed and Provenance are the guest as last read (or as the steps
	// left it), shown by the next run until it reads the guest: since
	// versionGuestCost a converged guest is read only when it drifts.
	Observed   *desired.Observed `json:"observed,omitempty"`
	Provenance *Provenance       `json:"provenance,omitempty"`
}

// ActionRecord is one performed or refused action, newest last.
type ActionRecord struct {
	Action desired.Action `json:"action"`
	Result string         `json:"result"` // done | failed | rejected | compensated
	Detail string         `json:"detail,omitempty"`
	At     time.Time      `json:"at"`
}

// PendingAction is a destructive action waiting for a signature, with the
// op an operator signs: fill in nonce, not_before, expires_at and key_id,
// canonicalise, sign.
type PendingAction struct {
	Action     desired.Action `json:"action"`
	OpTemplate OpTemplate     `json:"op_template"`
	Since      time.Time      `json:"since"`
	// LastRejection is the code of the last refused approval, if any.
	LastRejection string `json:"last_rejection,omitempty"`
}

// OpTemplate is the unsigned part of the op blob that authorises Action.
type OpTemplate struct {
	Op      string         `json:"op"`
	HostID  string         `json:"host_id"`
	GuestID string         `json:"guest_id"`
	Params  map[string]any `json:"params"`
}

// GuestStatus is what the status query returns.
type GuestStatus struct {
	Host       string            `json:"host"`
	VMID       int               `json:"vmid"`
	Phase      string            `json:"phase"`
	Generation int               `json:"generation"`
	Desired    *desired.Spec     `json:"desired,omitempty"`
	Observed   *desired.Observed `json:"observed,omitempty"`
	Plan       *desired.Plan     `json:"plan,omitempty"`
	Pending    *PendingAction    `json:"pending,omitempty"`
	// Provenance is what the host's ledger said at the last read; shown for
	// planning, never trusted by the host.
	Provenance *Provenance    `json:"provenance,omitempty"`
	LastError  string         `json:"last_error,omitempty"`
	Recent     []ActionRecord `json:"recent,omitempty"`
	// NextPass is when the guest will be read again on its own (zero before
	// the first pass, and in runs before this field).
	NextPass time.Time `json:"next_pass,omitzero"`
}

// ApprovalVerdict answers UpdateApprove.
type ApprovalVerdict struct {
	Accepted bool   `json:"accepted"`
	Code     string `json:"code,omitempty"` // gate rejection code when refused
	Detail   string `json:"detail,omitempty"`
}

// SetDesiredResult answers UpdateSetDesired.
type SetDesiredResult struct {
	Generation int `json:"generation"`
}

// recentLimit is how many ActionRecords a guest workflow keeps.
const recentLimit = 20

// maxUnconvergedPasses is how many passes in a row may run their whole plan
// and still find more to do before the guest is declared failed: Proxmox
// does not take what is asked.
const maxUnconvergedPasses = 5

// checkSpec normalises spec and checks that it is this workflow's guest.
func checkSpec(in GuestInput, spec desired.Spec) (desired.Spec, error) {
	spec, err := desired.Normalise(spec)
	if err != nil {
		return spec, err
	}
	if spec.Host != in.Host || spec.VMID != in.VMID {
		return spec, &desired.FieldError{Field: "host/vmid", Reason: fmt.Sprintf("%s/%d is not this workflow's guest %s/%d", spec.Host, spec.VMID, in.Host, in.VMID)}
	}
	return spec, nil
}

// specArg is a desired.Spec as the set-desired Update carries it, with
// the JSON fields of the payload that the spec does not have: decoding
// ignores them, and the validator refuses them, so that a misspelt field
// is not silently dropped. It decodes to the same Spec as before, so
// replayed histories see the same handler.
type specArg struct {
	desired.Spec
	unknown []string
}

func (a *specArg) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &a.Spec); err != nil {
		return err
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(b, &fields) != nil {
		return nil
	}
	for name := range fields {
		// encoding/json matches field names case-insensitively.
		if !slices.ContainsFunc(specFields, func(f string) bool { return strings.EqualFold(f, name) }) {
			a.unknown = append(a.unknown, name)
		}
	}
	slices.Sort(a.unknown)
	return nil
}

// specFields are the JSON names of desired.Spec's fields.
var specFields = func() []string {
	var names []string
	t := reflect.TypeFor[desired.Spec]()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}()

// validateSpec is the set-desired Update's validator: no unknown field,
// the spec's limits (desired.Limits), then checkSpec. Validators do not
// run on replay, so these checks, newer than some histories, stay out of
// the handler.
func validateSpec(in GuestInput, arg specArg) error {
	spec := arg.Spec
	var err error
	if len(arg.unknown) > 0 {
		err = &desired.FieldError{Field: strings.Join(arg.unknown, ", "),
			Reason: "not a field of a desired state (" + strings.Join(specFields, ", ") + ")"}
	}
	if err == nil {
		err = desired.Limits(spec)
	}
	if err == nil {
		_, err = checkSpec(in, spec)
	}
	if err != nil {
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidSpec, nil)
	}
	return nil
}

// checkApproval refuses, in an Update's validator, an approval the gate
// could never accept for its shape: a part missing, or larger than the gate
// reads (gate.MaxBlobLen, gate.MaxSignatureLen). Nothing of it enters the
// workflow's history.
func checkApproval(a Approval) error {
	switch {
	case a.Blob == "" || a.Signature == "":
		return errors.New("approval needs both blob and signature")
	case len(a.Blob) > gate.MaxBlobLen:
		return fmt.Errorf("approval blob is %d bytes, more than the %d of an op", len(a.Blob), gate.MaxBlobLen)
	case len(a.Signature) > gate.MaxSignatureLen:
		return fmt.Errorf("approval signature is %d bytes, more than the %d of an SSH signature", len(a.Signature), gate.MaxSignatureLen)
	}
	return nil
}

// rejection returns the gate's code when err is the host refusing the
// approval; any other failure is the action's own.
func rejection(err error) (code, detail string) {
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || appErr.Type() != ErrTypeGateRejection {
		return "", ""
	}
	if appErr.HasDetails() {
		_ = appErr.Details(&code)
	}
	if code == "" {
		code = "rejected"
	}
	return code, appErr.Message()
}

// classifierFor labels actions with the gate's classifier and the
// provenance the host reported. The label only decides whether the workflow
// waits for a signature; the host classifies again from its own facts.
// A label never relies on a compensating-rollback exemption: a plain
// "absent" waits for a signature, and compensate asks the host directly.
// Hosts before instance-bound provenance reported the run that created the
// guest and exempted that run's destroys; histories written then replay
// with that label.
func classifierFor(p Provenance, host string, vmid int, run string) desired.Classifier {
	prov := gate.Provenance{AgentCreated: p.AgentCreated, Scratch: p.Scratch}
	guest := strconv.Itoa(vmid)
	return func(op string) bool {
		if p.AgentCreated && p.CreatedByRun != "" && p.CreatedByRun == run && legacyRunExempt[op] {
			return false
		}
		return gate.Classify(gate.Action{Op: op, HostID: host, GuestID: guest}, prov, time.Time{}) == gate.Destructive
	}
}

// legacyRunExempt are the ops that hosts before instance-bound provenance
// exempted for the run that created the guest.
var legacyRunExempt = map[string]bool{
	gate.OpGuestDestroy: true, gate.OpGuestRestore: true, gate.OpVolumeWipe: true, gate.OpDiskDetach: true, gate.OpDiskShrink: true,
}

// sameSpec reports whether two normalised specs ask for the same thing.
func sameSpec(a, b desired.Spec) bool { return sameJSON(a, b) }

// sameAction reports whether two actions are the same act: op, host, guest
// and params, whether the params were planned (Go values) or decoded from
// JSON.
func sameAction(a, b desired.Action) bool {
	return a.Op == b.Op && a.Host == b.Host && a.Guest == b.Guest && sameJSON(a.Params, b.Params)
}

// sameJSON compares two values by their JSON encoding, which sorts map keys
// and writes 2 and 2.0 alike.
func sameJSON(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb)
}
