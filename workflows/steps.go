package workflows

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// ApprovedStepTimeout bounds an approved destructive step with all its
// retries. Time, not an attempt count, bounds it: the host admitted the
// approval once, so a retry after a lock, a Proxmox outage or a worker
// restart finishes the same act however long the signed op was valid for.
const ApprovedStepTimeout = 6 * time.Hour

// Activity options of the workflows' steps.
var (
	// readStep reads Proxmox or lists it.
	readStep = workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second, MaximumAttempts: 10},
	}
	// localReadStep is readStep for a read that runs as a local activity,
	// in the worker that runs the workflow task: one read of one guest,
	// short, changing nothing, so nothing is lost when a worker dies in it
	// (the next workflow task reads again). Its attempts are readStep's, in
	// at most ten minutes; the SDK keeps the workflow task alive meanwhile
	// and waits between later attempts on a timer.
	localReadStep = workflow.LocalActivityOptions{
		ScheduleToCloseTimeout: 10 * time.Minute,
		StartToCloseTimeout:    time.Minute,
		RetryPolicy:            readStep.RetryPolicy,
	}
	// benignStep changes a guest without an approval. A lost worker is
	// noticed within the heartbeat timeout and the retry resumes the task.
	benignStep = workflow.ActivityOptions{
		StartToCloseTimeout: 30 * time.Minute,
		HeartbeatTimeout:    HeartbeatTimeout,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute, MaximumAttempts: 20,
		},
	}
	// approvedStep runs an approved destructive act (or a signed job): retried
	// until ApprovedStepTimeout, however many attempts that takes.
	approvedStep = workflow.ActivityOptions{
		ScheduleToCloseTimeout: ApprovedStepTimeout,
		StartToCloseTimeout:    2 * time.Hour,
		HeartbeatTimeout:       HeartbeatTimeout,
		RetryPolicy:            &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute},
	}
)

// step is one operation as an activity call.
type step struct {
	activity string
	input    any
	options  workflow.ActivityOptions
}

// errNoStep is an action no activity performs.
var errNoStep = errors.New("no activity performs this op")

// stepFor turns a planned action, or a signed job's action, into the
// activity that performs it. approval, when set, travels with it; the host
// decides from its own facts whether the step needed one.
func stepFor(a desired.Action, approval *Approval) (step, error) {
	opts := benignStep
	if approval != nil {
		opts = approvedStep
	}
	if a.Op == gate.OpVolumeWipe {
		return step{ActivityWipeVolume, WipeVolumeInput{Host: a.Host, Guest: a.Guest, Volume: stringParam(a.Params, "volume"), Approval: approval}, opts}, nil
	}
	vmid, err := strconv.Atoi(a.Guest)
	if err != nil {
		return step{}, fmt.Errorf("%s: guest %q is not a VMID: %w", a.Op, a.Guest, errNoStep)
	}
	ref := GuestRef{Host: a.Host, VMID: vmid}
	switch a.Op {
	case desired.OpCreate:
		return step{ActivityCreateGuest, createInput(ref, a.Params), opts}, nil
	case desired.OpStart:
		return step{ActivityStartGuest, ref, opts}, nil
	case desired.OpShutdown:
		return step{ActivityShutdownGuest, ShutdownGuestInput{GuestRef: ref,
			TimeoutSeconds: intParam(a.Params, "timeout_seconds"), ForceStop: boolParam(a.Params, "force_stop")}, opts}, nil
	case desired.OpConfig:
		return step{ActivitySetConfig, SetConfigInput{GuestRef: ref, Set: a.Params}, opts}, nil
	case desired.OpDetach:
		return step{ActivityDetachDisk, DetachDiskInput{GuestRef: ref, Disk: stringParam(a.Params, "disk"), Approval: approval}, opts}, nil
	case desired.OpDestroy:
		return step{ActivityDestroyGuest, DestroyGuestInput{GuestRef: ref, Kind: stringParam(a.Params, "kind"), Approval: approval}, opts}, nil
	case gate.OpGuestRestore:
		return step{ActivityRestoreBackup, RestoreBackupInput{GuestRef: ref, Kind: stringParam(a.Params, "kind"),
			Archive: stringParam(a.Params, "archive"), Storage: stringParam(a.Params, "storage"), Approval: approval}, opts}, nil
	}
	return step{}, fmt.Errorf("%s: %w", a.Op, errNoStep)
}

// withHints adds to a step's input what the workflow knows of the guest
// (versionGuestCost): a start learns the guest's kind and status, a create
// that the pass read no guest.
func withHints(input any, known desired.Observed) any {
	switch in := input.(type) {
	case GuestRef:
		if known.Exists && known.Kind != "" && known.Status != "" {
			return StartGuestInput{GuestRef: in, Known: &KnownState{Kind: known.Kind, Status: known.Status}}
		}
	case CreateGuestInput:
		in.ExpectAbsent = !known.Exists
		return in
	}
	return input
}

// createInput reads a planned create's params (see desired.Make).
func createInput(ref GuestRef, p map[string]any) CreateGuestInput {
	in := CreateGuestInput{
		GuestRef: ref, Kind: desired.Kind(stringParam(p, "kind")), Name: stringParam(p, "name"),
		MemoryMiB: intParam(p, "memory"), Cores: intParam(p, "cores"),
		OSTemplate: stringParam(p, "ostemplate"), Scratch: boolParam(p, "scratch"),
		Disks: stringMap(p, "disks"), Options: stringMap(p, "options"),
	}
	if tags := stringParam(p, "tags"); tags != "" {
		in.Tags = strings.Split(tags, ";")
	}
	return in
}

// Params are Go values when the workflow planned them and JSON values when
// they came in a message: every number may be an int or a float64.

func stringParam(p map[string]any, key string) string {
	s, _ := p[key].(string)
	return s
}

func intParam(p map[string]any, key string) int {
	switch v := p[key].(type) {
	case int:
		return v
	case float64:
		return int(v)
	}
	return 0
}

func boolParam(p map[string]any, key string) bool {
	b, _ := p[key].(bool)
	return b
}

func stringMap(p map[string]any, key string) map[string]string {
	m, _ := p[key].(map[string]any)
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k], _ = v.(string)
	}
	return out
}
