package activities

import (
	"testing"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

// taskStatusPath matches every task-status poll.
const taskStatusPath = "/nodes/*/tasks/*/status"

// TestUPIDHeartbeatPrecedesTheFirstPoll: right after Proxmox answered the
// mutating request with a UPID, and before the first task-status poll, the
// activity records that UPID as its heartbeat. The first poll fails here, so
// no heartbeat of the task wait can stand in for it. The next attempt, handed
// that heartbeat, resumes the task without a second request.
func TestUPIDHeartbeatPrecedesTheFirstPoll(t *testing.T) {
	for _, name := range []string{"start", "create", "config", "destroy"} {
		t.Run(name, func(t *testing.T) {
			op := crashOps()[name]
			h := newHarness(t, pvesim.Config{})
			op.setup(h)
			var approval *gate.Approval
			if op.sign != nil {
				approval = op.sign(h)
			}
			firstPoll := pvesim.NewHook()
			h.srv.Inject(pvesim.Fault{Method: "GET", Path: taskStatusPath, Kind: pvesim.FaultHTTPError,
				Status: 500, Message: "unable to read task status", Hook: firstPoll})

			type beat struct {
				p           Progress
				afterPolled bool
			}
			var beats []beat
			e := h.env()
			e.SetOnActivityHeartbeatListener(func(_ *activity.Info, details converter.EncodedValues) {
				var p Progress
				if err := details.Get(&p); err != nil {
					t.Errorf("heartbeat details: %v", err)
					return
				}
				polled := false
				select {
				case <-firstPoll.Hit():
					polled = true
				default:
				}
				beats = append(beats, beat{p, polled})
			})
			fn, in := op.invoke(h.act, approval)
			if _, err := runIn[TaskResult](e, fn, in); err == nil {
				t.Fatal("the activity succeeded although its task's status could not be read")
			}
			sent := h.srv.RequestsMatching(op.method, op.path)
			if len(sent) != 1 || sent[0].UPID == "" {
				t.Fatalf("requests %+v, want one that started a task", sent)
			}
			select {
			case <-firstPoll.Hit():
			default:
				t.Fatal("the task's status was never polled")
			}
			want := Progress{Phase: name, UPID: sent[0].UPID}
			var recorded *Progress
			for _, b := range beats {
				if b.p == want && !b.afterPolled {
					recorded = &b.p
				}
			}
			if recorded == nil {
				t.Fatalf("heartbeats %+v, want %+v recorded before the first status poll", beats, want)
			}

			res, err := runIn[TaskResult](h.resumeFrom(*recorded), fn, in)
			if err != nil {
				t.Fatalf("next attempt: %v", err)
			}
			if n := len(h.srv.RequestsMatching(op.method, op.path)); n != 1 {
				t.Fatalf("%s %s sent %d times, want once", op.method, op.path, n)
			}
			if !res.Resumed || res.UPID != sent[0].UPID {
				t.Fatalf("next attempt = %+v, want the task %s resumed", res, sent[0].UPID)
			}
			op.check(t, h)
		})
	}
}
