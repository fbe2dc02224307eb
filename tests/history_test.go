package tests

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/sdk/client"
	sdkworker "go.temporal.io/sdk/worker"

	"github.com/felhom/felhom-agent/workflows"
)

// -record writes the histories of tests/testdata/histories that do not
// exist yet, from the end-to-end tests:
//
//	go test ./tests -record
//
// A recorded history is never rewritten: it stands for the workflows that
// ran that code and may still be running, and a deploy must keep replaying
// it. A change guarded by workflow.GetVersion records its new paths under
// new names, beside the old ones.
var record = flag.Bool("record", false, "write the missing recorded workflow histories in testdata/histories")

const historiesDir = "testdata/histories"

// recordHistory saves the history of a workflow run under name when -record
// is given and no history of that name exists. runID "" is the latest run.
func recordHistory(t *testing.T, c client.Client, workflowID, runID, name string) {
	t.Helper()
	if !*record {
		return
	}
	path := filepath.Join(historiesDir, name+".json")
	if _, err := os.Stat(path); err == nil {
		t.Logf("kept %s: a recorded history is never rewritten", path)
		return
	}
	hist := &historypb.History{}
	it := c.GetWorkflowHistory(context.Background(), workflowID, runID, false, 0)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatalf("history of %s: %v", workflowID, err)
		}
		hist.Events = append(hist.Events, ev)
	}
	data, err := temporalproto.CustomJSONMarshalOptions{Indent: "  "}.Marshal(hist)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.MkdirAll(historiesDir, 0o755))
	must(t, os.WriteFile(path, data, 0o644))
	t.Logf("recorded %s (%d events)", name, len(hist.Events))
}

// Every recorded history replays against today's workflow code: a change
// that would make a running workflow take another path fails here.
func TestRecordedHistoriesReplay(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(historiesDir, "*.json"))
	must(t, err)
	want := []string{
		// The guest workflow's state machine, the host workflow's pass loop and
		// the signed job that ran on its own, as first recorded ...
		"benign-converge", "benign-converge-announced", "destroy-approved", "rejected-approvals", "compensation",
		"continue-as-new", "host-drift", "signed-job",
		// ... and their other branches: a fired resync timer, set-desired,
		// approve and reconcile signals, a refused desired state, a superseded
		// wait, a conflict, both sides of failure-keeps-wakeup with a fired
		// retry timer, a host continue-as-new, a refused job.
		"legacy-guest-signals", "legacy-guest-superseded", "legacy-guest-conflict",
		"legacy-guest-failure-wakeup", "legacy-guest-failure-drops-wakeup",
		"legacy-host-continue-as-new", "legacy-job-rejected",
		// The guest workflow's linear loop (versionGuestLoop), the host
		// workflow's loop by history size (versionHostLoop) and signed jobs
		// handed to the guest's workflow (versionJobThroughGuest).
		"guest-loop-converge", "guest-loop-rejected-approvals", "guest-loop-destroy-approved", "guest-loop-compensation",
		"guest-loop-continue-as-new", "guest-loop-signals", "guest-loop-superseded", "guest-loop-failure-retry",
		"guest-loop-conflict", "guest-loop-pending-continue-as-new", "guest-loop-pending-carried", "guest-loop-cancelled",
		"guest-loop-restore-job", "guest-loop-destroy-job",
		"host-loop-drift", "host-loop-continue-as-new", "host-loop-holding", "host-loop-configure",
		// The guest loop at versionGuestCost: no timed resync, the desired
		// state announced through the read, steps that tell the next what
		// they left.
		"guest-cost-converge", "guest-cost-rejected-approvals", "guest-cost-destroy-approved", "guest-cost-compensation",
		"guest-cost-continue-as-new", "guest-cost-signals", "guest-cost-superseded", "guest-cost-failure-retry",
		"guest-cost-conflict", "guest-cost-pending-continue-as-new", "guest-cost-pending-carried", "guest-cost-cancelled",
		"guest-cost-restore-job", "guest-cost-destroy-job",
		// Waits that cancel their timer when work ends them first
		// (versionGuestWaits, versionHostWaits): the host loop's branches
		// at that version.
		"guest-waits-woken", "host-waits-notified", "host-waits-drift", "host-waits-continue-as-new",
		"host-waits-holding", "host-waits-configure", "host-waits-hostile-payloads", "host-waits-input-floors",
		// The guest loop whose read is a local activity
		// (versionGuestLocalRead), on every branch.
		"guest-local-read-converge", "guest-local-read-rejected-approvals", "guest-local-read-destroy-approved",
		"guest-local-read-compensation", "guest-local-read-continue-as-new", "guest-local-read-signals",
		"guest-local-read-superseded", "guest-local-read-failure-retry", "guest-local-read-conflict",
		"guest-local-read-pending-continue-as-new", "guest-local-read-pending-carried", "guest-local-read-cancelled",
		"guest-local-read-restore-job", "guest-local-read-destroy-job", "guest-local-read-woken",
		"guest-local-read-hostile-payloads", "guest-local-read-input-floors",
		// The guest loop whose wait for a signature ends on a reconcile
		// (versionGuestRereadHeld), on every branch.
		"guest-held-reread-converge", "guest-held-reread-rejected-approvals", "guest-held-reread-destroy-approved",
		"guest-held-reread-compensation", "guest-held-reread-continue-as-new", "guest-held-reread-signals",
		"guest-held-reread-superseded", "guest-held-reread-failure-retry", "guest-held-reread-conflict",
		"guest-held-reread-pending-continue-as-new", "guest-held-reread-pending-carried", "guest-held-reread-cancelled",
		"guest-held-reread-restore-job", "guest-held-reread-destroy-job", "guest-held-reread-woken",
		"guest-held-reread-hostile-payloads", "guest-held-reread-input-floors", "guest-held-reread-reconciled",
		// The guest loop whose create step starts the guest too
		// (versionGuestCreateStarts), on every branch.
		"guest-create-starts-converge", "guest-create-starts-rejected-approvals", "guest-create-starts-destroy-approved",
		"guest-create-starts-compensation", "guest-create-starts-continue-as-new", "guest-create-starts-signals",
		"guest-create-starts-superseded", "guest-create-starts-failure-retry", "guest-create-starts-conflict",
		"guest-create-starts-pending-continue-as-new", "guest-create-starts-pending-carried", "guest-create-starts-cancelled",
		"guest-create-starts-restore-job", "guest-create-starts-destroy-job", "guest-create-starts-woken",
		"guest-create-starts-hostile-payloads", "guest-create-starts-input-floors", "guest-create-starts-reconciled",
		// The guest loop that publishes its desired state in its memo
		// (versionGuestDesiredMemo), on every branch, and the host loop
		// that judges its listing against the published desired states
		// (versionHostFromGuests), notices of older guests included.
		"guest-desired-memo-converge", "guest-desired-memo-rejected-approvals", "guest-desired-memo-destroy-approved",
		"guest-desired-memo-compensation", "guest-desired-memo-continue-as-new", "guest-desired-memo-signals",
		"guest-desired-memo-superseded", "guest-desired-memo-failure-retry", "guest-desired-memo-conflict",
		"guest-desired-memo-pending-continue-as-new", "guest-desired-memo-pending-carried", "guest-desired-memo-cancelled",
		"guest-desired-memo-restore-job", "guest-desired-memo-destroy-job", "guest-desired-memo-woken",
		"guest-desired-memo-hostile-payloads", "guest-desired-memo-input-floors", "guest-desired-memo-reconciled",
		"host-from-guests-notified", "host-from-guests-drift", "host-from-guests-continue-as-new",
		"host-from-guests-holding", "host-from-guests-configure", "host-from-guests-hostile-payloads", "host-from-guests-input-floors",
		"job-through-guest-wipe", "job-through-guest-rejected", "job-through-guest-restore", "job-on-host-rotate",
	}
	have := map[string]bool{}
	for _, f := range files {
		have[strings.TrimSuffix(filepath.Base(f), ".json")] = true
	}
	for _, name := range want {
		if !have[name] {
			t.Errorf("no recorded history %s.json (run: go test ./tests -record)", name)
		}
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r := sdkworker.NewWorkflowReplayer()
			r.RegisterWorkflow(workflows.GuestReconcileWorkflow)
			r.RegisterWorkflow(workflows.HostWorkflow)
			r.RegisterWorkflow(workflows.SignedJobWorkflow)
			if err := r.ReplayWorkflowHistoryFromJSONFile(nil, f); err != nil {
				t.Fatalf("replay %s: %v", f, err)
			}
		})
	}
}
