package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/sshkeys/sshkeystest"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
)

// The operating loop end to end, with felhomctl's run function against an
// embedded Temporal server, the real worker, the Proxmox simulator and keys
// made by ssh-keygen: apply, status, plan, pending, approve (refused for an
// unpinned key, accepted for the pinned one), a replayed approval refused
// by the host, approval through ssh-agent, and a signed job.
func TestOperatingLoop(t *testing.T) {
	const host = "ctl1"
	srv := devservertest.Start(t)
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, TaskDuration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	for _, g := range []pvesim.Guest{
		{VMID: 101, Name: "web", Status: "stopped", MemoryMiB: 1024, Cores: 2},
		{VMID: 102, Name: "old", Status: "running", MemoryMiB: 512, Cores: 1},
		{VMID: 103, Name: "older", Status: "stopped", MemoryMiB: 512, Cores: 1},
	} {
		if err := sim.AddVM(g); err != nil {
			t.Fatal(err)
		}
	}
	if err := sim.AddVolume("local-lvm:vm-150-disk-0", 1<<30); err != nil {
		t.Fatal(err)
	}
	ops := newKey(t, "ops@test")
	stranger := newKey(t, "stranger@test")
	startWorker(t, srv.FrontendAddr(), srv.Namespace(), host, sim, ops.pub)
	t.Setenv("SSH_AUTH_SOCK", "")
	// ctlIn runs felhomctl with stdin as what the operator types.
	ctlIn := func(t *testing.T, stdin string, args ...string) (string, string, int) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		args = append([]string{"--address", srv.FrontendAddr(), "--namespace", srv.Namespace()}, args...)
		code := run(args, strings.NewReader(stdin), &stdout, &stderr)
		t.Logf("felhomctl %s: exit %d\n%s%s", strings.Join(args[4:], " "), code, stdout.String(), stderr.String())
		return stdout.String(), stderr.String(), code
	}
	ctl := func(t *testing.T, args ...string) (string, string, int) {
		t.Helper()
		return ctlIn(t, "", args...)
	}
	tc := devservertest.Client(t)
	dir := t.TempDir()
	guests := writeFile(t, dir, "guests.yaml", `
guests:
  - {host: ctl1, vmid: 101, kind: qemu, name: web, state: running, memory: 1GiB, cores: 2}
  - {host: ctl1, vmid: 102, kind: qemu, state: absent}
---
host: ctl1
vmid: 103
state: absent
`)

	stdout, stderr, code := ctl(t, "apply", "-f", guests)
	if code != exitOK {
		t.Fatalf("apply: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, id := range []string{"guest/ctl1/101", "guest/ctl1/102", "guest/ctl1/103"} {
		if !strings.Contains(stdout, id+": accepted (generation 1)") {
			t.Errorf("apply output lacks %s accepted:\n%s", id, stdout)
		}
	}
	st := waitPhase(t, ctl, "ctl1/101", workflows.PhaseConverged)
	if g, _ := sim.Guest(101); g.Status != "running" {
		t.Fatalf("guest 101 is %s after apply, want running", g.Status)
	}
	if st.Observed == nil || st.Observed.Status != "running" || len(st.Recent) == 0 || st.Recent[len(st.Recent)-1].Action.Op != "guest.start" {
		t.Errorf("status of 101 = %+v, want observed running after a guest.start", st)
	}
	waitPhase(t, ctl, "ctl1/102", workflows.PhasePending)
	waitPhase(t, ctl, "ctl1/103", workflows.PhasePending)

	t.Run("status text", func(t *testing.T) {
		stdout, _, code := ctl(t, "status", "--host", host, "101")
		for _, want := range []string{"guest/ctl1/101", "phase:      converged", "observed:   running qemu name=web memory=1024MiB cores=2", "done     guest.start {}"} {
			if code != exitOK || !strings.Contains(stdout, want) {
				t.Errorf("status: exit %d, output lacks %q:\n%s", code, want, stdout)
			}
		}
		stdout, _, _ = ctl(t, "status", "ctl1/102")
		if !strings.Contains(stdout, `pending:    guest.destroy {"kind":"qemu"}: desired state is absent`) {
			t.Errorf("status of 102 does not show the pending destroy:\n%s", stdout)
		}
		_, stderr, code := ctl(t, "status", "ctl1/999")
		if code != exitFailure || !strings.Contains(stderr, "guest/ctl1/999 does not exist") {
			t.Errorf("status of an unknown guest: exit %d, %s", code, stderr)
		}
	})

	t.Run("plan", func(t *testing.T) {
		// 105 exists on the host and no desired state ever named it.
		if err := sim.AddVM(pvesim.Guest{VMID: 105, Name: "unmanaged", Status: "running", MemoryMiB: 512, Cores: 1}); err != nil {
			t.Fatal(err)
		}
		more := writeFile(t, dir, "more.yaml", `
host: ctl1
vmid: 101
kind: qemu
name: web
state: stopped
memory: 2048
cores: 2
---
host: ctl1
vmid: 102
state: absent
---
host: ctl1
vmid: 104
kind: qemu
state: running
---
host: ctl1
vmid: 105
state: absent
`)
		stdout, stderr, code := ctl(t, "plan", "-f", more)
		if code != exitOK {
			t.Fatalf("plan: exit %d\n%s%s", code, stdout, stderr)
		}
		for _, want := range []string{
			"guest/ctl1/101 (observed: running)",
			`  - guest.config {"memory":2048}: configuration differs` + "\n",
			`  - guest.shutdown {"force_stop":true,"timeout_seconds":120}: desired state is stopped` + "\n",
			`  - guest.destroy {"kind":"qemu"}: desired state is absent  [destructive: needs signature]`,
			"guest/ctl1/104 (no workflow yet; observed: does not exist)",
			`  - guest.create {"cores":1,"kind":"qemu","memory":512}: guest does not exist`,
			// Read on the host before any apply: the destroy apply would
			// hold for a signature, not "no changes".
			"guest/ctl1/105 (no workflow yet; observed: running)",
			"Plan: 4 of 4 guests change, 2 actions need a signature.",
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("plan output lacks %q:\n%s", want, stdout)
			}
		}
		stdout, _, _ = ctl(t, "plan", "-f", more, "--output", "json")
		var out struct {
			Guests []planGuest `json:"guests"`
		}
		if err := json.Unmarshal([]byte(stdout), &out); err != nil || len(out.Guests) != 4 {
			t.Fatalf("plan --output json: %v\n%s", err, stdout)
		}
		if a := out.Guests[1].Actions; len(a) != 1 || a[0].Op != "guest.destroy" || !a[0].NeedsSignature {
			t.Errorf("json plan of 102 = %+v, want one guest.destroy that needs a signature", a)
		}
		if out.Guests[2].WorkflowExists || out.Guests[2].Observed == nil || out.Guests[2].Observed.Exists {
			t.Errorf("json plan of 104 = %+v, want no workflow and observed not to exist", out.Guests[2])
		}
		if a := out.Guests[3].Actions; out.Guests[3].WorkflowExists || len(a) != 1 || a[0].Op != "guest.destroy" || !a[0].NeedsSignature {
			t.Errorf("json plan of 105 = %+v, want no workflow and one guest.destroy that needs a signature", out.Guests[3])
		}
		// --detailed-exitcode: 3 when something would change, 0 when not.
		if _, _, code := ctl(t, "plan", "-f", more, "--detailed-exitcode"); code != exitChanges {
			t.Errorf("plan --detailed-exitcode with changes: exit %d, want %d", code, exitChanges)
		}
		same := writeFile(t, dir, "same.yaml", "{host: ctl1, vmid: 101, kind: qemu, name: web, state: running, memory: 1GiB, cores: 2}\n")
		if stdout, stderr, code := ctl(t, "plan", "-f", same, "--detailed-exitcode"); code != exitOK || !strings.Contains(stdout, "no changes") {
			t.Errorf("plan --detailed-exitcode without changes: exit %d, want 0\n%s%s", code, stdout, stderr)
		}
		// Nothing changed: 101 still runs with 1024 MiB, 104 has no workflow.
		if g, _ := sim.Guest(101); g.Status != "running" || g.MemoryMiB != 1024 {
			t.Errorf("plan changed guest 101: %+v", g)
		}
		for _, ref := range []string{"ctl1/104", "ctl1/105"} {
			if _, _, code := ctl(t, "status", ref); code != exitFailure {
				t.Errorf("plan started a guest workflow for %s", ref)
			}
		}
		if _, ok := sim.Guest(105); !ok {
			t.Error("plan destroyed guest 105")
		}
	})

	t.Run("pending", func(t *testing.T) {
		var items []pendingItem
		deadline := time.Now().Add(20 * time.Second)
		for {
			stdout, stderr, code := ctl(t, "pending", "--host", host, "--output", "json")
			var out struct {
				Pending []pendingItem `json:"pending"`
			}
			if code != exitOK || json.Unmarshal([]byte(stdout), &out) != nil {
				t.Fatalf("pending: exit %d\n%s%s", code, stdout, stderr)
			}
			items = out.Pending
			if len(items) == 2 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		var ids []string
		for _, it := range items {
			ids = append(ids, it.WorkflowID)
			if it.Op != "guest.destroy" || it.HostID != host || it.Params["kind"] != "qemu" || it.Reason != "desired state is absent" || it.Since.IsZero() {
				t.Errorf("pending item %+v, want a guest.destroy of a qemu guest", it)
			}
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"guest/ctl1/102", "guest/ctl1/103"}) {
			t.Fatalf("pending lists %v, want guest/ctl1/102 and guest/ctl1/103", ids)
		}
		stdout, _, _ := ctl(t, "pending")
		if !strings.Contains(stdout, "WORKFLOW ID") || !regexpMatch(`guest/ctl1/102\s+guest\.destroy\s+\{"kind":"qemu"\}\s+desired state is absent\s+\d+s`, stdout) {
			t.Errorf("pending text output:\n%s", stdout)
		}
		stdout, _, _ = ctl(t, "pending", "--host", "elsewhere")
		if !strings.Contains(stdout, "No action is waiting for a signature.") {
			t.Errorf("pending --host elsewhere:\n%s", stdout)
		}
		stdout, _, _ = ctl(t, "pending", "--host", "elsewhere", "--output", "json")
		if !strings.Contains(stdout, `"pending": []`) {
			t.Errorf("pending --output json with nothing pending: %s", stdout)
		}
	})

	t.Run("approve", func(t *testing.T) {
		// Nothing is signed or sent without a confirmation: no answer on
		// stdin is exit 2, any answer but "yes" exit 1.
		_, stderr, code := ctl(t, "approve", "guest/ctl1/102", "--key", ops.path)
		if code != exitUsage || !strings.Contains(stderr, "no confirmation on stdin") || !strings.Contains(stderr, "op          guest.destroy") {
			t.Fatalf("approve without --yes or an answer: exit %d, stderr %q; want exit 2 after showing the op", code, stderr)
		}
		_, stderr, code = ctlIn(t, "no\n", "approve", "guest/ctl1/102", "--key", ops.path)
		if code != exitFailure || !strings.Contains(stderr, `answered "no": not approved; nothing was signed or sent`) {
			t.Fatalf("approve answered no: exit %d, stderr %q", code, stderr)
		}
		if _, ok := sim.Guest(102); !ok {
			t.Fatal("guest 102 destroyed without a confirmation")
		}
		stdout, _, _ := ctl(t, "status", "ctl1/102", "--output", "json")
		var st statusOutput
		if err := json.Unmarshal([]byte(stdout), &st); err != nil || st.Pending == nil || st.Pending.LastRejection != "" {
			t.Fatalf("status after unconfirmed approvals: %v %s; want pending with no rejection (nothing sent)", err, stdout)
		}

		stdout, stderr, code = ctl(t, "approve", "guest/ctl1/102", "--key", stranger.path, "--yes")
		if code != exitFailure || !strings.HasPrefix(stdout, "rejected: unknown_signer") {
			t.Fatalf("approve with an unpinned key: exit %d, stdout %q, stderr %q; want rejected: unknown_signer", code, stdout, stderr)
		}
		if _, ok := sim.Guest(102); !ok {
			t.Fatal("guest 102 destroyed with an unpinned key")
		}
		stdout, _, _ = ctl(t, "status", "ctl1/102", "--output", "json")
		st = statusOutput{}
		if err := json.Unmarshal([]byte(stdout), &st); err != nil || st.Pending == nil || st.Pending.LastRejection != "unknown_signer" {
			t.Errorf("status after the refusal: %v %s", err, stdout)
		}

		// "yes" typed on stdin approves.
		stdout, stderr, code = ctlIn(t, "yes\n", "approve", "guest/ctl1/102", "--key", ops.path, "--ttl", "5m")
		if code != exitOK || !regexpMatch(`^accepted( \(task UPID:\S+ OK\))?\n$`, stdout) {
			t.Fatalf("approve with the pinned key: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		if !strings.Contains(stderr, "signed guest.destroy on ctl1/102 {\"kind\":\"qemu\"}") {
			t.Errorf("approve did not show what it signed: %s", stderr)
		}
		if g, ok := sim.Guest(102); ok {
			t.Fatalf("guest 102 still exists after an accepted approval: %+v", g)
		}
		waitPhase(t, ctl, "ctl1/102", workflows.PhaseConverged)

		stdout, stderr, code = ctl(t, "approve", "guest/ctl1/101", "--key", ops.path, "--yes")
		if code != exitFailure || !strings.Contains(stderr, "guest/ctl1/101: no action is waiting for a signature") {
			t.Errorf("approve with nothing pending: exit %d, %s%s", code, stdout, stderr)
		}
	})

	t.Run("replay", func(t *testing.T) {
		signer := parseKey(t, ops.path)
		var p *workflows.PendingAction
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		v, err := tc.QueryWorkflow(ctx, "guest/ctl1/103", "", workflows.QueryPending)
		if err != nil || v.Get(&p) != nil || p == nil {
			t.Fatalf("query pending of 103: %v %+v", err, p)
		}
		tpl := p.OpTemplate
		approval, _, err := signOp(gate.Op{Op: tpl.Op, HostID: tpl.HostID, GuestID: tpl.GuestID, Params: tpl.Params}, signer, "", 10*time.Minute, gate.DefaultMaxValidity, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		send := func() workflows.ApprovalVerdict {
			h, err := tc.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
				WorkflowID: "guest/ctl1/103", UpdateName: workflows.UpdateApprove,
				Args: []any{approval}, WaitForStage: client.WorkflowUpdateStageCompleted,
			})
			var verdict workflows.ApprovalVerdict
			if err == nil {
				err = h.Get(ctx, &verdict)
			}
			if err != nil {
				t.Fatalf("approve update: %v", err)
			}
			return verdict
		}
		if v := send(); !v.Accepted || v.Code != "" {
			t.Fatalf("first approval: %+v, want accepted", v)
		}
		if _, ok := sim.Guest(103); ok {
			t.Fatal("guest 103 not destroyed")
		}
		waitPhase(t, ctl, "ctl1/103", workflows.PhaseConverged)

		// The guest is back (restored by hand, say): the workflow holds the
		// same destroy again, and the same signed blob is a replay.
		if err := sim.AddVM(pvesim.Guest{VMID: 103, Name: "older", Status: "stopped", MemoryMiB: 512, Cores: 1}); err != nil {
			t.Fatal(err)
		}
		if err := tc.SignalWorkflow(ctx, "guest/ctl1/103", "", workflows.SignalReconcile, "test"); err != nil {
			t.Fatal(err)
		}
		waitPhase(t, ctl, "ctl1/103", workflows.PhasePending)
		if v := send(); v.Accepted || v.Code != "replay" {
			t.Fatalf("replayed approval: %+v, want code replay", v)
		}
		if _, ok := sim.Guest(103); !ok {
			t.Fatal("a replayed approval destroyed the guest")
		}
	})

	t.Run("approve through ssh-agent", func(t *testing.T) {
		sock := sshkeystest.StartAgent(t, ops.path, stranger.path)
		t.Setenv("SSH_AUTH_SOCK", sock)
		_, stderr, code := ctl(t, "approve", "guest/ctl1/103", "--yes")
		if code != exitFailure || !strings.Contains(stderr, "ssh-agent holds 2 keys") {
			t.Errorf("approve with two agent keys and no --key-id: exit %d, %s", code, stderr)
		}
		stdout, stderr, code := ctl(t, "approve", "guest/ctl1/103", "--key-id", "ops@test", "--output", "json", "--yes")
		var res approveResult
		if code != exitOK || json.Unmarshal([]byte(stdout), &res) != nil || !res.Accepted || res.KeyID != "ops@test" || res.Op != "guest.destroy" {
			t.Fatalf("approve through ssh-agent: exit %d, %s%s", code, stdout, stderr)
		}
		if _, ok := sim.Guest(103); ok {
			t.Fatal("guest 103 not destroyed")
		}
	})

	t.Run("job submit", func(t *testing.T) {
		const vol = "local-lvm:vm-150-disk-0"
		stdout, stderr, code := ctl(t, "job", "submit", "--op", "volume.wipe", "--host", host, "--guest", "150",
			"--params", `{"volume":"`+vol+`"}`, "--key", stranger.path)
		if code != exitFailure || !strings.Contains(stdout, "rejected: unknown_signer") {
			t.Errorf("job with an unpinned key: exit %d, %s%s", code, stdout, stderr)
		}
		if !slices.Contains(sim.Volumes(), vol) {
			t.Fatal("volume wiped with an unpinned key")
		}
		stdout, stderr, code = ctl(t, "job", "submit", "--op", "volume.wipe", "--host", host, "--guest", "150",
			"--params", `{"volume":"`+vol+`"}`, "--key", ops.path)
		if code != exitOK || !regexpMatch(`^job/[0-9a-f]{32}: done \(`, stdout) {
			t.Fatalf("job submit: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		if slices.Contains(sim.Volumes(), vol) {
			t.Fatal("volume still there after the job")
		}
	})

	t.Run("apply refused by the workflow", func(t *testing.T) {
		// A workflow started by someone else for another guest under this
		// guest's ID: the workflow refuses the spec, felhomctl says so.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "guest/ctl1/105", TaskQueue: workflows.TaskQueue(host)},
			workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 106})
		if err != nil {
			t.Fatal(err)
		}
		spec := writeFile(t, dir, "105.yaml", "{host: ctl1, vmid: 105, kind: qemu, state: running}\n")
		stdout, stderr, code := ctl(t, "apply", "-f", spec)
		if code != exitFailure || !strings.Contains(stdout, "guest/ctl1/105: rejected: host/vmid: ctl1/105 is not this workflow's guest ctl1/106") {
			t.Errorf("apply to a mismatched workflow: exit %d, %s%s", code, stdout, stderr)
		}
		stdout, _, code = ctl(t, "apply", "-f", spec, "--output", "json")
		var out struct {
			Results []applyResult `json:"results"`
		}
		if code != exitFailure || json.Unmarshal([]byte(stdout), &out) != nil || len(out.Results) != 1 || out.Results[0].Accepted || out.Results[0].Error == "" {
			t.Errorf("apply --output json of a refused spec: exit %d, %s", code, stdout)
		}
	})

	t.Run("a terminated workflow is not pending", func(t *testing.T) {
		if err := sim.AddVM(pvesim.Guest{VMID: 107, Name: "gone", Status: "stopped", MemoryMiB: 512, Cores: 1}); err != nil {
			t.Fatal(err)
		}
		spec := writeFile(t, dir, "107.yaml", "{host: ctl1, vmid: 107, state: absent}\n")
		if _, _, code := ctl(t, "apply", "-f", spec); code != exitOK {
			t.Fatal("apply 107 failed")
		}
		waitPhase(t, ctl, "ctl1/107", workflows.PhasePending)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := tc.TerminateWorkflow(ctx, "guest/ctl1/107", "", "test"); err != nil {
			t.Fatal(err)
		}
		// A closed workflow keeps its last search attributes.
		raw := visibility.PendingSignature + " = true AND WorkflowId = 'guest/ctl1/107' AND ExecutionStatus = 'Terminated'"
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			resp, err := tc.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: raw})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetExecutions()) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not found", raw)
			}
		}
		stdout, _, code := ctl(t, "pending", "--host", host)
		if code != exitOK || strings.Contains(stdout, "guest/ctl1/107") {
			t.Errorf("pending lists a terminated workflow: exit %d\n%s", code, stdout)
		}
	})

	t.Run("no worker for the host", func(t *testing.T) {
		defer func(d time.Duration) { progressEvery = d }(progressEvery)
		progressEvery = 300 * time.Millisecond
		spec := writeFile(t, dir, "nohost.yaml", "{host: nohost, vmid: 101, kind: qemu, state: running}\n")
		stdout, stderr, code := ctl(t, "apply", "-f", spec, "--command-timeout", "2s")
		if code != exitFailure || stdout != "" ||
			!strings.Contains(stderr, "guest/nohost/101: still waiting (") ||
			!strings.Contains(stderr, "guest/nohost/101: no answer after 2s (--command-timeout): is felhom-agent running for this host?") {
			t.Errorf("apply with no worker: exit %d, stdout %q, stderr:\n%s", code, stdout, stderr)
		}
		_, stderr, code = ctl(t, "status", "nohost/101", "--query-timeout", "1s")
		if code != exitFailure || !strings.Contains(stderr, "guest/nohost/101: no worker answered the status query within 1s") {
			t.Errorf("status with no worker: exit %d, %s", code, stderr)
		}
	})
}

// waitPhase polls felhomctl status --output json until the guest reaches phase.
func waitPhase(t *testing.T, ctl func(*testing.T, ...string) (string, string, int), ref, phase string) statusOutput {
	t.Helper()
	var st statusOutput
	deadline := time.Now().Add(30 * time.Second)
	for {
		stdout, stderr, code := ctl(t, "status", ref, "--output", "json")
		st = statusOutput{}
		if code == exitOK {
			if err := json.Unmarshal([]byte(stdout), &st); err != nil {
				t.Fatalf("status --output json: %v\n%s", err, stdout)
			}
			if st.Phase == phase {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: phase %q (last error %q, %s), want %s", ref, st.Phase, st.LastError, stderr, phase)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type testKey struct{ path, pub string }

// newKey makes an ed25519 key with ssh-keygen.
func newKey(t *testing.T, comment string) testKey {
	t.Helper()
	path := filepath.Join(t.TempDir(), "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return testKey{path: path, pub: strings.TrimSpace(string(pub))}
}

func parseKey(t *testing.T, path string) ssh.Signer {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startWorker runs host's worker in this process until the test ends.
func startWorker(t *testing.T, address, namespace, host string, sim *pvesim.Server, operational ...string) {
	t.Helper()
	dir := t.TempDir()
	cfg := worker.Defaults()
	cfg.HostID = host
	cfg.Temporal.Address, cfg.Temporal.Namespace = address, namespace
	cfg.Proxmox.URL, cfg.Proxmox.Node = sim.URL(), sim.Node()
	cfg.Proxmox.TokenID, cfg.Proxmox.TokenSecret = sim.TokenID(), sim.TokenSecret()
	cfg.NonceStore = filepath.Join(dir, "nonces.log")
	cfg.ProvenanceLedger = filepath.Join(dir, "provenance.log")
	cfg.PinnedSigners = filepath.Join(dir, "signers.json")
	cfg.Metrics.Address = "off"
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Signers.Operational = operational
	if err := cfg.Validate(); err != nil {
		t.Fatalf("worker config: %v", err)
	}
	var roots *x509.CertPool
	if tr, ok := sim.HTTPClient().Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
		roots = tr.TLSClientConfig.RootCAs
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- worker.Run(ctx, cfg, slog.New(slog.DiscardHandler), worker.RunOptions{ProxmoxRootCAs: roots, Ready: func(worker.Info) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("worker did not start: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("worker did not start within 60s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker stopped with: %v", err)
		}
	})
}

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }
