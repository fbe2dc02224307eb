package activities

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.temporal.io/api/serviceerror"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// Host is the set of activities the workflows call by name (see the
// Activity* constants in package workflows). It translates planned actions
// into the Proxmox activities of this package, which do the work, heartbeat
// and resume; every destructive one asks the gate on this host itself.
type Host struct {
	Proxmox *Proxmox
	// Temporal lets WakeGuest signal-with-start guest workflows.
	Temporal client.Client
	// Signers are the host's pinned keys, which a signers.rotate job replaces.
	Signers *PinnedSigners
}

// ObserveGuest reads one guest and what this host's ledger says of it.
//
// With Announce it first hands the desired-state notice to the host
// workflow; with ExpectAbsent it asks the cluster whether the VMID is free
// before reading (see workflows.ObserveInput).
func (h *Host) ObserveGuest(ctx context.Context, in workflows.ObserveInput) (_ workflows.Observation, err error) {
	if in.Announce != nil {
		h.announce(ctx, *in.Announce)
	}
	if in.ExpectAbsent {
		what := "read guest " + vmidString(in.VMID)
		defer recoverPanic(what, &err)
		free, err := h.Proxmox.vmidFree(ctx, in.VMID)
		if err != nil {
			return workflows.Observation{}, classify(what, err)
		}
		if free {
			return workflows.Observation{}, nil
		}
	}
	g, err := h.Proxmox.ReadGuest(ctx, ReadGuestInput{VMID: in.VMID})
	if err != nil {
		return workflows.Observation{}, err
	}
	h.Proxmox.remember(g)
	return h.observation(g), nil
}

// observation is guest g, as a guest workflow plans with it.
func (h *Host) observation(g Guest) workflows.Observation {
	p := h.Proxmox.provenanceOf(g)
	return workflows.Observation{
		Guest: desired.Observed{
			Exists: g.Exists, Kind: desired.Kind(g.Kind), Status: g.Status, Name: g.Name,
			MemoryMiB: g.MemoryMiB, Cores: g.Cores, Disks: g.Disks, Tags: g.Tags,
			Protection: g.Protection, Lock: g.Lock,
		},
		Provenance: workflows.Provenance{AgentCreated: p.AgentCreated, Scratch: p.Scratch},
	}
}

// announce hands a guest workflow's desired state to this host's host
// workflow, as the guest workflow's own signal did before
// versionGuestCost. The notice is the guest workflow's claim, and the host
// workflow only compares it with listings; when it cannot be delivered (no
// host workflow yet), that is logged, as before: the guest still
// converges, only drift is noticed later.
func (h *Host) announce(ctx context.Context, n workflows.DesiredNotice) {
	if h.Temporal == nil {
		return
	}
	if err := h.Temporal.SignalWorkflow(ctx, workflows.HostWorkflowID(h.Proxmox.HostID), "", workflows.SignalDesiredChanged, n); err != nil {
		h.Proxmox.log().Info("host workflow not told of the desired state", "vmid", n.VMID, "err", err)
	}
}

// ExecuteAction performs one planned action of a guest workflow. Guest
// workflows recorded before the per-operation activities (steps.go) call it;
// it stays registered so that they run on.
func (h *Host) ExecuteAction(ctx context.Context, in workflows.ExecuteInput) (workflows.ExecuteResult, error) {
	a := in.Action
	if a.Host != h.Proxmox.HostID {
		return workflows.ExecuteResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("action for host %q sent to host %q", a.Host, h.Proxmox.HostID), ErrTypeBadRequest, nil)
	}
	vmid, err := strconv.Atoi(a.Guest)
	if err != nil {
		return workflows.ExecuteResult{}, temporal.NewNonRetryableApplicationError("guest "+strconv.Quote(a.Guest)+" is not a VMID", ErrTypeBadRequest, nil)
	}
	approval := gateApproval(in.Approval)
	kind := param[string](a.Params, "kind")
	p := h.Proxmox
	var res TaskResult
	switch a.Op {
	case desired.OpCreate:
		return h.create(ctx, vmid, a.Params)
	case desired.OpStart:
		res, err = p.StartGuest(ctx, GuestInput{VMID: vmid})
	case gate.OpGuestStop:
		res, err = p.StopGuest(ctx, GuestInput{VMID: vmid})
	case gate.OpGuestReboot:
		res, err = p.RebootGuest(ctx, GuestInput{VMID: vmid})
	case desired.OpShutdown:
		res, err = p.ShutdownGuest(ctx, ShutdownGuestInput{
			VMID: vmid, TimeoutSeconds: param[int](a.Params, "timeout_seconds"), ForceStop: param[bool](a.Params, "force_stop"),
		})
	case desired.OpConfig:
		res, err = p.SetConfig(ctx, SetConfigInput{VMID: vmid, Set: a.Params})
	case desired.OpDetach:
		res, err = p.SetConfig(ctx, SetConfigInput{VMID: vmid, Delete: []string{param[string](a.Params, "disk")}, Approval: approval})
	case desired.OpDestroy:
		res, err = p.DestroyGuest(ctx, DestroyGuestInput{VMID: vmid, Kind: kind, Approval: approval})
	default:
		return workflows.ExecuteResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("op %q cannot be run by a guest workflow", a.Op), ErrTypeBadRequest, nil)
	}
	return taskOutcome(res, err)
}

// create runs ExecuteAction's guest.create through CreateGuest, from the
// action's params as decoded from JSON.
func (h *Host) create(ctx context.Context, vmid int, params map[string]any) (workflows.ExecuteResult, error) {
	in := workflows.CreateGuestInput{
		GuestRef: workflows.GuestRef{Host: h.Proxmox.HostID, VMID: vmid},
		Kind:     desired.Kind(param[string](params, "kind")), Name: param[string](params, "name"),
		MemoryMiB: param[int](params, "memory"), Cores: param[int](params, "cores"),
		OSTemplate: param[string](params, "ostemplate"), Scratch: param[bool](params, "scratch"),
		Disks: map[string]string{}, Options: map[string]string{},
	}
	for k, v := range param[map[string]any](params, "disks") {
		in.Disks[k], _ = v.(string)
	}
	for k, v := range param[map[string]any](params, "options") {
		in.Options[k], _ = v.(string)
	}
	if t := param[string](params, "tags"); t != "" {
		in.Tags = strings.Split(t, ";")
	}
	return h.CreateGuest(ctx, in)
}

// ListGuests lists every guest of the node, each confirmed by a read of its
// own when its listing row changed (the listing's figures lag and are
// shaped unlike the desired state: see GuestSummary and listing.go), and
// which guest workflows of this host hold (see guestWorkflows). A guest
// whose configuration changed where the listing does not show it has its
// workflow woken here (wakeChanged).
//
// A guest whose workflow is converging is not read: its pass reads it, and
// the host workflow does not wake it (it is among Holding). So converging
// a fleet costs the host's listing nothing per guest.
//
// With in.Drift the answer is the verdict on the listing
// (workflows.JudgeListing) against the desired states the guest workflows
// publish and those in in.Announced; without them there is nothing to
// judge against, so a visibility that cannot be read fails the call.
func (h *Host) ListGuests(ctx context.Context, in workflows.ListGuestsInput) (_ workflows.ListGuestsResult, err error) {
	what := "list guests of node " + h.Proxmox.Node
	defer recoverPanic(what, &err)
	running, err := h.guestWorkflows(ctx)
	if err != nil && in.Drift {
		return workflows.ListGuestsResult{}, fmt.Errorf("%s: read the desired states the guest workflows publish: %w", what, err)
	}
	if err != nil {
		h.Proxmox.log().Warn("cannot tell which guest workflows hold: waking every drifted guest", "err", err)
	}
	holding := running.holding()
	list, changed, err := h.Proxmox.listGuestsSkipping(ctx, holding)
	if err != nil {
		return workflows.ListGuestsResult{}, classify(what, err)
	}
	guests := make([]workflows.GuestSummary, 0, len(list))
	for _, g := range list {
		guests = append(guests, workflows.GuestSummary{
			VMID: g.VMID, Kind: desired.Kind(g.Kind), Name: g.Name, Status: g.Status, MemoryMiB: g.MemoryMiB, Cores: g.Cores,
		})
	}
	h.wakeChanged(ctx, changed, holding)
	if in.Drift {
		return workflows.JudgeListing(in.Announced, running.desired(), guests, holding), nil
	}
	return workflows.ListGuestsResult{Guests: guests, Holding: holding}, nil
}

// wakeChanged asks the running workflow of each guest in vmids, unless it
// holds, to read its guest again: its configuration changed where the
// listing does not show it (a pending change, a disk, an option), which
// only the guest's own plan can judge. A guest without a running workflow
// is not managed and is left alone; a wake that fails is logged, and the
// guest's next change or desired state reads it.
func (h *Host) wakeChanged(ctx context.Context, vmids, holding []int) {
	if h.Temporal == nil {
		return
	}
	for _, vmid := range vmids {
		if slices.Contains(holding, vmid) {
			continue
		}
		err := h.Temporal.SignalWorkflow(ctx, workflows.GuestWorkflowID(h.Proxmox.HostID, vmid), "", workflows.SignalReconcile,
			"its configuration changed where the host listing does not show it")
		var notFound *serviceerror.NotFound
		if err != nil && !errors.As(err, &notFound) {
			h.Proxmox.log().Warn("could not wake a guest whose configuration changed", "vmid", vmid, "err", err)
		}
	}
}

// guestWorkflow is what Temporal's visibility shows of one running guest
// workflow of this host: its phase (FelhomPhase) and the desired state it
// publishes (workflows.MemoDesired), if any.
type guestWorkflow struct {
	phase   string
	desired *desired.Spec
}

// runningGuests are this host's running guest workflows by VMID.
type runningGuests map[int]guestWorkflow

// holding returns the VMIDs of the guest workflows that wait for a
// signature, are in conflict or are converging. Waking the first two
// changes nothing until an operator acts; a converging one reads its guest
// in its pass.
func (r runningGuests) holding() []int {
	var vmids []int
	for vmid, w := range r {
		if w.phase == workflows.PhasePending || w.phase == workflows.PhaseConflict || w.phase == workflows.PhaseConverging {
			vmids = append(vmids, vmid)
		}
	}
	slices.Sort(vmids)
	return vmids
}

// desired returns the desired states the guest workflows publish.
func (r runningGuests) desired() map[int]desired.Spec {
	out := map[int]desired.Spec{}
	for vmid, w := range r {
		if w.desired != nil {
			out[vmid] = *w.desired
		}
	}
	return out
}

// guestWorkflows reads this host's running guest workflows from Temporal's
// visibility. The answer is Temporal's, a claim, used only to wake and
// read fewer guests and to judge drift, which at most wakes a guest
// workflow to read its guest and plan against its own desired state; an
// entry that does not name one of this host's guest workflows, or whose
// published desired state is not for that guest, is left out (logged).
func (h *Host) guestWorkflows(ctx context.Context) (runningGuests, error) {
	if h.Temporal == nil {
		return nil, nil
	}
	query := fmt.Sprintf("WorkflowType = 'GuestReconcileWorkflow' AND ExecutionStatus = 'Running' AND %s = '%s'",
		visibility.Host, h.Proxmox.HostID)
	out := runningGuests{}
	var token []byte
	for {
		resp, err := h.Temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: query, NextPageToken: token})
		if err != nil {
			return nil, err
		}
		for _, e := range resp.GetExecutions() {
			vmid, w, err := readGuestWorkflow(h.Proxmox.HostID, e)
			if err != nil {
				h.Proxmox.log().Warn("guest workflow in visibility ignored", "workflow_id", e.GetExecution().GetWorkflowId(), "err", err)
				continue
			}
			out[vmid] = w
		}
		if token = resp.GetNextPageToken(); len(token) == 0 {
			return out, nil
		}
	}
}

// readGuestWorkflow reads one visibility record of a guest workflow of
// host: the VMID its workflow ID names, its phase and its published
// desired state.
func readGuestWorkflow(host string, e *workflowpb.WorkflowExecutionInfo) (int, guestWorkflow, error) {
	id := e.GetExecution().GetWorkflowId()
	vmid, err := strconv.Atoi(id[strings.LastIndex(id, "/")+1:])
	if err != nil || id != workflows.GuestWorkflowID(host, vmid) {
		return 0, guestWorkflow{}, fmt.Errorf("workflow ID %q is not a guest workflow of host %q", id, host)
	}
	var w guestWorkflow
	dc := converter.GetDefaultDataConverter()
	if p := e.GetSearchAttributes().GetIndexedFields()[visibility.Phase]; p != nil {
		if err := dc.FromPayload(p, &w.phase); err != nil {
			return 0, guestWorkflow{}, fmt.Errorf("search attribute %s: %w", visibility.Phase, err)
		}
	}
	if p := e.GetMemo().GetFields()[workflows.MemoDesired]; p != nil {
		var spec desired.Spec
		if err := dc.FromPayload(p, &spec); err != nil {
			return 0, guestWorkflow{}, fmt.Errorf("memo %s: %w", workflows.MemoDesired, err)
		}
		if spec.Host != host || spec.VMID != vmid {
			return 0, guestWorkflow{}, fmt.Errorf("memo %s names guest %s/%d", workflows.MemoDesired, spec.Host, spec.VMID)
		}
		w.desired = &spec
	}
	return vmid, w, nil
}

// WakeGuests asks each guest workflow to read its guest again, starting
// those that do not run (Signal-With-Start). It wakes every guest it can
// and reports those it could not; a retry wakes them all again, which only
// costs a pass.
func (h *Host) WakeGuests(ctx context.Context, in workflows.WakeGuestsInput) error {
	if err := h.onThisHost(in.Host); err != nil {
		return err
	}
	var errs []error
	for _, vmid := range in.VMIDs {
		KeepAlive(ctx)
		if err := h.WakeGuest(ctx, workflows.WakeGuestInput{Host: in.Host, VMID: vmid, Reason: in.Reason}); err != nil {
			errs = append(errs, fmt.Errorf("guest %d: %w", vmid, err))
		}
	}
	return errors.Join(errs...)
}

// WakeGuest asks a guest workflow to read its guest again, starting the
// workflow if it does not run (Signal-With-Start).
func (h *Host) WakeGuest(ctx context.Context, in workflows.WakeGuestInput) error {
	_, err := h.Temporal.SignalWithStartWorkflow(ctx, workflows.GuestWorkflowID(in.Host, in.VMID), workflows.SignalReconcile, in.Reason,
		client.StartWorkflowOptions{TaskQueue: workflows.TaskQueue(in.Host)},
		workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: in.Host, VMID: in.VMID})
	return err
}

// RunSignedJob performs a one-shot destructive operation; the executor it
// calls verifies the approval on this host.
func (h *Host) RunSignedJob(ctx context.Context, in workflows.SignedJobInput) (workflows.ExecuteResult, error) {
	a := in.Action
	approval := gateApproval(&in.Approval)
	vmid, _ := strconv.Atoi(a.Guest)
	var (
		res TaskResult
		err error
	)
	switch a.Op {
	case gate.OpGuestRestore:
		res, err = h.Proxmox.RestoreBackup(ctx, RestoreBackupInput{
			VMID: vmid, Kind: param[string](a.Params, "kind"), Archive: param[string](a.Params, "archive"),
			Storage: param[string](a.Params, "storage"), Approval: approval,
		})
	case gate.OpVolumeWipe:
		res, err = h.Proxmox.WipeVolume(ctx, WipeVolumeInput{Volume: param[string](a.Params, "volume"), Approval: approval})
	case gate.OpGuestDestroy:
		res, err = h.Proxmox.DestroyGuest(ctx, DestroyGuestInput{VMID: vmid, Kind: param[string](a.Params, "kind"), Approval: approval})
	case gate.OpSignersRotate:
		if err := h.rotateSigners(ctx, a.Params, approval); err != nil {
			return taskOutcome(TaskResult{}, err)
		}
		return workflows.ExecuteResult{Detail: "signer keys replaced"}, nil
	default:
		return workflows.ExecuteResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("op %q is not a signed job this host runs", a.Op), ErrTypeBadRequest, nil)
	}
	return taskOutcome(res, err)
}

func gateApproval(a *workflows.Approval) *gate.Approval {
	if a == nil {
		return nil
	}
	return &gate.Approval{Blob: []byte(a.Blob), Signature: []byte(a.Signature)}
}

// taskOutcome reports a gate refusal under one error type, with the gate's
// code as its detail, so that workflows tell a refused approval from a
// failed action without knowing every code.
func taskOutcome(res TaskResult, err error) (workflows.ExecuteResult, error) {
	if err != nil {
		if code := gate.Code(err); code != "" && code != "internal" {
			var appErr *temporal.ApplicationError
			msg := err.Error()
			if errors.As(err, &appErr) {
				msg = appErr.Message()
			}
			return workflows.ExecuteResult{}, temporal.NewNonRetryableApplicationError(msg, workflows.ErrTypeGateRejection, nil, code)
		}
		return workflows.ExecuteResult{}, err
	}
	detail := "done"
	switch {
	case res.AlreadyDone:
		detail = "already in place"
	case res.Resumed:
		detail = "resumed task " + res.UPID
	case res.UPID != "":
		detail = "task " + res.UPID + " " + res.ExitStatus
	}
	return workflows.ExecuteResult{UPID: res.UPID, Detail: detail}, nil
}

// param reads a value of an action's params as decoded from JSON, where
// every number is a float64.
func param[T any](params map[string]any, key string) T {
	var zero T
	v, ok := params[key]
	if !ok {
		return zero
	}
	if f, isFloat := v.(float64); isFloat {
		if n, ok := any(int(f)).(T); ok {
			return n
		}
	}
	t, _ := v.(T)
	return t
}
