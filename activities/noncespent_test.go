package activities

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

// errCrash stands for the worker dying at killpoint.NonceSpent.
var errCrash = errors.New("simulated crash: the nonce is spent, the admission not written")

// crashAfterNonceSpent runs a destroy of guest 101 with approval whose
// attempt ends where killpoint.NonceSpent is (the gate allowed it and spent
// its nonce; the admission is not written), then reopens the ledger and the
// nonce store from their files as a restarted worker would.
func crashAfterNonceSpent(t *testing.T, h *harness, approval *gate.Approval) {
	t.Helper()
	afterNonceSpent = func(op string) error {
		if op != gate.OpGuestDestroy {
			t.Errorf("killed at op %q", op)
		}
		return errCrash
	}
	_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
	afterNonceSpent = nil
	if err == nil || !strings.Contains(err.Error(), errCrash.Error()) {
		t.Fatalf("the attempt was not cut where the nonce is spent: %v", err)
	}
	if n := h.nonces.Len(); n != 1 {
		t.Fatalf("%d nonces spent by the crashed attempt, want 1", n)
	}
	if n := h.mutations("*", "/nodes/*/qemu/101*"); n != 0 {
		t.Fatalf("%d mutating requests before the crash, want 0", n)
	}
	h.ledger.Close()
	h.nonces.Close()
	h.act = h.newActivities(filepath.Join(h.keyDir, "provenance.log"), filepath.Join(h.keyDir, "nonces.log"))
}

// wantLedger checks what the host holds for approval after an attempt: its
// admission's state ("" for none) and the number of nonces spent.
func wantLedger(t *testing.T, h *harness, approval *gate.Approval, state ledger.AdmissionState, nonces int) {
	t.Helper()
	if ad, _ := h.ledger.Admission(approvalKey(approval)); ad.State != state {
		t.Fatalf("admission %+v, want state %q", ad, state)
	}
	if n := h.nonces.Len(); n != nonces {
		t.Fatalf("%d nonces spent, want %d", n, nonces)
	}
}

// intend writes the intent an attempt for action on the live guest vmid
// would have written for approval.
func intend(t *testing.T, h *harness, vmid int, approval *gate.Approval, action gate.Action) {
	t.Helper()
	g, err := h.act.readGuest(t.Context(), vmid, "")
	if err != nil {
		t.Fatal(err)
	}
	digest, err := actionDigest(action)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.ledger.Intend(ledger.Admission{Key: approvalKey(approval), Action: digest, VMID: vmid, Instance: instanceOf(g)}); err != nil {
		t.Fatal(err)
	}
}

// TestRetryAfterNonceSpentCompletesTheAct: a worker killed after the gate
// spent an approval's nonce and before the admission was written leaves the
// intent the executor wrote before Decide; the retry of that act on that
// guest instance completes it with the one approval, and nothing else can
// lean on the spent nonce.
func TestRetryAfterNonceSpentCompletesTheAct(t *testing.T) {
	t.Cleanup(func() { afterNonceSpent = nil })

	t.Run("same act same instance", func(t *testing.T) {
		h := newHarness(t, pvesim.Config{})
		h.addVM(customerVM(101, "running"))
		approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
		crashAfterNonceSpent(t, h, approval)

		if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval}); err != nil {
			t.Fatalf("retry after the crash: %v", err)
		}
		h.gone(t, 101)
		if n := h.mutations("DELETE", "/nodes/*/qemu/101"); n != 1 {
			t.Fatalf("%d destroy requests, want 1", n)
		}
		if n := h.nonces.Len(); n != 1 {
			t.Fatalf("%d nonces spent, want 1", n)
		}
		// The act is done: the approval authorises nothing more.
		h.addVM(customerVM(101, "running"))
		_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
		wantErr(t, err, "replay", false)
		guestExists(101)(t, h)
	})

	t.Run("same blob for another instance", func(t *testing.T) {
		h := newHarness(t, pvesim.Config{})
		h.addVM(customerVM(101, "running"))
		approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
		crashAfterNonceSpent(t, h, approval)

		// The guest goes away outside the agent; another takes VMID 101.
		h.outside("POST", "/nodes/pve1/qemu/101/status/stop", nil)
		h.outside("DELETE", "/nodes/pve1/qemu/101", map[string]any{"purge": 1})
		other := customerVM(101, "running")
		other.MemoryMiB = 4096
		h.addVM(other)
		_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
		wantErr(t, err, "replay", false)
		guestExists(101)(t, h)
		if n := h.nonces.Len(); n != 1 {
			t.Fatalf("%d nonces spent, want 1", n)
		}
	})

	t.Run("crash after the intent, before Decide", func(t *testing.T) {
		// The intent is on disk and the nonce unspent: the retry spends it.
		h := newHarness(t, pvesim.Config{})
		h.addVM(customerVM(101, "running"))
		approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
		intend(t, h, 101, approval, gate.Action{Op: gate.OpGuestDestroy, HostID: hostID, GuestID: "101", Params: map[string]any{"kind": "qemu"}})
		if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval}); err != nil {
			t.Fatalf("retry after the crash: %v", err)
		}
		h.gone(t, 101)
		wantLedger(t, h, approval, ledger.Done, 1)
	})

	t.Run("refused approval leaves no intent", func(t *testing.T) {
		h := newHarness(t, pvesim.Config{})
		h.addVM(customerVM(101, "running"))
		approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "lxc"}) // binds another act
		_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
		wantErr(t, err, "binding_mismatch", false)
		wantLedger(t, h, approval, "", 0)
	})

	t.Run("benign act drops an intent", func(t *testing.T) {
		// A benign act spends the approval and is admitted nowhere: no
		// intent may outlive it to explain that spend.
		h := newHarness(t, pvesim.Config{})
		h.createVM(150, true)
		approval := h.approve(gate.OpGuestDestroy, "150", map[string]any{"kind": "qemu"})
		intend(t, h, 150, approval, gate.Action{Op: gate.OpGuestDestroy, HostID: hostID, GuestID: "150", Params: map[string]any{"kind": "qemu"}})
		if _, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 150, Approval: approval}); err != nil {
			t.Fatal(err)
		}
		h.gone(t, 150)
		wantLedger(t, h, approval, "", 1)
	})

	t.Run("without the intent the retry is a replay", func(t *testing.T) {
		// What the host did before it wrote intents: the spent nonce alone
		// refuses the retry, and the operator must sign again.
		h := newHarness(t, pvesim.Config{})
		h.addVM(customerVM(101, "running"))
		approval := h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})
		crashAfterNonceSpent(t, h, approval)
		if err := h.ledger.Drop(approvalKey(approval)); err != nil {
			t.Fatal(err)
		}
		_, err := run[TaskResult](h, h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: approval})
		wantErr(t, err, "replay", false)
		guestExists(101)(t, h)
	})
}
