package workflows

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// Names of the host workflow's messages.
const (
	// SignalDesiredChanged carries a DesiredNotice from a guest workflow.
	SignalDesiredChanged = "desired-changed"
	// QueryHostStatus returns a HostStatus.
	QueryHostStatus = "host-status"
)

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
	// Desired is the desired set, carried over by continue-as-new.
	Desired map[string]desired.Spec `json:"desired,omitempty"`
	// Passes bounds a run before it continues as new. Zero means 500.
	Passes int `json:"passes,omitempty"`
}

// HostStatus is what the host-status query returns.
type HostStatus struct {
	Host      string    `json:"host"`
	LastPass  time.Time `json:"last_pass"`
	Managed   []int     `json:"managed"`
	Drifted   []int     `json:"drifted"`
	Unmanaged []int     `json:"unmanaged"`
	LastError string    `json:"last_error,omitempty"`
}

// HostWorkflow supervises one host: on a timer it lists every guest of the
// node in one Proxmox call, compares the listing with the desired set, and
// wakes only the guest workflows that drifted. A guest on the node that no
// desired state names is reported, never touched.
func HostWorkflow(ctx workflow.Context, in HostInput) error {
	if in.Interval == 0 {
		in.Interval = time.Minute
	}
	if in.Passes == 0 {
		in.Passes = 500
	}
	if in.Desired == nil {
		in.Desired = map[string]desired.Spec{}
	}
	st := HostStatus{Host: in.Host}
	if err := workflow.SetQueryHandler(ctx, QueryHostStatus, func() (HostStatus, error) { return st, nil }); err != nil {
		return err
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, visibility.HostKey.ValueSet(in.Host)); err != nil {
		return err
	}
	notices := workflow.GetSignalChannel(ctx, SignalDesiredChanged)
	applyNotice := func(n DesiredNotice) {
		key := strconv.Itoa(n.VMID)
		if n.Spec == nil {
			delete(in.Desired, key)
			return
		}
		in.Desired[key] = *n.Spec
	}

	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second, MaximumAttempts: 5},
	})
	for pass := 0; pass < in.Passes; pass++ {
		var list ListGuestsResult
		if err := workflow.ExecuteActivity(actx, ActivityListGuests).Get(ctx, &list); err != nil {
			st.LastError = err.Error()
		} else {
			st.LastError = ""
			st.Drifted, st.Unmanaged = drift(in.Desired, list.Guests)
			for _, vmid := range st.Drifted {
				wake := WakeGuestInput{Host: in.Host, VMID: vmid, Reason: "host listing differs from the desired state"}
				if err := workflow.ExecuteActivity(actx, ActivityWakeGuest, wake).Get(ctx, nil); err != nil {
					st.LastError = fmt.Sprintf("wake guest %d: %v", vmid, err)
				}
			}
		}
		st.LastPass = workflow.Now(ctx)
		st.Managed = sortedVMIDs(in.Desired)
		workflow.SetCurrentDetails(ctx, fmt.Sprintf("**host %s**: %d managed, %d drifted at the last pass, %d unmanaged guests %v",
			in.Host, len(st.Managed), len(st.Drifted), len(st.Unmanaged), st.Unmanaged))

		timer := workflow.NewTimer(ctx, in.Interval)
		timerFired := false
		for !timerFired {
			sel := workflow.NewSelector(ctx)
			sel.AddFuture(timer, func(workflow.Future) { timerFired = true })
			sel.AddReceive(notices, func(c workflow.ReceiveChannel, _ bool) {
				var n DesiredNotice
				c.Receive(ctx, &n)
				applyNotice(n)
			})
			sel.Select(ctx)
		}
	}
	// Take the notices that arrived meanwhile, or they are lost.
	for {
		var n DesiredNotice
		if !notices.ReceiveAsync(&n) {
			break
		}
		applyNotice(n)
	}
	return workflow.NewContinueAsNewError(ctx, HostWorkflow, in)
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
