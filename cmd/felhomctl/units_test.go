package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows"
)

func TestParseGuestRef(t *testing.T) {
	tests := []struct {
		ref, host string
		wantHost  string
		wantVMID  int
		wantErr   string
	}{
		{ref: "pve1/101", wantHost: "pve1", wantVMID: 101},
		{ref: "101", host: "pve1", wantHost: "pve1", wantVMID: 101},
		{ref: "pve1/101", host: "pve1", wantHost: "pve1", wantVMID: 101},
		{ref: "pve1/101", host: "pve2", wantErr: "names host pve1, --host says pve2"},
		{ref: "101", wantErr: "give HOST/VMID"},
		{ref: "pve1/99", wantErr: "is not HOST/VMID"},
		{ref: "/101", wantErr: "is not HOST/VMID"},
		{ref: "pve1/x", wantErr: "is not HOST/VMID"},
	}
	for _, tt := range tests {
		h, v, err := parseGuestRef(tt.ref, tt.host)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseGuestRef(%q, %q) error = %v, want %q", tt.ref, tt.host, err, tt.wantErr)
			}
			continue
		}
		if err != nil || h != tt.wantHost || v != tt.wantVMID {
			t.Errorf("parseGuestRef(%q, %q) = %q, %d, %v; want %q, %d", tt.ref, tt.host, h, v, err, tt.wantHost, tt.wantVMID)
		}
	}
}

func TestPendingQuery(t *testing.T) {
	if got, want := pendingQuery(""), "FelhomPendingSignature = true AND ExecutionStatus = 'Running'"; got != want {
		t.Errorf("pendingQuery(\"\") = %q, want %q", got, want)
	}
	if got, want := pendingQuery("pve1"), "FelhomPendingSignature = true AND ExecutionStatus = 'Running' AND FelhomHost = 'pve1'"; got != want {
		t.Errorf("pendingQuery(pve1) = %q, want %q", got, want)
	}
}

func TestWaited(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"}, {45 * time.Second, "45s"}, {12*time.Minute + 5*time.Second, "12m"},
		{3*time.Hour + 20*time.Minute, "3h20m"}, {52 * time.Hour, "2d4h"},
	}
	for _, tt := range tests {
		if got := waited(tt.d); got != tt.want {
			t.Errorf("waited(%s) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestVerdictText(t *testing.T) {
	tests := []struct {
		v    workflows.ApprovalVerdict
		want string
	}{
		{workflows.ApprovalVerdict{Accepted: true}, "accepted"},
		{workflows.ApprovalVerdict{Accepted: true, Detail: "done"}, "accepted"},
		{workflows.ApprovalVerdict{Accepted: true, Detail: "already in place"}, "accepted (already in place)"},
		{workflows.ApprovalVerdict{Accepted: true, Code: "failed", Detail: "guest is locked"}, "accepted, but the action failed: guest is locked"},
		{workflows.ApprovalVerdict{Code: "expired", Detail: "expired: op has expired"}, "rejected: expired: op has expired"},
		{workflows.ApprovalVerdict{Code: "replay"}, "rejected: replay"},
	}
	for _, tt := range tests {
		if got := verdictText(tt.v); got != tt.want {
			t.Errorf("verdictText(%+v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

func TestParseParams(t *testing.T) {
	p, err := parseParams(`{"volume":"local-lvm:vm-101-disk-1","size_gib":9007199254740991}`)
	if err != nil {
		t.Fatal(err)
	}
	// Numbers keep their digits: the canonical form is what was typed.
	if got := paramsText(p); got != `{"size_gib":9007199254740991,"volume":"local-lvm:vm-101-disk-1"}` {
		t.Errorf("params = %s", got)
	}
	for _, bad := range []string{``, `[]`, `"x"`, `{"a":1} {}`, `{"a":`} {
		if _, err := parseParams(bad); err == nil {
			t.Errorf("parseParams(%q) accepted", bad)
		}
	}
}

// signOp's output is what the host checks: a canonical blob the gate parses
// back to the same op, signed in namespace felhom-op-v1 so that ssh-keygen
// -Y verify accepts it too.
func TestSignOpVerifiesWithGateAndSSHKeygen(t *testing.T) {
	key := newKey(t, "ops@test")
	signer := parseKey(t, key.path)
	now := time.Date(2026, 11, 23, 9, 0, 30, 500, time.UTC)
	tpl := gate.Op{Op: "guest.destroy", HostID: "pve1", GuestID: "101", Params: map[string]any{"kind": "qemu", "n": float64(3)}}
	approval, op, err := signOp(tpl, signer, "", 10*time.Minute, gate.DefaultMaxValidity, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(op.Nonce) != 32 || op.NotBefore != time.Date(2026, 11, 23, 8, 59, 30, 0, time.UTC) || op.ExpiresAt != time.Date(2026, 11, 23, 9, 10, 30, 0, time.UTC) {
		t.Errorf("op window/nonce = %s .. %s, %q", op.NotBefore, op.ExpiresAt, op.Nonce)
	}
	if !strings.HasPrefix(op.KeyID, "SHA256:") {
		t.Errorf("key_id = %q, want the key's fingerprint", op.KeyID)
	}
	parsed, err := gate.ParseOp([]byte(approval.Blob))
	if err != nil {
		t.Fatalf("gate.ParseOp of the signed blob: %v", err)
	}
	if parsed.Nonce != op.Nonce || parsed.Params["n"] != int64(3) {
		t.Errorf("parsed op = %+v", parsed)
	}
	pub, comment, err := gate.ParseSignerLine(key.pub)
	if err != nil {
		t.Fatal(err)
	}
	allowed, err := gate.NewAllowList([]gate.Signer{{Key: pub, Role: gate.RoleOperational, Comment: comment}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gate.VerifySignature([]byte(approval.Signature), []byte(approval.Blob), allowed); err != nil {
		t.Errorf("gate.VerifySignature: %v", err)
	}

	dir := t.TempDir()
	sigFile := filepath.Join(dir, "op.sig")
	signers := filepath.Join(dir, "allowed_signers")
	if err := os.WriteFile(sigFile, []byte(approval.Signature), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(signers, []byte("ops@test "+key.pub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", signers, "-I", "ops@test", "-n", gate.Namespace, "-s", sigFile)
	cmd.Stdin = strings.NewReader(approval.Blob)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("ssh-keygen -Y verify: %v\n%s", err, out)
	}
}

// A server that is not there is a runtime failure (exit 1) naming the
// address, not a usage error.
func TestUnreachableServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var stdout, stderr bytes.Buffer
	code := run([]string{"--address", addr, "status", "pve1/101"}, strings.NewReader(""), &stdout, &stderr)
	if code != exitFailure || !strings.Contains(stderr.String(), "felhomctl status: temporal: connect to "+addr) {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}

// checkPending accepts what a guest plan can hold for guest pve1/101 and
// names the field of everything else.
func TestCheckPending(t *testing.T) {
	tpl := func(op, host, guest string, params map[string]any) workflows.OpTemplate {
		return workflows.OpTemplate{Op: op, HostID: host, GuestID: guest, Params: params}
	}
	tests := []struct {
		name string
		tpl  workflows.OpTemplate
		want []string // fields refused; none means accepted
	}{
		{"destroy", tpl(gate.OpGuestDestroy, "pve1", "101", map[string]any{"kind": "qemu"}), nil},
		{"detach", tpl(gate.OpDiskDetach, "pve1", "101", map[string]any{"disk": "scsi1"}), nil},
		{"shrink, which no plan holds", tpl(gate.OpDiskShrink, "pve1", "101", map[string]any{"disk": "scsi0", "size_gib": 8}), []string{"op"}},
		{"config", tpl(gate.OpGuestConfig, "pve1", "101", map[string]any{"memory": 2048}), nil},
		{"config on the guest's own disk", tpl(gate.OpGuestConfig, "pve1", "101", map[string]any{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}), nil},
		{"config on a linked clone", tpl(gate.OpGuestConfig, "pve1", "101", map[string]any{"scsi0": "local-lvm:base-9000-disk-0/vm-101-disk-0"}), nil},
		{"wipe of an own volume", tpl(gate.OpVolumeWipe, "pve1", "101", map[string]any{"volume": "local-lvm:vm-101-disk-1"}), nil},
		{"wipe of an own file volume", tpl(gate.OpVolumeWipe, "pve1", "101", map[string]any{"volume": "local:101/vm-101-disk-1.qcow2"}), nil},
		{"wipe of an own subvolume", tpl(gate.OpVolumeWipe, "pve1", "101", map[string]any{"volume": "local-zfs:subvol-101-disk-0"}), nil},
		{"wipe of vm-1010's volume", tpl(gate.OpVolumeWipe, "pve1", "101", map[string]any{"volume": "local-lvm:vm-1010-disk-0"}), []string{"params.volume", "params.volume"}},
		{"wipe without a volume", tpl(gate.OpVolumeWipe, "pve1", "101", nil), []string{"params.volume"}},
		{"wipe of a volume in another key", tpl(gate.OpVolumeWipe, "pve1", "101", map[string]any{"target": "local-lvm:vm-101-disk-0"}), []string{"params.volume"}},
		{"rotation", tpl(gate.OpSignersRotate, "pve1", "101", nil), []string{"op"}},
		{"restore", tpl(gate.OpGuestRestore, "pve1", "101", nil), []string{"op"}},
		{"start", tpl(gate.OpGuestStart, "pve1", "101", nil), []string{"op"}},
		{"other host and guest", tpl(gate.OpGuestDestroy, "pve2", "102", nil), []string{"host_id", "guest_id"}},
		{"guest with a leading zero", tpl(gate.OpGuestDestroy, "pve1", "0101", nil), []string{"guest_id"}},
	}
	for _, tt := range tests {
		err := checkPending("pve1", 101, tt.tpl)
		var got []string
		var refusals []error
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			refusals = j.Unwrap()
		}
		for _, e := range refusals {
			var r *pendingRefusal
			if !errors.As(e, &r) {
				t.Errorf("%s: %v is not a pendingRefusal", tt.name, e)
				continue
			}
			got = append(got, r.Field)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: refused fields %v, want %v (%v)", tt.name, got, tt.want, err)
		}
	}
}
