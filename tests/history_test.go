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

// -record rewrites tests/testdata/histories from the end-to-end tests:
//
//	go test ./tests -record
//
// Only do that for a workflow change that running workflows may never see
// (a new workflow type, or one guarded by workflow.GetVersion); the recorded
// histories are how a deploy is proven not to break workflows in flight.
var record = flag.Bool("record", false, "rewrite the recorded workflow histories in testdata/histories")

const historiesDir = "testdata/histories"

// recordHistory saves the history of a workflow run under name when -record
// is given. runID "" is the latest run.
func recordHistory(t *testing.T, c client.Client, workflowID, runID, name string) {
	t.Helper()
	if !*record {
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
	must(t, os.WriteFile(filepath.Join(historiesDir, name+".json"), data, 0o644))
	t.Logf("recorded %s (%d events)", name, len(hist.Events))
}

// Every recorded history replays against today's workflow code: a change
// that would make a running workflow take another path fails here.
func TestRecordedHistoriesReplay(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(historiesDir, "*.json"))
	must(t, err)
	want := []string{"benign-converge", "benign-converge-announced", "destroy-approved", "rejected-approvals", "compensation", "continue-as-new", "host-drift", "signed-job"}
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
