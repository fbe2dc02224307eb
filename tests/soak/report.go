package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// report is what the soak prints.
type report struct {
	Seed       int64       `json:"seed"`
	Hosts      int         `json:"hosts"`
	Guests     int         `json:"guests"`
	Chaos      string      `json:"chaos"`
	Settled    string      `json:"settle_time"`
	Total      string      `json:"total_time"`
	Invariants []invariant `json:"invariants"`

	Figures struct {
		figures
		SpecsSent      int            `json:"desired_states_sent"`
		SpecsAccepted  int            `json:"desired_states_accepted"`
		SpecsRefused   int            `json:"desired_states_refused"`
		ApplyRuns      int            `json:"felhomctl_apply_runs"`
		ApplyFailed    int            `json:"felhomctl_apply_runs_without_answer"`
		WorkerStarts   int            `json:"worker_starts"`
		FaultsHit      map[string]int `json:"faults_hit_requests"`
		Requests       int            `json:"mutating_requests"`
		Destroys       int            `json:"guest_destroys"`
		GateDecisions  map[string]int `json:"gate_decisions"`
		Admissions     int            `json:"admissions"`
		WorkflowsOpen  int            `json:"workflows_open"`
		GuestsPending  int            `json:"guests_waiting_for_a_signature"`
		GuestsWithSpec int            `json:"guests_with_a_desired_state"`
		// Unverified counts invalid approvals answered "accepted" that the
		// gate never looked at (see unverified).
		Unverified int `json:"invalid_approvals_accepted_for_benign_acts"`
		// Readmitted counts replayed approvals honoured as the retry of
		// their own act (see readmitted).
		Readmitted int `json:"replayed_approvals_readmitted_for_their_own_act"`
		// Unconsumed counts replayed approvals first sent for a benign act,
		// never consumed, and admitted for a later instance (see
		// unconsumed).
		Unconsumed int `json:"replayed_approvals_never_consumed_admitted_later"`
	} `json:"figures"`
	// Approvals counts approvals tried: kind → outcome → count.
	Approvals map[string]map[string]int `json:"approvals"`
}

// Violations is the total count of invariant violations.
func (r *report) Violations() int {
	n := 0
	for _, inv := range r.Invariants {
		n += inv.Violations
	}
	return n
}

func (f *fleet) fillFigures(rep *report, ev evidence) {
	f.mu.Lock()
	rep.Figures.figures = f.fig
	rep.Figures.LongestCut = f.fig.longestCut.String()
	f.mu.Unlock()
	f.ap.mu.Lock()
	rep.Figures.SpecsSent, rep.Figures.SpecsAccepted, rep.Figures.SpecsRefused = f.ap.sent, f.ap.accepted, f.ap.refused
	rep.Figures.ApplyRuns, rep.Figures.ApplyFailed = f.ap.runs, f.ap.failedRuns
	f.ap.mu.Unlock()
	for _, h := range f.hosts {
		h.mu.Lock()
		rep.Figures.WorkerStarts += h.starts
		rep.Figures.WorkerCrashes += h.crashes
		h.mu.Unlock()
	}
	rep.Figures.FaultsHit = map[string]int{}
	rep.Figures.GateDecisions = map[string]int{}
	for _, he := range ev.Hosts {
		rep.Figures.Requests += len(he.Requests)
		for _, r := range he.Requests {
			if r.Fault != "" {
				rep.Figures.FaultsHit[string(r.Fault)]++
			}
			if destructiveOp(r) != "" && effective(r, he.TaskExit) {
				rep.Figures.Destroys++
			}
		}
		for _, d := range he.Decisions {
			rep.Figures.GateDecisions[d.Code]++
		}
		rep.Figures.Admissions += len(he.Admissions)
	}
	rep.Figures.WorkflowsOpen = len(ev.Workflows)
	for _, g := range ev.Guests {
		rep.Figures.GuestsWithSpec++
		if g.Phase == "pending_signature" {
			rep.Figures.GuestsPending++
		}
	}
	rep.Approvals = map[string]map[string]int{}
	for _, a := range ev.Approvals {
		if a.Expected != "" && unverified(ev, a) {
			rep.Figures.Unverified++
		}
		if readmitted(ev, a) {
			rep.Figures.Readmitted++
		}
		if unconsumed(ev, a) {
			rep.Figures.Unconsumed++
		}
		if rep.Approvals[a.Kind] == nil {
			rep.Approvals[a.Kind] = map[string]int{}
		}
		rep.Approvals[a.Kind][a.Outcome]++
	}
}

func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "felhom-agent chaos soak: seed %d, %d hosts, %d guests, %s of chaos, settled in %s, %s in all\n\n",
		r.Seed, r.Hosts, r.Guests, r.Chaos, r.Settled, r.Total)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INVARIANT\tCHECKED\tVIOLATIONS")
	for _, inv := range r.Invariants {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", inv.Name, inv.Checked, inv.Violations)
	}
	tw.Flush()
	for _, inv := range r.Invariants {
		for _, e := range inv.Examples {
			fmt.Fprintf(w, "  violation: %s\n", e)
		}
	}

	fig := r.Figures
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tCOUNT")
	row := func(name string, v any) { fmt.Fprintf(tw, "%s\t%v\n", name, v) }
	row("guests (VMIDs)", r.Guests)
	row("guests with a desired state at the end", fig.GuestsWithSpec)
	row("guests waiting for a signature at the end", fig.GuestsPending)
	for _, k := range sortedKeys(fig.Changes) {
		row("desired changes: "+k, fig.Changes[k])
	}
	row("desired states sent by felhomctl apply", fig.SpecsSent)
	row("  accepted / refused", fmt.Sprintf("%d / %d", fig.SpecsAccepted, fig.SpecsRefused))
	row("felhomctl apply runs (without an answer)", fmt.Sprintf("%d (%d)", fig.ApplyRuns, fig.ApplyFailed))
	for _, k := range sortedKeys(fig.Faults) {
		row("faults injected: "+k, fig.Faults[k])
	}
	for _, k := range sortedKeys(fig.FaultsHit) {
		row("requests hit by a fault: "+k, fig.FaultsHit[k])
	}
	row("worker kills (SIGKILL)", fig.WorkerKills)
	row("worker exits on their own (restarted)", fig.WorkerCrashes)
	row("worker starts", fig.WorkerStarts)
	row("Temporal server kills and restarts (SIGKILL)", fig.ServerRestarts)
	row("network cuts host-server", fig.NetworkCuts)
	row(fmt.Sprintf("  longer than the heartbeat timeout (longest %s)", fig.LongestCut), fig.CutsOverHB)
	row("remnants of lost creates and destroys purged by root at the end (locked \"create\", \"destroyed\")", fig.RootPurges)
	row("mutating requests to Proxmox", fig.Requests)
	row("destructive requests that took effect", fig.Destroys)
	for _, k := range sortedKeys(fig.GateDecisions) {
		row("gate decisions: "+k, fig.GateDecisions[k])
	}
	row("ledger admissions", fig.Admissions)
	row("replayed approvals honoured as the retry of their own act (allowed_admitted)", fig.Readmitted)
	row("replayed approvals never consumed (first sent for a benign act), admitted for a later instance", fig.Unconsumed)
	row("invalid approvals answered \"accepted\" the gate never looked at (benign act, or failed before the gate)", fig.Unverified)
	row("open workflows at the end", fig.WorkflowsOpen)
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "APPROVAL KIND\tTRIED\tOUTCOMES")
	for _, kind := range sortedKeys(r.Approvals) {
		outcomes := r.Approvals[kind]
		total := 0
		var parts []string
		for _, o := range sortedKeys(outcomes) {
			total += outcomes[o]
			parts = append(parts, fmt.Sprintf("%s %d", o, outcomes[o]))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", kind, total, strings.Join(parts, ", "))
	}
	tw.Flush()
	fmt.Fprintf(w, "\ninvariant violations: %d\n", r.Violations())
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
