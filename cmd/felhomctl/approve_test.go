package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	sdkworker "go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// forgedGuestWorkflow stands in for a hostile Temporal server: under a guest
// workflow's ID it answers the pending query with whatever op it was
// started with, and records every approval it receives (query "received").
func forgedGuestWorkflow(ctx workflow.Context, pending workflows.PendingAction) error {
	var received []workflows.Approval
	if err := workflow.SetQueryHandler(ctx, workflows.QueryPending, func() (*workflows.PendingAction, error) {
		return &pending, nil
	}); err != nil {
		return err
	}
	if err := workflow.SetQueryHandler(ctx, "received", func() ([]workflows.Approval, error) {
		return received, nil
	}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandler(ctx, workflows.UpdateApprove, func(ctx workflow.Context, a workflows.Approval) (workflows.ApprovalVerdict, error) {
		received = append(received, a)
		return workflows.ApprovalVerdict{Accepted: true, Detail: "done"}, nil
	}); err != nil {
		return err
	}
	workflow.GetSignalChannel(ctx, "stop").Receive(ctx, nil)
	return nil
}

// approve refuses to sign what a hostile server says is pending: another
// host's or guest's action, an op no guest workflow waits for (a
// signers.rotate adding the server's key, a restore, an unknown op), or
// params naming another guest's volume. Nothing is signed or sent for any
// of them. The same workflow with a genuine answer is signed and sent after
// --yes or "yes" typed on stdin, and not without a confirmation.
func TestApproveRefusesForgedPendingAnswers(t *testing.T) {
	srv := devservertest.Start(t)
	tc := devservertest.Client(t)
	const queue = "felhomctl-forged"
	w := sdkworker.New(tc, queue, sdkworker.Options{})
	w.RegisterWorkflowWithOptions(forgedGuestWorkflow, workflow.RegisterOptions{Name: "ForgedGuest"})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	ops := newKey(t, "ops@test")
	attacker := newKey(t, "attacker@evil")
	t.Setenv("SSH_AUTH_SOCK", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// start runs a forged guest workflow under id answering tpl.
	start := func(t *testing.T, id string, tpl workflows.OpTemplate) {
		t.Helper()
		_, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, "ForgedGuest",
			workflows.PendingAction{OpTemplate: tpl, Since: time.Now(), Action: desired.Action{
				Op: tpl.Op, Host: tpl.HostID, Guest: tpl.GuestID, Params: tpl.Params, Destructive: true, Reason: "forged by the server",
			}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tc.TerminateWorkflow(context.Background(), id, "", "test over") })
	}
	received := func(t *testing.T, id string) []workflows.Approval {
		t.Helper()
		v, err := tc.QueryWorkflow(ctx, id, "", "received")
		var got []workflows.Approval
		if err == nil {
			err = v.Get(&got)
		}
		if err != nil {
			t.Fatalf("query received of %s: %v", id, err)
		}
		return got
	}
	approve := func(t *testing.T, stdin string, args ...string) (string, string, int) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		args = append([]string{"--address", srv.FrontendAddr(), "--namespace", srv.Namespace(), "approve"}, args...)
		code := run(args, strings.NewReader(stdin), &stdout, &stderr)
		t.Logf("felhomctl %s: exit %d\n%s%s", strings.Join(args[4:], " "), code, stdout.String(), stderr.String())
		return stdout.String(), stderr.String(), code
	}

	rotate := map[string]any{"operational": []any{attacker.pub}, "recovery": []any{attacker.pub}}
	forged := []struct {
		name      string
		tpl       workflows.OpTemplate
		wantField []string // every field named in the refusal
	}{
		{"signers.rotate adding the server's key", workflows.OpTemplate{Op: gate.OpSignersRotate, HostID: "pve1", GuestID: "101", Params: rotate}, []string{"op: \"signers.rotate\" cannot be pending on a guest workflow"}},
		{"host-level signers.rotate", workflows.OpTemplate{Op: gate.OpSignersRotate, HostID: "pve1", Params: rotate}, []string{"op: \"signers.rotate\"", `guest_id: "" is not the workflow's guest "101"`}},
		{"another guest's destroy", workflows.OpTemplate{Op: gate.OpGuestDestroy, HostID: "pve1", GuestID: "102", Params: map[string]any{"kind": "qemu"}}, []string{`guest_id: "102" is not the workflow's guest "101"`}},
		{"another host's destroy", workflows.OpTemplate{Op: gate.OpGuestDestroy, HostID: "pve2", GuestID: "101", Params: map[string]any{"kind": "qemu"}}, []string{`host_id: "pve2" is not the workflow's host "pve1"`}},
		{"a restore over the guest", workflows.OpTemplate{Op: gate.OpGuestRestore, HostID: "pve1", GuestID: "101", Params: map[string]any{"archive": "local:backup/vzdump-qemu-101.vma.zst"}}, []string{`op: "guest.restore" cannot be pending`}},
		{"an unknown op", workflows.OpTemplate{Op: "guest.frobnicate", HostID: "pve1", GuestID: "101"}, []string{`op: "guest.frobnicate" cannot be pending`}},
		{"no op", workflows.OpTemplate{HostID: "pve1", GuestID: "101"}, []string{`op: "" cannot be pending`}},
		{"wipe of another guest's volume", workflows.OpTemplate{Op: gate.OpVolumeWipe, HostID: "pve1", GuestID: "101", Params: map[string]any{"volume": "local-lvm:vm-102-disk-0"}}, []string{`params.volume: "local-lvm:vm-102-disk-0" names a volume of guest 102, not of guest 101`}},
		{"wipe naming no volume of the guest", workflows.OpTemplate{Op: gate.OpVolumeWipe, HostID: "pve1", GuestID: "101", Params: map[string]any{"volume": "local:iso/debian.iso"}}, []string{`params.volume: volume.wipe must name a volume of guest 101`}},
		{"config attaching another guest's disk", workflows.OpTemplate{Op: gate.OpGuestConfig, HostID: "pve1", GuestID: "101", Params: map[string]any{"scsi1": "local-lvm:vm-102-disk-0,size=8G"}}, []string{`params.scsi1: "local-lvm:vm-102-disk-0,size=8G" names a volume of guest 102`}},
		{"everything at once", workflows.OpTemplate{Op: gate.OpSignersRotate, HostID: "pve9", GuestID: "999", Params: rotate}, []string{"op: ", "host_id: \"pve9\"", "guest_id: \"999\""}},
	}
	for _, tt := range forged {
		t.Run(tt.name, func(t *testing.T) {
			// Each forged workflow runs under guest/pve1/101 in turn.
			id := workflows.GuestWorkflowID("pve1", 101)
			start(t, id, tt.tpl)
			for _, args := range [][]string{{id, "--key", ops.path, "--yes"}, {id, "--key", ops.path}} {
				stdout, stderr, code := approve(t, "yes\n", args...)
				if code != exitFailure || stdout != "" || !strings.Contains(stderr, "refusing to sign the pending action the server returned; nothing was signed or sent") {
					t.Errorf("approve %v: exit %d, stdout %q, stderr %q; want exit 1 and a refusal", args, code, stdout, stderr)
				}
				for _, want := range tt.wantField {
					if !strings.Contains(stderr, want) {
						t.Errorf("refusal lacks %q:\n%s", want, stderr)
					}
				}
				if strings.Contains(stderr, "waits for a signature on") || strings.Contains(stderr, "waiting for the host's verdict") {
					t.Errorf("approve showed or signed a forged op:\n%s", stderr)
				}
			}
			if got := received(t, id); len(got) != 0 {
				t.Errorf("the forged workflow received %d approvals, want none", len(got))
			}
			if err := tc.TerminateWorkflow(ctx, id, "", "next case"); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("a workflow ID that is not a guest's", func(t *testing.T) {
		for _, id := range []string{"job/abc", "host/pve1", "guest/pve1", "guest/pve1/web", "guest//101", "guest/pve1/0101", "guest/pve1/99"} {
			_, stderr, code := approve(t, "yes\n", id, "--key", ops.path, "--yes")
			if code != exitUsage || !strings.Contains(stderr, "is not guest/HOST/VMID") {
				t.Errorf("approve %s: exit %d, %s; want exit 2", id, code, stderr)
			}
		}
	})

	t.Run("the genuine answer", func(t *testing.T) {
		id := workflows.GuestWorkflowID("pve1", 101)
		tpl := workflows.OpTemplate{Op: gate.OpGuestDestroy, HostID: "pve1", GuestID: "101", Params: map[string]any{"kind": "qemu"}}
		start(t, id, tpl)

		// No answer on stdin: exit 2 after showing the op; "no": exit 1.
		_, stderr, code := approve(t, "", id, "--key", ops.path)
		if code != exitUsage || !strings.Contains(stderr, "no confirmation on stdin") || !strings.Contains(stderr, "give --yes") {
			t.Errorf("approve with nothing on stdin: exit %d, %s", code, stderr)
		}
		for _, want := range []string{"guest/pve1/101 waits for a signature on:", "  op          guest.destroy\n", "  host_id     pve1\n",
			"  guest_id    101\n", `  params      {"kind":"qemu"}` + "\n", "  not_before  ", "  expires_at  ", "  nonce       ", "  key_id      SHA256:"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("approve did not show %q:\n%s", want, stderr)
			}
		}
		if _, stderr, code := approve(t, "no\n", id, "--key", ops.path); code != exitFailure || !strings.Contains(stderr, `answered "no"`) {
			t.Errorf("approve answered no: exit %d, %s", code, stderr)
		}
		if _, stderr, code := approve(t, "y\n", id, "--key", ops.path); code != exitFailure || !strings.Contains(stderr, `answered "y"`) {
			t.Errorf("approve answered y: exit %d, %s", code, stderr)
		}
		if got := received(t, id); len(got) != 0 {
			t.Fatalf("%d approvals sent without a confirmation", len(got))
		}

		// "yes" typed on stdin, then --yes: each signs exactly the op shown.
		if stdout, stderr, code := approve(t, "yes\n", id, "--key", ops.path); code != exitOK || stdout != "accepted\n" {
			t.Fatalf("approve answered yes: exit %d, %s%s", code, stdout, stderr)
		}
		if stdout, stderr, code := approve(t, "", id, "--key", ops.path, "--yes"); code != exitOK || stdout != "accepted\n" {
			t.Fatalf("approve --yes: exit %d, %s%s", code, stdout, stderr)
		}
		got := received(t, id)
		if len(got) != 2 {
			t.Fatalf("the workflow received %d approvals, want 2", len(got))
		}
		pub, comment, err := gate.ParseSignerLine(ops.pub)
		if err != nil {
			t.Fatal(err)
		}
		allowed, err := gate.NewAllowList([]gate.Signer{{Key: pub, Role: gate.RoleOperational, Comment: comment}})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range got {
			if _, err := gate.VerifySignature([]byte(a.Signature), []byte(a.Blob), allowed); err != nil {
				t.Errorf("approval does not verify: %v", err)
			}
			op, err := gate.ParseOp([]byte(a.Blob))
			if err != nil {
				t.Fatal(err)
			}
			if op.Op != tpl.Op || op.HostID != "pve1" || op.GuestID != "101" || op.Params["kind"] != "qemu" {
				t.Errorf("signed op %+v, want the pending destroy of pve1/101", op)
			}
			if err := gate.CheckValidity(op, time.Now(), gate.DefaultMaxValidity); err != nil {
				t.Errorf("signed op: %v", err)
			}
		}
	})
}
