package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// rawPayload is an argument sent as it is, bypassing the client's encoding:
// what a hostile hub or a hand-made `temporal` command can send.
func rawPayload(encoding, data string) converter.RawValue {
	return converter.NewRawValue(&commonpb.Payload{
		Metadata: map[string][]byte{"encoding": []byte(encoding)},
		Data:     []byte(data),
	})
}

func rawJSON(data string) converter.RawValue { return rawPayload("json/plain", data) }

// Malformed and hostile payloads sent straight to a guest workflow's
// Updates and Signals and to the host workflow's Signals, bypassing
// felhomctl, while an action waits for a signature: every Update is
// refused before it enters the history, by its decoding or its validator,
// with an error that names what is wrong; no Signal fails a workflow task
// or the workflow; nothing reaches Proxmox and the workflow's desired
// state, generation and pending action are as before. The genuine approval
// then still works, once.
func TestHostilePayloadsToTheWorkflows(t *testing.T) {
	host := uniqueHost("pve-bad")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 140, Name: "customer", Status: "running", MemoryMiB: 1024, Cores: 1,
		Disks: map[string]string{"scsi0": "local-lvm:vm-140-disk-0,size=32G"}}))
	ops := newOperatorKey(t, "ed25519")
	a := startAgent(t, host, sim, ops.Pub)
	id := workflows.GuestWorkflowID(host, 140)
	a.applySpec(t, desired.Spec{Host: host, VMID: 140, State: desired.Absent})
	before := a.waitPhase(t, 140, workflows.PhasePending)
	mutations := func() int {
		n := 0
		for _, r := range sim.Requests() {
			if r.Method != "GET" {
				n++
			}
		}
		return n
	}
	mutationsBefore := mutations()

	spec := func(edit func(*desired.Spec)) desired.Spec {
		s := desired.Spec{Host: host, VMID: 140, Kind: desired.QEMU, State: desired.Running}
		edit(&s)
		return s
	}
	manyOptions := spec(func(s *desired.Spec) {
		s.Options = map[string]string{}
		for i := range desired.MaxOptions + 1 {
			s.Options[fmt.Sprintf("usb%d", i)] = "host=1-1"
		}
	})
	job := func(edit func(*workflows.SignedJobInput)) workflows.SignedJobInput {
		j := workflows.SignedJobInput{Host: host, Action: desired.Action{Op: gate.OpGuestDestroy, Host: host, Guest: "140"},
			Approval: workflows.Approval{Blob: "{}", Signature: "sig"}}
		edit(&j)
		return j
	}
	giant := strings.Repeat("A", 100<<10)
	updates := []struct {
		name, update string
		args         []any
		want         string // in the error the caller gets
	}{
		{"set-desired: not JSON", workflows.UpdateSetDesired, []any{rawJSON("host: pve1\nvmid: 140")}, "invalid character"},
		{"set-desired: an encoding no one reads", workflows.UpdateSetDesired, []any{rawPayload("binary/x-gob", "\x00\x01")}, "binary/x-gob"},
		{"set-desired: a list", workflows.UpdateSetDesired, []any{rawJSON(`[140]`)}, "cannot unmarshal array"},
		{"set-desired: vmid a string", workflows.UpdateSetDesired, []any{rawJSON(`{"host":"` + host + `","vmid":"140","state":"absent"}`)}, "cannot unmarshal string"},
		{"set-desired: nothing", workflows.UpdateSetDesired, nil, "host: \"\" must be"},
		{"set-desired: unknown fields", workflows.UpdateSetDesired, []any{rawJSON(`{"host":"` + host + `","vmid":140,"kind":"qemu","state":"running","memroy":"2G","Cores":2,"disk":{}}`)},
			"disk, memroy: not a field of a desired state"},
		{"set-desired: negative memory", workflows.UpdateSetDesired, []any{spec(func(s *desired.Spec) { s.MemoryMiB = -5 })}, "memory: -5 MiB is below"},
		{"set-desired: 5000 GiB of memory", workflows.UpdateSetDesired, []any{spec(func(s *desired.Spec) { s.Memory = "5000GiB" })}, "memory: 5120000 MiB is more than"},
		{"set-desired: a disk of 2 PiB", workflows.UpdateSetDesired, []any{spec(func(s *desired.Spec) { s.Disks = map[string]string{"scsi0": "local-lvm:2097152"} })}, "disks.scsi0: 2097152 GiB is more than"},
		{"set-desired: 1000 options", workflows.UpdateSetDesired, []any{manyOptions}, "options: 257 are more than 256"},
		{"set-desired: another host", workflows.UpdateSetDesired, []any{spec(func(s *desired.Spec) { s.Host = "pve-other" })}, "is not this workflow's guest"},
		{"set-desired: another guest", workflows.UpdateSetDesired, []any{spec(func(s *desired.Spec) { s.VMID = 141 })}, "is not this workflow's guest"},
		{"approve: not JSON", workflows.UpdateApprove, []any{rawJSON("-----BEGIN SSH SIGNATURE-----")}, "invalid character"},
		{"approve: a string", workflows.UpdateApprove, []any{rawJSON(`"signature"`)}, "cannot unmarshal string"},
		{"approve: blob a number", workflows.UpdateApprove, []any{rawJSON(`{"blob":5,"signature":"x"}`)}, "cannot unmarshal number"},
		{"approve: empty", workflows.UpdateApprove, []any{workflows.Approval{}}, "approval needs both blob and signature"},
		{"approve: giant signature", workflows.UpdateApprove, []any{workflows.Approval{Blob: "{}", Signature: giant}}, "more than the 65536 of an SSH signature"},
		{"approve: giant blob", workflows.UpdateApprove, []any{workflows.Approval{Blob: giant, Signature: "sig"}}, "more than the 65536 of an op"},
		{"run-job: not JSON", workflows.UpdateRunJob, []any{rawJSON("guest.destroy 140")}, "invalid character"},
		{"run-job: another guest", workflows.UpdateRunJob, []any{job(func(j *workflows.SignedJobInput) { j.Action.Guest = "141" })}, "sent to the workflow of"},
		{"run-job: another host", workflows.UpdateRunJob, []any{job(func(j *workflows.SignedJobInput) { j.Host, j.Action.Host = "pve-other", "pve-other" })}, "sent to the workflow of"},
		{"run-job: a key rotation", workflows.UpdateRunJob, []any{job(func(j *workflows.SignedJobInput) { j.Action.Op = gate.OpSignersRotate })}, "is not a job a guest workflow runs"},
		{"run-job: no approval", workflows.UpdateRunJob, []any{job(func(j *workflows.SignedJobInput) { j.Approval = workflows.Approval{} })}, "needs both blob and signature"},
		{"run-job: giant signature", workflows.UpdateRunJob, []any{job(func(j *workflows.SignedJobInput) { j.Approval.Signature = giant })}, "more than the 65536"},
		{"an update no workflow has", "set-desire", []any{spec(func(*desired.Spec) {})}, "set-desire"},
	}
	for _, tt := range updates {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			h, err := a.client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
				WorkflowID: id, UpdateName: tt.update, Args: tt.args, WaitForStage: client.WorkflowUpdateStageCompleted,
			})
			if err == nil {
				var res any
				err = h.Get(ctx, &res)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v\nwant it to contain %q", err, tt.want)
			}
			if len(err.Error()) > 8<<10 {
				t.Errorf("the error is %d bytes long: it echoes the payload", len(err.Error()))
			}
		})
	}

	ctx := context.Background()
	hostID := workflows.HostWorkflowID(host)
	signals := []struct {
		workflow, name string
		arg            any
	}{
		{id, workflows.SignalSetDesired, rawJSON("not json")},
		{id, workflows.SignalSetDesired, rawPayload("binary/x-gob", "\x00")},
		{id, workflows.SignalSetDesired, rawJSON(`{"vmid":[1]}`)},
		{id, workflows.SignalSetDesired, manyOptions},
		{id, workflows.SignalApprove, rawJSON("not json")},
		{id, workflows.SignalApprove, rawJSON(`[1,2]`)},
		{id, workflows.SignalReconcile, rawJSON(`{"why":1}`)},
		{id, "no-such-signal", rawJSON(`{}`)},
		{hostID, workflows.SignalDesiredChanged, rawJSON("not json")},
		{hostID, workflows.SignalDesiredChanged, rawJSON(`{"vmid":"x","spec":5}`)},
		{hostID, workflows.SignalConfigure, rawJSON(`{"interval":"soon"}`)},
		{hostID, workflows.SignalConfigure, workflows.HostSettings{Interval: time.Nanosecond}},
		{hostID, workflows.SignalConfigure, workflows.HostSettings{Interval: -time.Hour}},
		// Last, the ones whose refusal shows: a spec for another guest
		// and a garbage approval, which the host's gate refuses.
		{id, workflows.SignalSetDesired, spec(func(s *desired.Spec) { s.Host = "pve-other" })},
		{id, workflows.SignalApprove, workflows.Approval{Blob: "{}", Signature: "not a signature"}},
	}
	for _, s := range signals {
		if err := a.client.SignalWorkflow(ctx, s.workflow, "", s.name, s.arg); err != nil {
			t.Errorf("signal %s to %s: %v", s.name, s.workflow, err)
		}
	}
	after := a.waitStatus(t, 140, "the signals' refusals shown", func(st workflows.GuestStatus) bool {
		return strings.Contains(st.LastError, "desired state refused") && st.Pending != nil && st.Pending.LastRejection == "armor"
	})
	if !strings.Contains(after.LastError, "is not this workflow's guest") {
		t.Errorf("last error %q does not say why the desired state was refused", after.LastError)
	}
	if after.Phase != workflows.PhasePending || after.Generation != before.Generation || after.Desired == nil || after.Desired.State != desired.Absent ||
		after.Pending == nil || after.Pending.Action.Op != before.Pending.Action.Op {
		t.Errorf("after the hostile payloads: phase %s, generation %d, desired %+v, pending %+v; want them as before (%s, %d, absent, %s)",
			after.Phase, after.Generation, after.Desired, after.Pending, before.Phase, before.Generation, before.Pending.Action.Op)
	}
	waitFor(t, "the host workflow to take its signals", func() bool {
		events := runEvents(t, a.client, hostID, "")
		lastSignal, taken := -1, false
		for i, ev := range events {
			switch ev.GetEventType() {
			case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
				lastSignal, taken = i, false
			case enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
				taken = lastSignal >= 0
			}
		}
		return taken && countSignals(t, a, hostID) >= 5
	})
	for _, wf := range []string{id, hostID} {
		desc, err := a.client.DescribeWorkflowExecution(ctx, wf, "")
		must(t, err)
		if st := desc.GetWorkflowExecutionInfo().GetStatus(); st != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			t.Errorf("%s is %s, want running", wf, st)
		}
		for _, ev := range runEvents(t, a.client, wf, "") {
			if ev.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_TASK_FAILED {
				t.Errorf("%s: a workflow task failed: %v", wf, ev.GetWorkflowTaskFailedEventAttributes().GetFailure())
			}
		}
	}
	if n := mutations(); n != mutationsBefore {
		t.Fatalf("%d requests that change something reached Proxmox, want none", n-mutationsBefore)
	}
	var hostStatus workflows.HostStatus
	res, err := a.client.QueryWorkflow(ctx, hostID, "", workflows.QueryHostStatus)
	must(t, err)
	must(t, res.Get(&hostStatus))
	if hostStatus.Interval < workflows.MinDriftCheckInterval {
		t.Errorf("host workflow's interval is %s: a hostile configure was taken", hostStatus.Interval)
	}
	recordHistory(t, a.client, id, "", "guest-desired-memo-hostile-payloads")
	recordHistory(t, a.client, hostID, "", "host-from-guests-hostile-payloads")

	// The genuine approval still works, once.
	if v := a.approve(t, 140, signWithSSHKeygen(t, ops, opFor(before.Pending.OpTemplate))); !v.Accepted {
		t.Fatalf("the genuine approval after the hostile payloads: %+v", v)
	}
	a.waitPhase(t, 140, workflows.PhaseConverged)
	if n := countRequests(sim, "DELETE", "/qemu/140"); n != 1 {
		t.Errorf("destroy sent %d times, want once", n)
	}
}

// countSignals counts the signals in the history of workflowID's run.
func countSignals(t *testing.T, a *agent, workflowID string) int {
	n := 0
	for _, ev := range runEvents(t, a.client, workflowID, "") {
		if ev.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED {
			n++
		}
	}
	return n
}

// A guest and a host workflow started directly with timings below their
// floors (a resync, a retry and a drift check interval of a nanosecond or
// less, a history bound below one) run with the floors instead: they do not
// read Proxmox or continue as new without pause.
func TestHostileStartInputsAreRaisedToTheirFloors(t *testing.T) {
	host := uniqueHost("pve-floor")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 150, Name: "web", Status: "running", MemoryMiB: 512, Cores: 1}))
	a := startAgent(t, host, sim, newOperatorKey(t, "ed25519").Pub)
	ctx := context.Background()

	spec := desired.Spec{Host: host, VMID: 150, Kind: desired.QEMU, Name: "web", State: desired.Running, Memory: "512", Cores: 1}
	guestRun := startGuestWorkflow(t, a, workflows.GuestInput{Host: host, VMID: 150, Desired: &spec,
		ResyncEvery: -time.Second, RetryEvery: time.Nanosecond, MaxHistoryEvents: -1})
	a.waitPhase(t, 150, workflows.PhaseConverged)
	guestID := workflows.GuestWorkflowID(host, 150)
	waitFor(t, "the resync timer after the pass", func() bool {
		return eventFollowedBy(runEvents(t, a.client, guestID, ""), stepDone, ofType(enumspb.EVENT_TYPE_TIMER_STARTED))
	})

	hostID := workflows.HostWorkflowID(host) + "-floor"
	hostRun, err := a.client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: hostID, TaskQueue: workflows.TaskQueue(host)},
		workflows.HostWorkflow, workflows.HostInput{Host: host, Interval: time.Nanosecond, MaxHistoryEvents: -1})
	must(t, err)
	t.Cleanup(func() { _ = a.client.TerminateWorkflow(context.Background(), hostID, "", "test done") })
	waitFor(t, "the host workflow's first pass and its timer", func() bool {
		return followedBy(runEvents(t, a.client, hostID, ""), enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, enumspb.EVENT_TYPE_TIMER_STARTED)
	})

	for _, run := range []client.WorkflowRun{guestRun, hostRun} {
		desc, err := a.client.DescribeWorkflowExecution(ctx, run.GetID(), "")
		must(t, err)
		if got := desc.GetWorkflowExecutionInfo().GetExecution().GetRunId(); got != run.GetRunID() {
			t.Errorf("%s continued as new (run %s, started %s): its history bound was taken below one", run.GetID(), got, run.GetRunID())
		}
	}
	// The guest waits on a timer after its pass (above) instead of reading
	// again at once; the host's interval is the floor.
	var hostStatus workflows.HostStatus
	res, err := a.client.QueryWorkflow(ctx, hostID, "", workflows.QueryHostStatus)
	must(t, err)
	must(t, res.Get(&hostStatus))
	if hostStatus.Interval != workflows.MinDriftCheckInterval {
		t.Errorf("host workflow's interval is %s, want the floor %s", hostStatus.Interval, workflows.MinDriftCheckInterval)
	}
	recordHistory(t, a.client, guestID, "", "guest-desired-memo-input-floors")
	recordHistory(t, a.client, hostID, "", "host-from-guests-input-floors")
}
