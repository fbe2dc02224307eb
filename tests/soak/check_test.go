package main

import (
	"net/url"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

const qemu = `{"kind":"qemu"}`

var t0 = time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

// cleanEvidence is a small run in which every invariant holds: guest 101
// (not the agent's) destroyed with a valid approval, guest 102 created,
// started and destroyed as a benign rollback, guest 103 running as desired,
// guest 104 waiting for the signature of its destroy, and one approval of
// each invalid kind refused with its code.
func cleanEvidence() evidence {
	running := desired.Spec{Host: "h1", VMID: 103, Kind: desired.QEMU, State: desired.Running, MemoryMiB: 512, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:8"}}
	absent := func(vmid int) *desired.Spec { return &desired.Spec{Host: "h1", VMID: vmid, State: desired.Absent} }
	return evidence{
		Hosts: map[string]*hostEvidence{"h1": {
			Requests: []pvesim.Request{
				{Method: "POST", Path: "/nodes/h1/qemu/101/status/stop", VMID: 101, Status: 200, Served: true, UPID: "u1", Time: at(10)},
				{Method: "DELETE", Path: "/nodes/h1/qemu/101", VMID: 101, Status: 200, Served: true, UPID: "u2", Time: at(11)},
				{Method: "POST", Path: "/nodes/h1/qemu", VMID: 102, Form: url.Values{"vmid": {"102"}}, Status: 200, Served: true, UPID: "u3", Time: at(20)},
				{Method: "DELETE", Path: "/nodes/h1/qemu/102", VMID: 102, Status: 200, Served: true, UPID: "u4", Time: at(22)},
				{Method: "POST", Path: "/nodes/h1/qemu/103/status/start", VMID: 103, Status: 0, Fault: pvesim.FaultDropBefore, Time: at(30)},
				{Method: "POST", Path: "/nodes/h1/qemu/103/status/start", VMID: 103, Status: 200, Served: true, UPID: "u5", Time: at(31)},
			},
			TaskExit: map[string]string{"u1": "OK", "u2": "OK", "u3": "OK", "u4": "OK", "u5": "OK"},
			Decisions: []gateDecision{
				{Time: at(9), Allowed: true, Code: gate.CodeAllowedSigned, Op: gate.OpGuestDestroy, Host: "h1", Guest: "101", Nonce: "n1", Params: qemu},
				{Time: at(21), Allowed: true, Code: gate.CodeAllowedBenign, Op: gate.OpGuestDestroy, Host: "h1", Guest: "102", AgentCreated: true, Params: qemu},
			},
			Admissions: []ledger.Admission{{Key: "k1", VMID: 101}},
		}},
		Guests: []guestFinal{
			{Host: "h1", VMID: 101, Desired: absent(101), Confirmed: true, Phase: workflows.PhaseConverged},
			{Host: "h1", VMID: 102, Desired: absent(102), Confirmed: true, Phase: workflows.PhaseConverged},
			{Host: "h1", VMID: 103, Desired: &running, Confirmed: true, Exists: true, Kind: "qemu", Status: "running",
				MemoryMiB: 512, Cores: 1, DiskGiB: map[string]int{"scsi0": 8}, Phase: workflows.PhaseConverged},
			{Host: "h1", VMID: 104, Desired: absent(104), Confirmed: true, Exists: true, Kind: "qemu", Status: "running",
				Phase: workflows.PhasePending, PendingOp: gate.OpGuestDestroy},
		},
		Workflows: []workflowFinal{
			{ID: "guest/h1/103", OpenTimers: 1, Phase: workflows.PhaseConverged},
			{ID: "guest/h1/104", Phase: workflows.PhasePending},
			{ID: "host/h1", PendingActivities: 1},
		},
		Approvals: []approvalRecord{
			{Kind: apValid, Host: "h1", VMID: 101, Op: gate.OpGuestDestroy, Nonce: "n1", Key: "k1", Outcome: apAccepted},
			{Kind: apForged, Host: "h1", VMID: 104, Nonce: "n2", Key: "k2", Expected: "unknown_signer", Outcome: "unknown_signer"},
			{Kind: apOtherHost, Host: "h1", VMID: 104, Nonce: "n3", Key: "k3", Expected: "wrong_host", Outcome: "wrong_host"},
			{Kind: apExpired, Host: "h1", VMID: 104, Nonce: "n4", Key: "k4", Expected: "expired", Outcome: apNotPending},
		},
	}
}

func TestInvariantsHoldOnACleanRun(t *testing.T) {
	for _, inv := range checkInvariants(cleanEvidence()) {
		if inv.Violations != 0 {
			t.Errorf("%s: %d violations: %v", inv.Name, inv.Violations, inv.Examples)
		}
		if inv.Checked == 0 {
			t.Errorf("%s: checked nothing", inv.Name)
		}
	}
}

// Each case breaks one thing in an otherwise clean run; exactly the named
// invariant must count exactly one violation.
func TestInvariantsDetectViolations(t *testing.T) {
	h1 := func(ev *evidence) *hostEvidence { return ev.Hosts["h1"] }
	cases := []struct {
		name  string
		index int // the invariant in checkInvariants' order
		edit  func(*evidence)
	}{
		{"guest with the wrong memory", 0, func(ev *evidence) { ev.Guests[2].MemoryMiB = 1024 }},
		{"guest stopped that should run", 0, func(ev *evidence) { ev.Guests[2].Status = "stopped" }},
		{"guest converged by its workflow's account but still there", 0, func(ev *evidence) {
			ev.Guests[0].Exists, ev.Guests[0].Status = true, "stopped"
		}},
		{"guest waiting for a signature of something else", 0, func(ev *evidence) { ev.Guests[3].PendingOp = gate.OpGuestConfig }},
		{"guest failed", 0, func(ev *evidence) { ev.Guests[2].Phase = workflows.PhaseFailed }},
		{"desired state never accepted", 0, func(ev *evidence) { ev.Guests[2].Confirmed = false }},
		{"destroy without any gate decision", 1, func(ev *evidence) { h1(ev).Decisions = h1(ev).Decisions[1:] }},
		{"destroy allowed only after the request", 1, func(ev *evidence) { h1(ev).Decisions[0].Time = at(12) }},
		{"destroy allowed for a guest of another kind", 1, func(ev *evidence) {
			h1(ev).Decisions[0].Params = `{"kind":"lxc"}`
		}},
		{"destroy allowed by a nonce no valid approval carried", 1, func(ev *evidence) {
			h1(ev).Decisions[0].Nonce = "n2"
		}},
		{"benign destroy of a guest the agent did not create", 1, func(ev *evidence) {
			h1(ev).Decisions[1].AgentCreated = false
		}},
		{"benign destroy with an acceptance from an earlier instance", 1, func(ev *evidence) {
			h1(ev).Decisions[1].Time = at(19) // before the create of the instance destroyed
		}},
		{"one approval destroying two instances", 1, func(ev *evidence) {
			h1(ev).Requests = append(h1(ev).Requests,
				pvesim.Request{Method: "POST", Path: "/nodes/h1/qemu", VMID: 101, Form: url.Values{"vmid": {"101"}}, Status: 200, Served: true, UPID: "u6", Time: at(40)},
				pvesim.Request{Method: "DELETE", Path: "/nodes/h1/qemu/101", VMID: 101, Status: 200, Served: true, UPID: "u7", Time: at(42)})
			h1(ev).TaskExit["u6"], h1(ev).TaskExit["u7"] = "OK", "OK"
			h1(ev).Decisions = append(h1(ev).Decisions, gateDecision{Time: at(41), Allowed: true, Code: gate.CodeAllowedAdmitted,
				Op: gate.OpGuestDestroy, Host: "h1", Guest: "101", Nonce: "n1", Params: qemu})
		}},
		{"admission of a forged approval", 2, func(ev *evidence) {
			h1(ev).Admissions = append(h1(ev).Admissions, ledger.Admission{Key: "k2", VMID: 104})
		}},
		{"nonce accepted twice", 3, func(ev *evidence) {
			h1(ev).Decisions = append(h1(ev).Decisions, gateDecision{Time: at(50), Allowed: true, Code: gate.CodeAllowedSigned,
				Op: gate.OpGuestDestroy, Host: "h1", Guest: "104", Nonce: "n1"})
		}},
		{"start sent twice with effect", 4, func(ev *evidence) {
			h1(ev).Requests = append(h1(ev).Requests, pvesim.Request{Method: "POST", Path: "/nodes/h1/qemu/103/status/start",
				VMID: 103, Status: 596, Fault: pvesim.FaultHTTPErrorAfter, Served: true, UPID: "u8", Time: at(60)})
			h1(ev).TaskExit["u8"] = "OK"
		}},
		{"workflow waiting on nothing", 5, func(ev *evidence) {
			ev.Workflows[0].OpenTimers, ev.Workflows[0].Phase = 0, workflows.PhaseConverging
		}},
		{"workflow terminated", 6, func(ev *evidence) {
			ev.Closed = append(ev.Closed, closedWorkflow{ID: "guest/h1/105", Status: "Terminated"})
		}},
		{"invalid approval refused with another code", 7, func(ev *evidence) { ev.Approvals[1].Outcome = "signature" }},
		{"invalid approval accepted", 7, func(ev *evidence) { ev.Approvals[2].Outcome = apAccepted }},
		{"replay refused as replay when it had expired before it was admitted", 7, func(ev *evidence) {
			ev.Approvals[2].Outcome = "replay" // an other_host approval: wrong_host comes first
		}},
		{"invalid approval accepted, the gate having checked its nonce", 7, func(ev *evidence) {
			ev.Approvals[2].Outcome, ev.Approvals[2].Op, ev.Approvals[2].Sent = apAccepted, gate.OpGuestDestroy, at(100)
			h1(ev).Decisions = append(h1(ev).Decisions,
				gateDecision{Time: at(101), Allowed: true, Code: gate.CodeAllowedBenign, Op: gate.OpGuestDestroy, Host: "h1", Guest: "104", Params: qemu},
				gateDecision{Time: at(101), Code: "wrong_host", Op: gate.OpGuestDestroy, Host: "h1", Guest: "104", Nonce: "n3", Params: qemu})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := cleanEvidence()
			c.edit(&ev)
			for i, inv := range checkInvariants(ev) {
				want := 0
				if i == c.index {
					want = 1
				}
				if inv.Violations != want {
					t.Errorf("%s: %d violations, want %d (%v)", inv.Name, inv.Violations, want, inv.Examples)
				}
			}
		})
	}
}

// Requests that did not take effect (refused before the side effect, or
// whose task failed) are retries, not duplicates; a node reboot between two
// starts makes the second one a new step.
func TestRetriesThatTookNoEffectAreNotDuplicates(t *testing.T) {
	start := func(s int, status int, fault pvesim.FaultKind, upid string) pvesim.Request {
		// Served as the simulator records it: a 2xx, or a fault that
		// strikes after the (here unrefused) side effect.
		served := status == 200 || fault == pvesim.FaultDropAfter || fault == pvesim.FaultHTTPErrorAfter
		return pvesim.Request{Method: "POST", Path: "/nodes/h1/qemu/103/status/start", VMID: 103, Status: status, Fault: fault, Served: served, UPID: upid, Time: at(s)}
	}
	cases := []struct {
		name    string
		reqs    []pvesim.Request
		reboots []time.Time
		want    int
	}{
		{"task failed, then done", []pvesim.Request{start(1, 200, "", "a"), start(2, 200, "", "b")}, nil, 0},
		{"5xx before, then done", []pvesim.Request{start(1, 500, pvesim.FaultHTTPError, ""), start(2, 200, "", "b")}, nil, 0},
		{"dropped after, then done again", []pvesim.Request{start(1, 0, pvesim.FaultDropAfter, "c"), start(2, 200, "", "b")}, nil, 1},
		{"done, node rebooted, done", []pvesim.Request{start(1, 200, "", "b"), start(5, 200, "", "c")}, []time.Time{at(3)}, 0},
		{"done twice", []pvesim.Request{start(1, 200, "", "b"), start(5, 200, "", "c")}, nil, 1},
		{"596 after a request the guest's lock refused, then done", []pvesim.Request{
			{Method: "POST", Path: "/nodes/h1/qemu/103/status/start", VMID: 103, Status: 596, Fault: pvesim.FaultHTTPErrorAfter, Time: at(1)},
			start(2, 200, "", "b")}, nil, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := evidence{Hosts: map[string]*hostEvidence{"h1": {Requests: c.reqs, Reboots: c.reboots,
				TaskExit: map[string]string{"a": "can't lock file '/var/lock/qemu-server/lock-103.conf' - got timeout", "b": "OK", "c": "OK"}}}}
			if got := checkNoDuplicateRequests(ev).Violations; got != c.want {
				t.Errorf("%d violations, want %d", got, c.want)
			}
		})
	}
}

// An invalid approval answered "accepted" for a destroy the host allowed as
// benign in the meantime is counted apart, not as a refusal with the wrong
// code: the gate never looked at it.
func TestInvalidApprovalForABenignActIsCountedApart(t *testing.T) {
	ev := cleanEvidence()
	ev.Approvals[2].Outcome, ev.Approvals[2].Op, ev.Approvals[2].Sent = apAccepted, gate.OpGuestDestroy, at(100)
	ev.Hosts["h1"].Decisions = append(ev.Hosts["h1"].Decisions,
		gateDecision{Time: at(101), Allowed: true, Code: gate.CodeAllowedBenign, Op: gate.OpGuestDestroy, Host: "h1", Guest: "104", Params: qemu})
	if inv := checkRefusals(ev); inv.Violations != 0 {
		t.Errorf("%d violations: %v", inv.Violations, inv.Examples)
	}
	if !unverified(ev, ev.Approvals[2]) {
		t.Error("not counted as answered for a benign act")
	}
	ev.Approvals[2].Sent = at(300) // the benign decision came before it
	if inv := checkRefusals(ev); inv.Violations != 1 {
		t.Errorf("%d violations, want 1", inv.Violations)
	}
	// A replay of an approval the gate admitted earlier, for a destroy the
	// host allowed as benign this time: the earlier decision with its nonce
	// does not count as looking at it now.
	ev = cleanEvidence()
	ev.Approvals = append(ev.Approvals, approvalRecord{Kind: apReplayed, Host: "h1", VMID: 101, Op: gate.OpGuestDestroy,
		Nonce: "n1", Key: "k1", Expected: "replay", Outcome: apAccepted, Sent: at(100)})
	ev.Hosts["h1"].Decisions = append(ev.Hosts["h1"].Decisions,
		gateDecision{Time: at(101), Allowed: true, Code: gate.CodeAllowedBenign, Op: gate.OpGuestDestroy, Host: "h1", Guest: "101", Params: qemu})
	if inv := checkRefusals(ev); inv.Violations != 0 {
		t.Errorf("replay for a benign act: %d violations: %v", inv.Violations, inv.Examples)
	}
	// Answered "accepted, but the action failed" with no decision at all:
	// the step failed before the gate.
	ev = cleanEvidence()
	ev.Approvals[2].Outcome, ev.Approvals[2].Sent = apActionFail, at(100)
	if inv := checkRefusals(ev); inv.Violations != 0 {
		t.Errorf("failed before the gate: %d violations: %v", inv.Violations, inv.Examples)
	}
}

// A replayed approval whose first run failed before its act started may
// finish that act (allowed_admitted): not a refusal with the wrong code.
func TestReplayHonouredAsARetryIsCountedApart(t *testing.T) {
	ev := cleanEvidence()
	ev.Approvals = append(ev.Approvals, approvalRecord{Kind: apReplayed, Host: "h1", VMID: 101, Op: gate.OpGuestDestroy,
		Nonce: "n1", Key: "k1", Expected: "replay", Outcome: apAccepted, Sent: at(15)})
	if inv := checkRefusals(ev); inv.Violations != 1 {
		t.Fatalf("%d violations, want 1: no allowed_admitted carries its nonce", inv.Violations)
	}
	ev.Hosts["h1"].Decisions = append(ev.Hosts["h1"].Decisions, gateDecision{Time: at(16), Allowed: true,
		Code: gate.CodeAllowedAdmitted, Op: gate.OpGuestDestroy, Host: "h1", Guest: "101", Nonce: "n1", Params: qemu})
	if inv := checkRefusals(ev); inv.Violations != 0 {
		t.Errorf("%d violations: %v", inv.Violations, inv.Examples)
	}
}

// A replayed approval the host never consumed (its first act was benign)
// and admitted now is counted apart; one consumed before must be refused.
func TestReplayOfAnUnconsumedApprovalIsCountedApart(t *testing.T) {
	ev := cleanEvidence()
	ev.Approvals = append(ev.Approvals, approvalRecord{Kind: apReplayed, Host: "h1", VMID: 104, Op: gate.OpGuestDestroy,
		Nonce: "n9", Key: "k9", Expected: "replay", Outcome: apAccepted, Sent: at(100)})
	ev.Hosts["h1"].Decisions = append(ev.Hosts["h1"].Decisions, gateDecision{Time: at(101), Allowed: true,
		Code: gate.CodeAllowedSigned, Op: gate.OpGuestDestroy, Host: "h1", Guest: "104", Nonce: "n9", Params: qemu})
	if inv := checkRefusals(ev); inv.Violations != 0 {
		t.Errorf("never consumed before: %d violations: %v", inv.Violations, inv.Examples)
	}
	ev.Hosts["h1"].Decisions = append(ev.Hosts["h1"].Decisions, gateDecision{Time: at(50), Allowed: true,
		Code: gate.CodeAllowedSigned, Op: gate.OpGuestDestroy, Host: "h1", Guest: "104", Nonce: "n9", Params: qemu})
	if inv := checkRefusals(ev); inv.Violations != 1 {
		t.Errorf("consumed before: %d violations, want 1", inv.Violations)
	}
}

func TestReplayCodeFollowsThePipelineOrder(t *testing.T) {
	tpl := workflows.OpTemplate{Op: gate.OpGuestDestroy, HostID: "h1", GuestID: "101", Params: map[string]any{"kind": "qemu"}}
	rec := approvalRecord{Template: tpl, Expires: at(600)}
	other := tpl
	other.GuestID = "102"
	for _, c := range []struct {
		name    string
		pending workflows.OpTemplate
		now     time.Time
		want    string
	}{
		{"same act, in its window", tpl, at(10), "replay"},
		{"same act, expired", tpl, at(700), "expired"},
		{"another guest", other, at(10), "binding_mismatch"},
	} {
		if got := replayCode(rec, "h1", c.pending, c.now); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	if got := replayCode(rec, "h2", tpl, at(10)); got != "wrong_host" {
		t.Errorf("another host: %s, want wrong_host", got)
	}
}

// An approval that came with a benign act is verified by the gate all the
// same: its audit record's approval code is the verdict the checker
// compares, whatever the workflow answered.
func TestBenignActCarriesTheGatesVerdictOnItsApproval(t *testing.T) {
	for _, tt := range []struct {
		name, approvalCode string
		violations         int
	}{
		{"refused with the expected code", "wrong_host", 0},
		{"refused with another code", "binding_mismatch", 1},
		{"consumed although invalid", gate.CodeApprovalConsumed, 1},
		{"honoured as the retry of its admitted act", gate.CodeAllowedAdmitted, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ev := cleanEvidence()
			a := &ev.Approvals[2] // wrong_host expected
			a.Outcome, a.Op, a.Sent = apAccepted, gate.OpGuestDestroy, at(100)
			ev.Hosts["h1"].Decisions = append(ev.Hosts["h1"].Decisions,
				gateDecision{Time: at(101), Allowed: true, Code: gate.CodeAllowedBenign, Op: gate.OpGuestDestroy, Host: "h1",
					Guest: "104", Params: qemu, Nonce: a.Nonce, ApprovalCode: tt.approvalCode})
			if inv := checkRefusals(ev); inv.Violations != tt.violations {
				t.Errorf("%d violations, want %d: %v", inv.Violations, tt.violations, inv.Examples)
			}
		})
	}
}

// A converged guest workflow keeps no timer of its own: the host
// workflow's listing wakes it. It is stuck only when that host workflow is
// not live.
func TestConvergedGuestWaitsOnItsHostWorkflow(t *testing.T) {
	for _, tt := range []struct {
		name       string
		guest      workflowFinal
		host       workflowFinal
		violations int
	}{
		{"converged, host polling", workflowFinal{ID: "guest/h1/103", Phase: workflows.PhaseConverged}, workflowFinal{ID: "host/h1", PendingActivities: 1}, 0},
		{"converged, host on its timer", workflowFinal{ID: "guest/h1/103", Phase: workflows.PhaseConverged}, workflowFinal{ID: "host/h1", OpenTimers: 1}, 0},
		{"converged, host idle", workflowFinal{ID: "guest/h1/103", Phase: workflows.PhaseConverged}, workflowFinal{ID: "host/h1"}, 2},
		{"converged, another host's workflow live", workflowFinal{ID: "guest/h1/103", Phase: workflows.PhaseConverged}, workflowFinal{ID: "host/h2", OpenTimers: 1}, 1},
		{"converging, nothing pending", workflowFinal{ID: "guest/h1/103", Phase: workflows.PhaseConverging}, workflowFinal{ID: "host/h1", OpenTimers: 1}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ev := cleanEvidence()
			ev.Workflows = []workflowFinal{tt.guest, tt.host}
			if inv := checkNotStuck(ev); inv.Violations != tt.violations {
				t.Errorf("%d violations, want %d: %v", inv.Violations, tt.violations, inv.Examples)
			}
		})
	}
}
