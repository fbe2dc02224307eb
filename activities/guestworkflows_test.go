package activities

import (
	"testing"

	commonpb "go.temporal.io/api/common/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/sdk/converter"

	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// visibilityRecord is a guest workflow's record as ListWorkflowExecutions
// answers it, with the given memo and phase payloads (nil: absent).
func visibilityRecord(id string, phase, memoDesired *commonpb.Payload) *workflowpb.WorkflowExecutionInfo {
	e := &workflowpb.WorkflowExecutionInfo{
		Execution:        &commonpb.WorkflowExecution{WorkflowId: id, RunId: "run"},
		SearchAttributes: &commonpb.SearchAttributes{IndexedFields: map[string]*commonpb.Payload{}},
		Memo:             &commonpb.Memo{Fields: map[string]*commonpb.Payload{}},
	}
	if phase != nil {
		e.SearchAttributes.IndexedFields[visibility.Phase] = phase
	}
	if memoDesired != nil {
		e.Memo.Fields[workflows.MemoDesired] = memoDesired
	}
	return e
}

func payload(t testing.TB, v any) *commonpb.Payload {
	p, err := converter.GetDefaultDataConverter().ToPayload(v)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The visibility records of guest workflows are Temporal's claims: a record
// that does not name one of this host's guest workflows, or publishes a
// desired state for another guest or one that does not decode, is refused;
// a good one gives its VMID, phase and desired state.
func TestReadGuestWorkflow(t *testing.T) {
	spec := desired.Spec{Host: "pve1", VMID: 101, Kind: desired.QEMU, State: desired.Running, MemoryMiB: 512}
	raw := func(data string) *commonpb.Payload {
		return &commonpb.Payload{Metadata: map[string][]byte{"encoding": []byte("json/plain")}, Data: []byte(data)}
	}
	tests := []struct {
		name        string
		record      *workflowpb.WorkflowExecutionInfo
		wantErr     bool
		wantVMID    int
		wantPhase   string
		wantDesired bool
	}{
		{"published", visibilityRecord("guest/pve1/101", payload(t, "converged"), payload(t, spec)), false, 101, "converged", true},
		{"before the memo carried it", visibilityRecord("guest/pve1/101", payload(t, "converging"), nil), false, 101, "converging", false},
		{"no phase yet", visibilityRecord("guest/pve1/101", nil, nil), false, 101, "", false},
		{"another host's workflow", visibilityRecord("guest/pve2/101", nil, payload(t, spec)), true, 0, "", false},
		{"not a guest workflow", visibilityRecord("host/pve1", nil, nil), true, 0, "", false},
		{"VMID with a sign", visibilityRecord("guest/pve1/+101", nil, nil), true, 0, "", false},
		{"VMID with leading zeros", visibilityRecord("guest/pve1/0101", nil, nil), true, 0, "", false},
		{"no VMID", visibilityRecord("guest/pve1/", nil, nil), true, 0, "", false},
		{"desired state of another guest", visibilityRecord("guest/pve1/102", nil, payload(t, spec)), true, 0, "", false},
		{"desired state of another host", visibilityRecord("guest/pve1/101", nil, payload(t, desired.Spec{Host: "pve2", VMID: 101})), true, 0, "", false},
		{"desired state that is not a spec", visibilityRecord("guest/pve1/101", nil, raw(`["absent"]`)), true, 0, "", false},
		{"phase that is not a string", visibilityRecord("guest/pve1/101", raw(`{"x":1}`), nil), true, 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vmid, w, err := readGuestWorkflow("pve1", tt.record)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("read as guest %d %+v, want refused", vmid, w)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if vmid != tt.wantVMID || w.phase != tt.wantPhase || (w.desired != nil) != tt.wantDesired {
				t.Errorf("guest %d, phase %q, desired %+v; want %d, %q, desired %v", vmid, w.phase, w.desired, tt.wantVMID, tt.wantPhase, tt.wantDesired)
			}
			if tt.wantDesired && w.desired.State != spec.State {
				t.Errorf("desired %+v, want %+v", *w.desired, spec)
			}
		})
	}
}

// FuzzGuestWorkflowRecord feeds arbitrary workflow IDs and payloads to the
// reader of guest workflows' visibility records: never a panic, and what it
// accepts names this host's guest workflow and, if any, that guest's
// desired state.
func FuzzGuestWorkflowRecord(f *testing.F) {
	f.Add("guest/pve1/101", []byte(`"converged"`), []byte(`{"host":"pve1","vmid":101,"kind":"qemu","state":"running"}`))
	f.Add("guest/pve1/7", []byte(`null`), []byte(`null`))
	f.Add("guest/pve1/1e3", []byte(`1`), []byte(`{"host":"pve1","vmid":"101"}`))
	f.Add("guest/pve1/101/102", []byte(``), []byte(`{"host":"pve1","vmid":101,"disks":{"scsi0":1}}`))
	f.Fuzz(func(t *testing.T, id string, phase, memo []byte) {
		enc := map[string][]byte{"encoding": []byte("json/plain")}
		e := visibilityRecord(id, &commonpb.Payload{Metadata: enc, Data: phase}, &commonpb.Payload{Metadata: enc, Data: memo})
		vmid, w, err := readGuestWorkflow("pve1", e)
		if err != nil {
			return
		}
		if id != workflows.GuestWorkflowID("pve1", vmid) {
			t.Errorf("accepted %q as guest %d", id, vmid)
		}
		if w.desired != nil && (w.desired.Host != "pve1" || w.desired.VMID != vmid) {
			t.Errorf("accepted the desired state of %s/%d for guest %d", w.desired.Host, w.desired.VMID, vmid)
		}
	})
}
