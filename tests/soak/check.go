package main

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// evidence is everything the invariants are checked against: facts read
// from the simulators, the hosts' files and the Temporal server, and the
// soak's own record of what it asked for.
type evidence struct {
	Hosts     map[string]*hostEvidence
	Guests    []guestFinal
	Workflows []workflowFinal
	Closed    []closedWorkflow
	Approvals []approvalRecord
}

// hostEvidence is what happened on one host.
type hostEvidence struct {
	// Requests is the simulator's log of mutating requests, oldest first.
	Requests []pvesim.Request
	// TaskExit is each started task's exit status ("" while running).
	TaskExit map[string]string
	// Decisions are the gate's audit records, from the worker's log.
	Decisions []gateDecision
	// Admissions are every approval the host's ledger ever admitted.
	Admissions []ledger.Admission
	// Reboots are the times of node reboots (before and after each): the
	// guests stopped out of band, so a start may follow a start.
	Reboots []time.Time
}

// gateDecision is one audit record of the gate.
type gateDecision struct {
	Time         time.Time
	Allowed      bool
	Code         string
	Op           string
	Host, Guest  string
	Params       string
	AgentCreated bool
	Nonce        string
	// ApprovalCode is the gate's verdict on an approval that came with a
	// benign act: approval_consumed, or the refusal's code.
	ApprovalCode string
}

// guestFinal is one guest at the end: desired (the soak's), observed
// (Proxmox's), and its workflow's phase.
type guestFinal struct {
	Host      string         `json:"host"`
	VMID      int            `json:"vmid"`
	Desired   *desired.Spec  `json:"desired"`
	Confirmed bool           `json:"confirmed"`
	Exists    bool           `json:"exists"`
	Kind      string         `json:"kind,omitempty"`
	Status    string         `json:"status,omitempty"`
	MemoryMiB int            `json:"memory_mib,omitempty"`
	Cores     int            `json:"cores,omitempty"`
	DiskGiB   map[string]int `json:"disk_gib,omitempty"`
	Lock      string         `json:"lock,omitempty"`
	Phase     string         `json:"phase,omitempty"`
	PendingOp string         `json:"pending_op,omitempty"`
	LastError string         `json:"last_error,omitempty"`
	QueryErr  string         `json:"query_error,omitempty"`
}

// workflowFinal is one open workflow at the end.
type workflowFinal struct {
	ID                  string
	Type                string
	Phase               string
	PendingActivities   int
	WorkflowTaskPending bool
	OpenTimers          int
	Err                 string
}

// closedWorkflow is a workflow that ended terminated, timed out or failed.
type closedWorkflow struct {
	ID, Status string
}

// invariant is one row of the table.
type invariant struct {
	Name       string   `json:"name"`
	Checked    int      `json:"checked"`
	Violations int      `json:"violations"`
	Examples   []string `json:"examples,omitempty"`
}

func (inv *invariant) violate(format string, args ...any) {
	inv.Violations++
	if len(inv.Examples) < 8 {
		inv.Examples = append(inv.Examples, fmt.Sprintf(format, args...))
	}
}

// checkInvariants checks every invariant against ev.
func checkInvariants(ev evidence) []invariant {
	return []invariant{
		checkConverged(ev),
		checkDestructiveGated(ev),
		checkAdmittedOnlyValid(ev),
		checkNonceOnce(ev),
		checkNoDuplicateRequests(ev),
		checkNotStuck(ev),
		checkNotTerminated(ev),
		checkRefusals(ev),
	}
}

// guestProblem says why a guest is neither at its desired state (as
// Proxmox shows it) with its workflow converged, nor waiting for a
// signature for the destroy its absent state needs; "" when it is fine.
func guestProblem(g guestFinal) string {
	d := g.Desired
	switch {
	case d == nil:
		return ""
	case g.QueryErr != "":
		return "status query failed: " + g.QueryErr
	case d.State == desired.Absent && g.Exists:
		if g.Phase == workflows.PhasePending && g.PendingOp == gate.OpGuestDestroy {
			return ""
		}
		return fmt.Sprintf("exists (%s, lock %q) although absent is desired; phase %s, pending %q, last error %q", g.Status, g.Lock, g.Phase, g.PendingOp, g.LastError)
	case d.State == desired.Absent:
		if g.Phase != workflows.PhaseConverged {
			return fmt.Sprintf("absent as desired, but phase %s (pending %q, last error %q)", g.Phase, g.PendingOp, g.LastError)
		}
		return ""
	case !g.Exists:
		return fmt.Sprintf("does not exist; phase %s, last error %q", g.Phase, g.LastError)
	}
	var diffs []string
	if g.Kind != string(d.Kind) {
		diffs = append(diffs, "kind "+g.Kind)
	}
	if g.Status != string(d.State) {
		diffs = append(diffs, fmt.Sprintf("status %s, want %s", g.Status, d.State))
	}
	if g.MemoryMiB != d.MemoryMiB {
		diffs = append(diffs, fmt.Sprintf("memory %d MiB, want %d", g.MemoryMiB, d.MemoryMiB))
	}
	if g.Cores != d.Cores {
		diffs = append(diffs, fmt.Sprintf("cores %d, want %d", g.Cores, d.Cores))
	}
	for k, v := range d.Disks {
		vol, err := desired.ParseVolume(v)
		if err == nil && g.DiskGiB[k] < vol.SizeGiB {
			diffs = append(diffs, fmt.Sprintf("%s %d GiB, want %d", k, g.DiskGiB[k], vol.SizeGiB))
		}
	}
	if g.Lock != "" {
		diffs = append(diffs, "locked "+g.Lock)
	}
	if g.Phase != workflows.PhaseConverged {
		diffs = append(diffs, fmt.Sprintf("phase %s (pending %q, last error %q)", g.Phase, g.PendingOp, g.LastError))
	}
	return strings.Join(diffs, "; ")
}

func unsettled(gs []guestFinal) int {
	n := 0
	for _, g := range gs {
		if guestProblem(g) != "" || !g.Confirmed {
			n++
		}
	}
	return n
}

func checkConverged(ev evidence) invariant {
	inv := invariant{Name: "every guest converged, or waits only for the signature of its destroy"}
	for _, g := range ev.Guests {
		inv.Checked++
		if p := guestProblem(g); p != "" {
			inv.violate("%s/%d: %s", g.Host, g.VMID, p)
		} else if !g.Confirmed {
			inv.violate("%s/%d: its last desired state was never accepted by the workflow", g.Host, g.VMID)
		}
	}
	return inv
}

// destructiveOp names the gated op a request to Proxmox performs, "" for a
// benign one.
func destructiveOp(r pvesim.Request) string {
	seg := strings.Split(strings.Trim(r.Path, "/"), "/")
	switch {
	case r.Method == http.MethodDelete && len(seg) == 4 && (seg[2] == "qemu" || seg[2] == "lxc"):
		return gate.OpGuestDestroy
	case r.Method == http.MethodDelete && len(seg) > 4 && seg[2] == "storage" && seg[4] == "content":
		return gate.OpVolumeWipe
	case r.Method == http.MethodPost && len(seg) == 3 && (seg[2] == "qemu" || seg[2] == "lxc") && r.Form.Get("force") != "":
		return gate.OpGuestRestore
	}
	return ""
}

// sameAct reports whether the params a gate decision allowed describe the
// request: a guest destroy names the guest's kind, which the request's path
// says too.
func sameAct(params string, r pvesim.Request) bool {
	if destructiveOp(r) != gate.OpGuestDestroy {
		return true
	}
	seg := strings.Split(strings.Trim(r.Path, "/"), "/")
	return params == `{"kind":"`+seg[2]+`"}`
}

// isCreate reports whether r is a guest create (not a restore).
func isCreate(r pvesim.Request) bool {
	seg := strings.Split(strings.Trim(r.Path, "/"), "/")
	return r.Method == http.MethodPost && len(seg) == 3 && (seg[2] == "qemu" || seg[2] == "lxc") && r.Form.Get("force") == ""
}

// effective reports whether r took effect: Proxmox served it (r.Served, as
// the simulator recorded it) and the task it started, if any, ended OK or
// with warnings.
func effective(r pvesim.Request, exit map[string]string) bool {
	// Served, not the answer: a fault "after the side effect" answers 596
	// or drops the connection once the request was served, yet a request
	// its route refused (a locked guest) did nothing under it either.
	if !r.Served {
		return false
	}
	if r.UPID == "" {
		return true
	}
	st := exit[r.UPID]
	return st == "" || st == "OK" || strings.HasPrefix(st, "WARNINGS")
}

// validApprovals indexes the approvals the soak made as valid, by host and
// nonce, and by host and key.
func validApprovals(aps []approvalRecord) (byNonce, byKey map[string]approvalRecord) {
	byNonce, byKey = map[string]approvalRecord{}, map[string]approvalRecord{}
	for _, a := range aps {
		if a.Kind == apValid {
			byNonce[a.Host+"/"+a.Nonce] = a
			byKey[a.Host+"/"+a.Key] = a
		}
	}
	return byNonce, byKey
}

func checkDestructiveGated(ev evidence) invariant {
	inv := invariant{Name: "no destructive request reached Proxmox without a gate acceptance for that act on that guest instance"}
	byNonce, _ := validApprovals(ev.Approvals)
	for _, hostID := range sortedHosts(ev) {
		he := ev.Hosts[hostID]
		created := map[int]time.Time{} // the instance a VMID holds: when it was created
		usedBy := map[string]time.Time{}
		for _, r := range he.Requests {
			if isCreate(r) && effective(r, he.TaskExit) {
				created[r.VMID] = r.Time
			}
			op := destructiveOp(r)
			if op == "" {
				continue
			}
			inv.Checked++
			instance := created[r.VMID]
			var d *gateDecision
			for i := range he.Decisions {
				c := &he.Decisions[i]
				if c.Allowed && c.Op == op && c.Guest == strconv.Itoa(r.VMID) && !c.Time.After(r.Time) && !c.Time.Before(instance) &&
					sameAct(c.Params, r) {
					d = c
				}
			}
			what := fmt.Sprintf("%s/%d: %s %s at %s", hostID, r.VMID, r.Method, r.Path, r.Time.Format("15:04:05.000"))
			switch {
			case d == nil:
				inv.violate("%s without a gate acceptance for %s on this instance", what, op)
			case d.Code == gate.CodeAllowedBenign:
				if !d.AgentCreated || instance.IsZero() {
					inv.violate("%s allowed as benign for a guest the agent did not create", what)
				}
			default:
				a, ok := byNonce[hostID+"/"+d.Nonce]
				switch {
				case !ok:
					inv.violate("%s accepted with nonce %q, which no valid approval carried", what, d.Nonce)
				case a.VMID != r.VMID || a.Op != op:
					inv.violate("%s accepted with the approval of %s on %d", what, a.Op, a.VMID)
				default:
					if at, seen := usedBy[d.Nonce]; seen && !at.Equal(instance) {
						inv.violate("%s: the approval with nonce %s also acted on an earlier instance", what, d.Nonce)
					}
					usedBy[d.Nonce] = instance
				}
			}
		}
	}
	return inv
}

func checkAdmittedOnlyValid(ev evidence) invariant {
	inv := invariant{Name: "only valid approvals were admitted, each for its own guest"}
	_, byKey := validApprovals(ev.Approvals)
	for _, hostID := range sortedHosts(ev) {
		for _, ad := range ev.Hosts[hostID].Admissions {
			inv.Checked++
			a, ok := byKey[hostID+"/"+ad.Key]
			switch {
			case !ok:
				inv.violate("%s: admission %s for vmid %d matches no valid approval", hostID, short(ad.Key), ad.VMID)
			case a.VMID != ad.VMID:
				inv.violate("%s: approval for %d admitted for vmid %d", hostID, a.VMID, ad.VMID)
			}
		}
	}
	return inv
}

func checkNonceOnce(ev evidence) invariant {
	inv := invariant{Name: "no nonce accepted twice"}
	for _, hostID := range sortedHosts(ev) {
		seen := map[string]int{}
		for _, d := range ev.Hosts[hostID].Decisions {
			if d.Code == gate.CodeAllowedSigned {
				seen[d.Nonce]++
			}
		}
		keys := map[string]int{}
		for _, ad := range ev.Hosts[hostID].Admissions {
			keys[ad.Key]++
		}
		for nonce, n := range seen {
			inv.Checked++
			if n > 1 {
				inv.violate("%s: nonce %s accepted %d times", hostID, nonce, n)
			}
		}
		for key, n := range keys {
			if n > 1 {
				inv.violate("%s: approval %s admitted %d times", hostID, short(key), n)
			}
		}
	}
	return inv
}

// requestKey is what makes two requests the same act: method, path and
// form, without the config digest (a retry reads it again).
func requestKey(r pvesim.Request) string {
	keys := make([]string, 0, len(r.Form))
	for k := range r.Form {
		if k != "digest" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(r.Method + " " + r.Path)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", k, strings.Join(r.Form[k], ","))
	}
	return b.String()
}

func checkNoDuplicateRequests(ev evidence) invariant {
	inv := invariant{Name: "no mutating request took effect twice for one step"}
	for _, hostID := range sortedHosts(ev) {
		he := ev.Hosts[hostID]
		last := map[int]pvesim.Request{}
		for _, r := range he.Requests {
			if r.VMID == 0 || !effective(r, he.TaskExit) {
				continue
			}
			inv.Checked++
			prev, ok := last[r.VMID]
			last[r.VMID] = r
			if !ok || requestKey(prev) != requestKey(r) || rebootBetween(he.Reboots, prev.Time, r.Time) {
				continue
			}
			inv.violate("%s/%d: %s took effect at %s and again at %s", hostID, r.VMID, requestKey(r),
				prev.Time.Format("15:04:05.000"), r.Time.Format("15:04:05.000"))
		}
	}
	return inv
}

func rebootBetween(reboots []time.Time, from, to time.Time) bool {
	for _, t := range reboots {
		if t.After(from) && t.Before(to) {
			return true
		}
	}
	return false
}

func checkNotStuck(ev evidence) invariant {
	inv := invariant{Name: "no workflow stuck without a timer, a pending signature or a running activity"}
	live := func(w workflowFinal) bool {
		return w.PendingActivities > 0 || w.OpenTimers > 0 || w.WorkflowTaskPending
	}
	// A converged guest keeps no timer of its own: its host workflow's
	// listing wakes it when it drifts. It waits on that host workflow,
	// which must be live itself.
	hostLive := map[string]bool{}
	for _, w := range ev.Workflows {
		if strings.HasPrefix(w.ID, "host/") && w.Err == "" && live(w) {
			hostLive[w.ID] = true
		}
	}
	wokenByHost := func(w workflowFinal) bool {
		rest, ok := strings.CutPrefix(w.ID, "guest/")
		host, _, found := strings.Cut(rest, "/")
		return ok && found && w.Phase == workflows.PhaseConverged && hostLive[workflows.HostWorkflowID(host)]
	}
	for _, w := range ev.Workflows {
		inv.Checked++
		switch {
		case w.Err != "":
			inv.violate("%s: %s", w.ID, w.Err)
		case live(w) || w.Phase == workflows.PhasePending || wokenByHost(w):
		default:
			inv.violate("%s (%s, phase %q): no timer, activity or signature to wait for", w.ID, w.Type, w.Phase)
		}
	}
	return inv
}

func checkNotTerminated(ev evidence) invariant {
	inv := invariant{Name: "no workflow terminated, timed out or failed", Checked: len(ev.Workflows) + len(ev.Closed)}
	for _, c := range ev.Closed {
		inv.violate("%s: %s", c.ID, c.Status)
	}
	return inv
}

// undelivered outcomes say an approval never reached the gate: the guest
// no longer waited for it (the validator refused it, or its wait ended
// before it was tried), or no verdict came back.
var undelivered = []string{apNotPending, apNoAnswer, apSendFailure, "superseded"}

func checkRefusals(ev evidence) invariant {
	inv := invariant{Name: "every invalid approval the gate verified was refused with the right code"}
	for _, a := range ev.Approvals {
		if a.Expected == "" || slices.Contains(undelivered, a.Outcome) {
			continue
		}
		if unverified(ev, a) || readmitted(ev, a) || unconsumed(ev, a) {
			continue // counted apart
		}
		inv.Checked++
		outcome := a.Outcome
		if code, ok := benignVerdict(ev, a); ok {
			if code == gate.CodeAllowedAdmitted {
				// A replay that found its own admission for this act on
				// this instance: honoured as the act's retry, as
				// readmitted counts apart.
				continue
			}
			// The act was benign and ran; the gate's verdict on the
			// approval that came with it is its own record's.
			outcome = code
		}
		if outcome == a.Expected {
			continue
		}
		// A replayed approval near its end may expire on its way; an
		// expired one whose admission the host's ledger still holds is
		// refused as a replay, since the ledger is consulted before the
		// time window (the admission lapses at the next compaction).
		if a.Kind == apReplayed && (a.Outcome == "expired" && !a.Sent.Add(time.Minute).Before(a.Expires) ||
			a.Outcome == "replay" && a.Expected == "expired") {
			continue
		}
		inv.violate("%s approval to %s/%d: %s, want %s", a.Kind, a.Host, a.VMID, outcome, a.Expected)
	}
	return inv
}

// benignVerdict is the gate's verdict on approval a when it came with an
// act the gate allowed as benign: the gate verifies such an approval all
// the same, and spends it when it holds (approval_consumed), so that it
// cannot act later on another instance of the guest.
func benignVerdict(ev evidence, a approvalRecord) (string, bool) {
	he := ev.Hosts[a.Host]
	if he == nil || a.Nonce == "" {
		return "", false
	}
	for _, d := range he.Decisions {
		if d.Code == gate.CodeAllowedBenign && d.ApprovalCode != "" && d.Nonce == a.Nonce &&
			d.Guest == strconv.Itoa(a.VMID) && !d.Time.Before(a.Sent) {
			return d.ApprovalCode, true
		}
	}
	return "", false
}

// readmitted reports whether a replayed approval was honoured as the retry
// of its own act: its first run was admitted and failed before the act
// started, and the host, finding the admission for the same act on the same
// guest instance, let it finish (allowed_admitted). That is the design
// ("retries of that same act honour the admission"); an approval acting on
// a second instance is caught by the destructive-request invariant.
func readmitted(ev evidence, a approvalRecord) bool {
	if a.Kind != apReplayed || (a.Outcome != apAccepted && a.Outcome != apActionFail) {
		return false
	}
	he := ev.Hosts[a.Host]
	if he == nil {
		return false
	}
	for _, d := range he.Decisions {
		if d.Code == gate.CodeAllowedAdmitted && d.Nonce == a.Nonce && d.Guest == strconv.Itoa(a.VMID) && !d.Time.Before(a.Sent) {
			return true
		}
	}
	return false
}

// unconsumed reports whether a replayed approval was accepted because the
// host had never consumed it: when it was first sent, the host allowed the
// act as benign (the rollback of its own fresh create) without looking at
// it, so its nonce was never spent and no admission was written. Sent again
// within its window to a later instance under the same VMID, it is a valid
// approval for "destroy guest N", which names no instance, and the host
// admits it for that instance. That is what the design says (an approval is
// bound to an instance when it is admitted), but not what the operator who
// signed it saw; the figures count these apart.
func unconsumed(ev evidence, a approvalRecord) bool {
	if a.Kind != apReplayed || (a.Outcome != apAccepted && a.Outcome != apActionFail) {
		return false
	}
	he := ev.Hosts[a.Host]
	if he == nil {
		return false
	}
	admittedNow := false
	for _, d := range he.Decisions {
		if d.Nonce != a.Nonce {
			continue
		}
		if d.Code == gate.CodeAllowedSigned && d.Time.Before(a.Sent) {
			return false // consumed before: this replay had to be refused
		}
		if d.Code == gate.CodeAllowedSigned && d.Guest == strconv.Itoa(a.VMID) {
			admittedNow = true
		}
	}
	return admittedNow
}

// unverified reports whether an invalid approval was answered "accepted"
// although the gate never verified it: no gate decision carries its nonce
// from the moment it was sent, and either the host allowed the act as
// benign meanwhile (the rollback of a create of the agent's own, never
// started: the gate does not look at an approval there) or the step failed
// before it reached the gate (the workflow answers "accepted, but the
// action failed" to any failure that is not a refusal). The guest workflow
// waits for a signature for such a destroy all the same, since its planner
// never relies on the rollback exemption, and answers whatever approval
// unblocks it as accepted. No data is at stake (the act is benign by the
// host's facts, or did not happen), but the verdict is wrong for an
// invalid approval; the figures count these apart.
func unverified(ev evidence, a approvalRecord) bool {
	if a.Outcome != apAccepted && a.Outcome != apActionFail {
		return false
	}
	he := ev.Hosts[a.Host]
	if he == nil {
		return false
	}
	within := func(t time.Time) bool { return !t.Before(a.Sent) && t.Before(a.Sent.Add(2*time.Minute)) }
	benign := false
	for _, d := range he.Decisions {
		if d.Nonce != "" && d.Nonce == a.Nonce && within(d.Time) {
			return false // the gate did look at it
		}
		if d.Code == gate.CodeAllowedBenign && d.Op == a.Op && d.Guest == strconv.Itoa(a.VMID) && within(d.Time) {
			benign = true
		}
	}
	return benign || a.Outcome == apActionFail
}

func sortedHosts(ev evidence) []string {
	out := make([]string, 0, len(ev.Hosts))
	for h := range ev.Hosts {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

func short(key string) string {
	if len(key) > 12 {
		return key[:12]
	}
	return key
}
