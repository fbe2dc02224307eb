// Package killpoint lets the crash tests kill the agent at an exact point of
// a mutation: the code calls Reach(point, label) where a crash matters, and a
// test build of the agent (go build -tags killpoints) named there by the
// environment variable Env sends itself SIGKILL, as a power cut or the OOM
// killer would: no deferred call runs, nothing is flushed.
//
// The production build (without the tag) compiles Reach to nothing and never
// reads Env: setting the variable on a host changes nothing.
//
// Env holds POINT or POINT:LABEL. POINT alone kills at the first arrival at
// that point; with a label, only an arrival with that label (the phase of a
// Proxmox request, "start", "destroy", ...; the op of a gate decision,
// "guest.destroy", ...). The process writes "killpoint: POINT LABEL" to
// stderr before it dies, so a test can tell which point it died at. A test
// restarts the worker without the variable; one kill per process is all a
// point gives.
//
// The name lies outside the FELHOM_ prefix on purpose: every FELHOM_ variable
// is a configuration key of felhom-agent run, which refuses unknown ones.
package killpoint

import "strings"

// Env names the point a killpoints build dies at.
const Env = "AGENT_KILLPOINT"

// The points of a mutation, in the order an activity passes them.
const (
	// NonceSpent: the gate allowed a signed destructive step on this host
	// (the op's nonce is spent) and its admission is not written to the
	// ledger yet; the executor's intent is. Label: the op.
	NonceSpent = "nonce-spent"
	// GateAccepted: the gate accepted a signed destructive step on this
	// host (the op's nonce is spent, the admission written to the ledger),
	// and no request of the step was sent yet. Label: the op.
	GateAccepted = "gate-accepted"
	// BeforePost: a mutating request is about to be sent to Proxmox.
	// Label: the phase.
	BeforePost = "before-post"
	// AfterPost: Proxmox answered the mutating request with its task id,
	// which has not been recorded as the activity's heartbeat yet. Label:
	// the phase.
	AfterPost = "after-post"
	// TaskWait: the task's id is recorded on the Temporal server and a poll
	// found the task running. Label: the phase.
	TaskWait = "task-wait"
	// TaskDone: a poll found the task ended successfully; the activity has
	// not finished its own bookkeeping (ledger, hand-over) nor reported its
	// completion. Label: the phase.
	TaskDone = "task-done"
	// ActivityDone: an activity returned success and its completion has
	// not reached the Temporal server. Label: the activity type
	// ("StartGuest", "RestoreBackup", ...).
	ActivityDone = "activity-done"
)

// Points lists every kill point. NonceSpent and GateAccepted are reached
// only by a signed destructive step.
var Points = []string{NonceSpent, GateAccepted, BeforePost, AfterPost, TaskWait, TaskDone, ActivityDone}

// matches reports whether spec (Env's value) names point with label.
func matches(spec, point, label string) bool {
	if spec == "" {
		return false
	}
	p, l, labelled := strings.Cut(spec, ":")
	return p == point && (!labelled || l == label)
}
