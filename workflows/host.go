package workflows

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// Names of the host workflow's messages.
const (
	// SignalDesiredChanged carries a DesiredNotice from a guest workflow.
	SignalDesiredChanged = "desired-changed"
	// SignalConfigure carries HostSettings: the worker sends its settings
	// when it starts, so that a changed configuration reaches a running
	// host workflow.
	SignalConfigure = "configure"
	// QueryHostStatus returns a HostStatus.
	QueryHostStatus = "host-status"
)

// HostSettings are the host workflow's settings from the worker's
// configuration; a zero field leaves the setting as it is.
type HostSettings struct {
	Interval time.Duration `json:"interval,omitempty"`
}

// HostWorkflowID is the ID of a host's supervisor workflow.
func HostWorkflowID(host string) string { return "host/" + host }

// DesiredNotice tells the host workflow a guest's desired state; a nil Spec
// removes the guest from the desired set.
type DesiredNotice struct {
	VMID int           `json:"vmid"`
	Spec *desired.Spec `json:"spec,omitempty"`
}

// HostInput starts (or continues) a host workflow.
type HostInput struct {
	Host string `json:"host"`
	// Interval between two listings of the node. Zero means one minute.
	Interval time.Duration `json:"interval,omitempty"`
	// Desired is the desired set the guest workflows' notices made,
	// carried over by continue-as-new. Since versionHostFromGuests it holds
	// only what guest workflows recorded before versionGuestDesiredMemo
	// announce; the others publish their desired state in their memo.
	Desired map[string]desired.Spec `json:"desired,omitempty"`
	// Passes bounded the passes of a run recorded before versionHostLoop;
	// runs since continue as new by history size (MaxHistoryEvents).
	Passes int `json:"passes,omitempty"`
	// MaxHistoryEvents bounds a run's history before it continues as new
	// (sooner when the server suggests it). Zero means 2000.
	MaxHistoryEvents int `json:"max_history_events,omitempty"`
	// LastPass is when the previous run last listed the node, carried over
	// so that the next pass keeps the interval.
	LastPass time.Time `json:"last_pass,omitzero"`
	// LastVerdict is the previous run's last verdict on the listing
	// (versionHostFromGuests), carried over so that the status shows it
	// until the next pass.
	LastVerdict *ListGuestsResult `json:"last_verdict,omitempty"`
}

// HostStatus is what the host-status query returns.
type HostStatus struct {
	Host      string    `json:"host"`
	LastPass  time.Time `json:"last_pass"`
	Managed   []int     `json:"managed"`
	Drifted   []int     `json:"drifted"`
	Unmanaged []int     `json:"unmanaged"`
	// Holding are the desired guests whose workflow waits for a signature,
	// is in conflict or is converging: drifted or not, they are not woken.
	Holding   []int         `json:"holding,omitempty"`
	Interval  time.Duration `json:"interval"`
	LastError string        `json:"last_error,omitempty"`
}

// versionHostLoop guards the loop below; runs recorded before it replay
// legacyHostWorkflow.
const versionHostLoop = "host-loop-by-history"

// versionHostWaits is the version of versionHostLoop whose wait for the
// next pass cancels its timer when a notice or a setting ends it first
// (awaitOrTimeout); at version 1 every notice left a timer to fire into an
// empty workflow task.
const versionHostWaits workflow.Version = 2

// versionHostFromGuests is the version of versionHostLoop whose pass reads
// the desired set where the guest workflows publish it (their memo, see
// versionGuestDesiredMemo) and has the host judge the listing against it
// (ListGuestsInput.Drift): guests no longer announce their desired state,
// which cost a signal and a workflow task of this workflow per guest, and
// a pass records a verdict, not the node's whole listing. Notices from
// guest workflows recorded earlier are still taken and handed to the pass
// (ListGuestsInput.Announced). It keeps everything of versionHostWaits.
const versionHostFromGuests workflow.Version = 3

// HostWorkflow supervises one host: at its interval it lists every guest of
// the node in one Proxmox call, compares the listing with the desired set
// (the desired states the guest workflows publish, and the notices of
// older ones), and wakes, in one activity, the guest workflows that
// drifted, except those that hold (waiting for a signature or in conflict:
// a wake-up changes nothing for them, and would only grow their history). A
// guest on the node that no desired state names is reported, never
// touched. Between passes it takes desired-state notices and the worker's
// settings, and it continues as new when its history is long, carrying the
// notices, the interval and the time of the last pass.
func HostWorkflow(ctx workflow.Context, in HostInput) error {
	v := workflow.GetVersion(ctx, versionHostLoop, workflow.DefaultVersion, versionHostFromGuests)
	if v == workflow.DefaultVersion {
		return legacyHostWorkflow(ctx, in)
	}
	h, err := startHost(ctx, in)
	if err != nil {
		return err
	}
	h.cancelWaits, h.fromGuests = v >= versionHostWaits, v >= versionHostFromGuests
	for {
		err := h.waitForNextPass(ctx)
		if errors.Is(err, errContinueAsNew) {
			return h.continueAsNew(ctx)
		}
		if err != nil {
			return err
		}
		h.pass(ctx)
	}
}

// hostState is the state of one host workflow run.
type hostState struct {
	in        HostInput
	status    HostStatus
	notices   workflow.ReceiveChannel
	configure workflow.ReceiveChannel
	// cancelWaits is versionHostWaits' path: see awaitOrTimeout.
	cancelWaits bool
	// fromGuests is versionHostFromGuests' path: see pass; verdict is its
	// last pass's verdict, which a continue-as-new carries.
	fromGuests bool
	verdict    *ListGuestsResult
}

func startHost(ctx workflow.Context, in HostInput) (*hostState, error) {
	if in.Interval == 0 {
		in.Interval = time.Minute
	}
	if in.MaxHistoryEvents == 0 {
		in.MaxHistoryEvents = 2000
	}
	if (in.Interval < MinDriftCheckInterval || in.MaxHistoryEvents < 1) &&
		workflow.GetVersion(ctx, versionInputFloors, workflow.DefaultVersion, 1) == 1 {
		// Only a hostile or mistaken start input is below these floors.
		in.Interval = max(in.Interval, MinDriftCheckInterval)
		if in.MaxHistoryEvents < 1 {
			in.MaxHistoryEvents = 2000
		}
	}
	if in.Desired == nil {
		in.Desired = map[string]desired.Spec{}
	}
	h := &hostState{
		in:        in,
		status:    HostStatus{Host: in.Host, LastPass: in.LastPass, Interval: in.Interval, Managed: sortedVMIDs(in.Desired)},
		notices:   workflow.GetSignalChannel(ctx, SignalDesiredChanged),
		configure: workflow.GetSignalChannel(ctx, SignalConfigure),
	}
	if v := in.LastVerdict; v != nil {
		h.status.Managed, h.status.Drifted, h.status.Unmanaged, h.status.Holding = v.Managed, v.Drifted, v.Unmanaged, v.Holding
	}
	if err := workflow.SetQueryHandler(ctx, QueryHostStatus, func() (HostStatus, error) { return h.status, nil }); err != nil {
		return nil, err
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, visibility.HostKey.ValueSet(in.Host)); err != nil {
		return nil, err
	}
	return h, nil
}

// waitForNextPass blocks until the interval since the last pass is up,
// taking notices and settings as they come. It returns errContinueAsNew
// when the history is long, and the cancellation when there is one.
func (h *hostState) waitForNextPass(ctx workflow.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h.takeSignals(ctx)
		if h.shouldContinueAsNew(ctx) {
			return errContinueAsNew
		}
		now, next := workflow.Now(ctx), h.status.LastPass.Add(h.in.Interval)
		if !now.Before(next) {
			return nil
		}
		woken := func() bool { return h.notices.Len() > 0 || h.configure.Len() > 0 || h.shouldContinueAsNew(ctx) }
		wait := timedWait(h.cancelWaits)
		if _, err := wait(ctx, next.Sub(now), woken); err != nil {
			return err
		}
	}
}

// pass lists the node, finds drift and wakes the drifted guests that do
// not hold. On versionHostFromGuests' path the host judges the listing
// against the desired states the guest workflows publish; before it, the
// workflow judged it against the notices it took.
func (h *hostState) pass(ctx workflow.Context) {
	st := &h.status
	st.LastPass = workflow.Now(ctx)
	actx := workflow.WithActivityOptions(ctx, readStep)
	var list ListGuestsResult
	var err error
	if h.fromGuests {
		in := ListGuestsInput{Drift: true, Announced: h.in.Desired}
		err = workflow.ExecuteActivity(actx, ActivityListGuests, in).Get(ctx, &list)
	} else {
		err = workflow.ExecuteActivity(actx, ActivityListGuests).Get(ctx, &list)
	}
	if err != nil {
		st.LastError = err.Error()
		return
	}
	st.LastError = ""
	if h.fromGuests {
		st.Managed, st.Drifted, st.Unmanaged, st.Holding = list.Managed, list.Drifted, list.Unmanaged, list.Holding
		h.verdict = &list
	} else {
		st.Drifted, st.Unmanaged = drift(h.in.Desired, list.Guests)
		st.Holding = slices.DeleteFunc(slices.Clone(list.Holding), func(vmid int) bool { return !h.desires(vmid) })
		slices.Sort(st.Holding)
	}
	wake := slices.DeleteFunc(slices.Clone(st.Drifted), func(vmid int) bool { return slices.Contains(st.Holding, vmid) })
	if len(wake) > 0 {
		in := WakeGuestsInput{Host: h.in.Host, VMIDs: wake, Reason: "host listing differs from the desired state"}
		if err := workflow.ExecuteActivity(actx, ActivityWakeGuests, in).Get(ctx, nil); err != nil {
			st.LastError = fmt.Sprintf("wake guests %v: %v", wake, err)
		}
	}
	workflow.SetCurrentDetails(ctx, fmt.Sprintf("**host %s**: %d managed, %d drifted at the last pass (%d holding), %d unmanaged guests %v",
		h.in.Host, len(st.Managed), len(st.Drifted), len(st.Holding), len(st.Unmanaged), st.Unmanaged))
}

func (h *hostState) desires(vmid int) bool {
	_, ok := h.in.Desired[strconv.Itoa(vmid)]
	return ok
}

// MinDriftCheckInterval is the shortest drift check interval a host
// workflow takes from a configure signal: anything shorter would list the
// node without pause. The worker's configuration refuses it too.
const MinDriftCheckInterval = time.Second

// versionMinInterval marks the runs that refuse a configured interval below
// MinDriftCheckInterval; it is asked only of such an interval, so other
// histories stay as they were.
const versionMinInterval = "host-min-interval"

// takeSignals applies the desired-state notices and settings that arrived.
func (h *hostState) takeSignals(ctx workflow.Context) {
	for {
		var n DesiredNotice
		if !h.notices.ReceiveAsync(&n) {
			break
		}
		if n.Spec == nil {
			delete(h.in.Desired, strconv.Itoa(n.VMID))
		} else {
			h.in.Desired[strconv.Itoa(n.VMID)] = *n.Spec
		}
	}
	if !h.fromGuests {
		// On versionHostFromGuests' path the pass says which guests are managed.
		h.status.Managed = sortedVMIDs(h.in.Desired)
	}
	for {
		var s HostSettings
		if !h.configure.ReceiveAsync(&s) {
			break
		}
		if s.Interval > 0 && s.Interval < MinDriftCheckInterval &&
			workflow.GetVersion(ctx, versionMinInterval, workflow.DefaultVersion, 1) == 1 {
			workflow.GetLogger(ctx).Warn("drift check interval refused: below the minimum", "interval", s.Interval, "minimum", MinDriftCheckInterval)
			continue
		}
		if s.Interval > 0 && s.Interval != h.in.Interval {
			workflow.GetLogger(ctx).Info("drift check interval changed", "from", h.in.Interval, "to", s.Interval)
			h.in.Interval = s.Interval
		}
	}
	h.status.Interval = h.in.Interval
}

// shouldContinueAsNew reports whether the history is long enough to
// continue as new: by its length, however many passes that took.
func (h *hostState) shouldContinueAsNew(ctx workflow.Context) bool {
	info := workflow.GetInfo(ctx)
	return info.GetContinueAsNewSuggested() || info.GetCurrentHistoryLength() >= h.in.MaxHistoryEvents
}

func (h *hostState) continueAsNew(ctx workflow.Context) error {
	next := h.in
	next.LastPass = h.status.LastPass
	if h.verdict != nil {
		next.LastVerdict = h.verdict
	}
	return workflow.NewContinueAsNewError(ctx, HostWorkflow, next)
}

// JudgeListing compares a node listing with the desired set: the
// desired states the guest workflows publish (published, by VMID) over
// those announced to the host workflow (announced). holding are the guests
// whose workflow holds; the verdict keeps the desired ones. The listing
// itself is left out of the result.
func JudgeListing(announced map[string]desired.Spec, published map[int]desired.Spec, list []GuestSummary, holding []int) ListGuestsResult {
	want := make(map[string]desired.Spec, len(announced)+len(published))
	maps.Copy(want, announced)
	for vmid, spec := range published {
		want[strconv.Itoa(vmid)] = spec
	}
	res := ListGuestsResult{Managed: sortedVMIDs(want)}
	res.Drifted, res.Unmanaged = drift(want, list)
	for _, vmid := range holding {
		if _, ok := want[strconv.Itoa(vmid)]; ok {
			res.Holding = append(res.Holding, vmid)
		}
	}
	slices.Sort(res.Holding)
	return res
}

// drift compares the desired set with a node listing: which desired guests
// differ, and which listed guests no desired state names.
func drift(want map[string]desired.Spec, have []GuestSummary) (drifted, unmanaged []int) {
	listed := map[int]GuestSummary{}
	for _, g := range have {
		listed[g.VMID] = g
		if _, ok := want[strconv.Itoa(g.VMID)]; !ok {
			unmanaged = append(unmanaged, g.VMID)
		}
	}
	for key, spec := range want {
		vmid, _ := strconv.Atoi(key)
		g, exists := listed[vmid]
		switch {
		case spec.State == desired.Absent:
			if exists {
				drifted = append(drifted, vmid)
			}
		case !exists,
			spec.State == desired.Running && g.Status != "running",
			spec.State == desired.Stopped && g.Status == "running",
			spec.MemoryMiB != 0 && g.MemoryMiB != spec.MemoryMiB,
			spec.Cores != 0 && g.Cores != spec.Cores,
			spec.Name != "" && g.Name != "" && g.Name != spec.Name:
			drifted = append(drifted, vmid)
		}
	}
	slices.Sort(drifted)
	slices.Sort(unmanaged)
	return drifted, unmanaged
}

func sortedVMIDs(m map[string]desired.Spec) []int {
	out := make([]int, 0, len(m))
	for key := range m {
		vmid, _ := strconv.Atoi(key)
		out = append(out, vmid)
	}
	slices.Sort(out)
	return out
}
