package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// keys made once per test binary by the real ssh-keygen.
var (
	keysOnce                                     sync.Once
	opKey, recKey, strangerKey, smallRSA, rsaKey testKey
)

func testKeys(t *testing.T) {
	keysOnce.Do(func() {
		opKey = genKeyIn(t, sharedDir, "ed25519", 0)
		recKey = genKeyIn(t, sharedDir, "ed25519", 0)
		strangerKey = genKeyIn(t, sharedDir, "ed25519", 0)
		smallRSA = genKeyIn(t, sharedDir, "rsa", 1024)
		rsaKey = genKeyIn(t, sharedDir, "rsa", 2048)
	})
}

func destroyAction() Action {
	return Action{Op: OpGuestDestroy, HostID: "pve1", GuestID: "101", Params: map[string]any{"purge": true}}
}

func destroyOp(nonce string) Op {
	op := baseOp()
	op.Nonce = nonce
	op.Params = map[string]any{"purge": true}
	return op
}

func newGate(t *testing.T, store NonceStore, logger *slog.Logger) *Gate {
	t.Helper()
	testKeys(t)
	signers, err := ParseSigners([]string{opKey.line, rsaKey.line}, []string{"# recovery", "", recKey.line})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{HostID: "pve1", Signers: signers, Nonces: store, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return New(v, logger)
}

// approve signs op with k through ssh-keygen.
func approve(t *testing.T, k testKey, op Op) *Approval {
	blob := mustCanon(t, op)
	return &Approval{Blob: blob, Signature: keygenSign(t, k, Namespace, blob)}
}

func TestDecideAdversarialMatrix(t *testing.T) {
	testKeys(t)
	tests := []struct {
		name    string
		req     func(t *testing.T) Request
		wantErr error
		code    string
	}{
		{"unsigned destructive", func(t *testing.T) Request {
			return Request{Action: destroyAction()}
		}, ErrPendingSignature, "pending_signature"},
		{"hub-supplied scratch tag on a data-bearing guest", func(t *testing.T) Request {
			a := destroyAction()
			a.Params = map[string]any{"purge": true, "tags": "scratch", "scratch": true}
			return Request{Action: a}
		}, ErrPendingSignature, "pending_signature"},
		{"agent-created guest that was started", func(t *testing.T) Request {
			return Request{Action: destroyAction(), Provenance: Provenance{AgentCreated: true, CreatedAt: now.Add(-time.Minute), InUse: true}}
		}, ErrPendingSignature, "pending_signature"},
		{"agent-created guest past the rollback window", func(t *testing.T) Request {
			return Request{Action: destroyAction(), Provenance: Provenance{AgentCreated: true, CreatedAt: now.Add(-RollbackWindow - time.Second)}}
		}, ErrPendingSignature, "pending_signature"},
		{"config change outside the allow-list", func(t *testing.T) Request {
			return Request{Action: Action{Op: OpGuestConfig, HostID: "pve1", GuestID: "101", Params: map[string]any{"scsi0": "local-lvm:vm-102-disk-0"}}}
		}, ErrPendingSignature, "pending_signature"},
		{"recovery-set change signed by an operational key", func(t *testing.T) Request {
			op := baseOp()
			op.Op, op.Nonce, op.GuestID, op.Params = OpSignersRotate, "m0", "", map[string]any{"recovery": []any{"k"}}
			return Request{Action: Action{Op: OpSignersRotate, HostID: "pve1", Params: op.Params}, RequireRole: RoleRecovery, Approval: approve(t, opKey, op)}
		}, ErrRoleDenied, "role_denied"},
		{"malformed armor", func(t *testing.T) Request {
			return Request{Action: destroyAction(), Approval: &Approval{Blob: mustCanon(t, destroyOp("m1")), Signature: []byte("-----BEGIN SSH SIGNATURE-----\n!!!\n-----END SSH SIGNATURE-----\n")}}
		}, ErrArmor, "armor"},
		{"wrong namespace", func(t *testing.T) Request {
			blob := mustCanon(t, destroyOp("m2"))
			return Request{Action: destroyAction(), Approval: &Approval{Blob: blob, Signature: keygenSign(t, opKey, "felhom-op-v2", blob)}}
		}, ErrNamespace, "namespace"},
		{"RSA key under 2048 bits", func(t *testing.T) Request {
			return Request{Action: destroyAction(), Approval: approve(t, smallRSA, destroyOp("m3"))}
		}, ErrPublicKey, "public_key"},
		{"unknown signer", func(t *testing.T) Request {
			return Request{Action: destroyAction(), Approval: approve(t, strangerKey, destroyOp("m4"))}
		}, ErrUnknownSigner, "unknown_signer"},
		{"key_id naming a pinned key does not help", func(t *testing.T) Request {
			op := destroyOp("m5")
			op.KeyID = ssh.FingerprintSHA256(opKey.pub)
			return Request{Action: destroyAction(), Approval: approve(t, strangerKey, op)}
		}, ErrUnknownSigner, "unknown_signer"},
		{"tampered byte", func(t *testing.T) Request {
			a := approve(t, opKey, destroyOp("m6"))
			a.Blob = bytes.Replace(a.Blob, []byte(`"purge":true`), []byte(`"purge":trUe`), 1)
			a.Blob = bytes.Replace(a.Blob, []byte(`"101"`), []byte(`"102"`), 1)
			return Request{Action: destroyAction(), Approval: a}
		}, ErrSignature, "signature"},
		{"trailing newline added", func(t *testing.T) Request {
			a := approve(t, opKey, destroyOp("m7"))
			a.Blob = append(a.Blob, '\n')
			return Request{Action: destroyAction(), Approval: a}
		}, ErrSignature, "signature"},
		{"legacy ssh-rsa SHA-1 signature", func(t *testing.T) Request {
			blob := mustCanon(t, destroyOp("m8"))
			return Request{Action: destroyAction(), Approval: &Approval{Blob: blob, Signature: signRaw(t, rsaKey.signer, Namespace, "sha512", ssh.KeyAlgoRSA, blob)}}
		}, ErrSignature, "signature"},
		{"signed blob that is not canonical", func(t *testing.T) Request {
			blob := mustCanon(t, destroyOp("m9"))
			blob = bytes.Replace(blob, []byte(`"op":`), []byte(`"op": `), 1)
			return Request{Action: destroyAction(), Approval: &Approval{Blob: blob, Signature: keygenSign(t, opKey, Namespace, blob)}}
		}, ErrBlob, "blob"},
		{"wrong host", func(t *testing.T) Request {
			op := destroyOp("m10")
			op.HostID = "pve2"
			return Request{Action: destroyAction(), Approval: approve(t, opKey, op)}
		}, ErrWrongHost, "wrong_host"},
		{"not yet valid", func(t *testing.T) Request {
			op := destroyOp("m11")
			op.NotBefore, op.ExpiresAt = now.Add(time.Minute), now.Add(time.Hour)
			return Request{Action: destroyAction(), Approval: approve(t, opKey, op)}
		}, ErrNotYetValid, "not_yet_valid"},
		{"expired", func(t *testing.T) Request {
			op := destroyOp("m12")
			op.NotBefore, op.ExpiresAt = now.Add(-time.Hour), now
			return Request{Action: destroyAction(), Approval: approve(t, opKey, op)}
		}, ErrExpired, "expired"},
		{"valid for longer than the host accepts", func(t *testing.T) Request {
			op := destroyOp("m12a")
			op.NotBefore, op.ExpiresAt = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
			return Request{Action: destroyAction(), Approval: approve(t, opKey, op)}
		}, ErrValidityTooLong, "validity_too_long"},
		{"short validity that expires too far ahead", func(t *testing.T) Request {
			op := destroyOp("m12b")
			op.NotBefore, op.ExpiresAt = now.Add(-time.Hour), now.Add(25*time.Hour)
			return Request{Action: destroyAction(), Approval: approve(t, opKey, op)}
		}, ErrValidityTooLong, "validity_too_long"},
		{"recovery key on an ordinary destructive op", func(t *testing.T) Request {
			return Request{Action: destroyAction(), Approval: approve(t, recKey, destroyOp("m13"))}
		}, ErrRoleDenied, "role_denied"},
		{"wrong guest", func(t *testing.T) Request {
			op := destroyOp("m14")
			op.GuestID = "102"
			return Request{Action: destroyAction(), Approval: approve(t, opKey, op)}
		}, ErrBindingMismatch, "binding_mismatch"},
		{"wrong op", func(t *testing.T) Request {
			op := destroyOp("m15")
			op.Op = OpVolumeWipe
			return Request{Action: destroyAction(), Approval: approve(t, opKey, op)}
		}, ErrBindingMismatch, "binding_mismatch"},
		{"wrong params", func(t *testing.T) Request {
			op := destroyOp("m16")
			op.Params = map[string]any{"purge": false}
			return Request{Action: destroyAction(), Approval: approve(t, opKey, op)}
		}, ErrBindingMismatch, "binding_mismatch"},
		{"extra param in the action", func(t *testing.T) Request {
			a := destroyAction()
			a.Params["storage"] = "local-lvm"
			return Request{Action: a, Approval: approve(t, opKey, destroyOp("m17"))}
		}, ErrBindingMismatch, "binding_mismatch"},
	}
	g := newGate(t, NewMemoryNonceStore(), slog.New(slog.DiscardHandler))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := g.Decide(context.Background(), tt.req(t))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Decide error = %v, want %v", err, tt.wantErr)
			}
			if d.Allowed || d.Code != tt.code || Code(err) != tt.code {
				t.Fatalf("decision %+v (Code(err)=%q), want refused with code %q", d, Code(err), tt.code)
			}
			if d.Class != Destructive {
				t.Fatalf("class %q, want destructive", d.Class)
			}
		})
	}
}

func TestDecideAcceptsOnceThenReplayAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nonces.log")
	store, err := OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	g := newGate(t, store, slog.New(slog.DiscardHandler))
	ok := approve(t, opKey, destroyOp("fresh"))

	// Rejections of the very same nonce must not use it up.
	wrongGuest := destroyAction()
	wrongGuest.GuestID = "102"
	if _, err := g.Decide(context.Background(), Request{Action: wrongGuest, Approval: ok}); !errors.Is(err, ErrBindingMismatch) {
		t.Fatalf("wrong guest: %v", err)
	}
	bad := *ok
	bad.Blob = append(append([]byte{}, ok.Blob...), '\n')
	if _, err := g.Decide(context.Background(), Request{Action: destroyAction(), Approval: &bad}); !errors.Is(err, ErrSignature) {
		t.Fatalf("bad signature: %v", err)
	}

	d, err := g.Decide(context.Background(), Request{Action: destroyAction(), Approval: ok})
	if err != nil || !d.Allowed || d.Code != CodeAllowedSigned || d.Op == nil || d.Op.Op.Nonce != "fresh" {
		t.Fatalf("valid op: %+v, %v", d, err)
	}
	if _, err := g.Decide(context.Background(), Request{Action: destroyAction(), Approval: ok}); !errors.Is(err, ErrReplay) {
		t.Fatalf("second presentation: %v, want ErrReplay", err)
	}
	// A re-armored signature (different bytes, same op) is still a replay:
	// replay is keyed on the nonce, not on signature bytes.
	rewrapped := *ok
	rewrapped.Signature = bytes.ReplaceAll(ok.Signature, []byte("\n"), []byte("\r\n"))
	if _, err := g.Decide(context.Background(), Request{Action: destroyAction(), Approval: &rewrapped}); !errors.Is(err, ErrReplay) {
		t.Fatalf("re-armored signature: %v, want ErrReplay", err)
	}

	store.Close()
	store, err = OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	g = newGate(t, store, slog.New(slog.DiscardHandler))
	d, err = g.Decide(context.Background(), Request{Action: destroyAction(), Approval: ok})
	if !errors.Is(err, ErrReplay) || d.Allowed || d.Code != "replay" {
		t.Fatalf("after restart: %+v, %v, want replay", d, err)
	}
}

func TestDecideRoles(t *testing.T) {
	g := newGate(t, NewMemoryNonceStore(), slog.New(slog.DiscardHandler))
	rotate := Action{Op: OpSignersRotate, HostID: "pve1", Params: map[string]any{"operational": []any{"ssh-ed25519 AAAA new"}}}
	rotOp := func(nonce string) Op {
		op := baseOp()
		op.Op, op.GuestID, op.Nonce, op.Params = OpSignersRotate, "", nonce, rotate.Params
		return op
	}
	tests := []struct {
		name string
		key  testKey
		act  Action
		op   Op
		want error
	}{
		{"recovery key rotates signers", recKey, rotate, rotOp("r1"), nil},
		{"operational key plans a rotation", opKey, rotate, rotOp("r2"), nil},
		{"operational key destroys", opKey, destroyAction(), destroyOp("r3"), nil},
		{"RSA operational key destroys", rsaKey, destroyAction(), destroyOp("r4"), nil},
		{"recovery key destroys", recKey, destroyAction(), destroyOp("r5"), ErrRoleDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := g.Decide(context.Background(), Request{Action: tt.act, Approval: approve(t, tt.key, tt.op)})
			if !errors.Is(err, tt.want) || d.Allowed != (tt.want == nil) {
				t.Fatalf("Decide = %+v, %v; want %v", d, err, tt.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	fresh := Provenance{AgentCreated: true, CreatedAt: now.Add(-time.Minute)}
	started := fresh
	started.InUse = true
	old := Provenance{AgentCreated: true, CreatedAt: now.Add(-RollbackWindow - time.Second)}
	future := Provenance{AgentCreated: true, CreatedAt: now.Add(time.Minute)} // a clock step back
	scratch := Provenance{AgentCreated: true, Scratch: true, CreatedAt: now.Add(-48 * time.Hour), InUse: true,
		Volumes: []string{"local-lvm:vm-101-disk-1", "local:backup/vzdump-qemu-101-2026_01_01-00_00_00.vma.zst"}}
	wipe := func(vol string) map[string]any { return map[string]any{"volume": vol} }
	tests := []struct {
		name   string
		op     string
		params map[string]any
		prov   Provenance
		want   Class
	}{
		{"start", OpGuestStart, nil, Provenance{}, Benign},
		{"stop", OpGuestStop, nil, Provenance{}, Benign},
		{"shutdown", OpGuestShutdown, nil, Provenance{}, Benign},
		{"reboot", OpGuestReboot, nil, Provenance{}, Benign},
		{"create", OpGuestCreate, nil, Provenance{}, Benign},
		{"config of allow-listed keys", OpGuestConfig, map[string]any{"memory": 4096, "cores": 2, "name": "web", "tags": "a;b"}, Provenance{}, Benign},
		{"config adding a new disk", OpGuestConfig, map[string]any{"scsi1": "local-lvm:16"}, Provenance{}, Benign},
		{"config adding a mount point", OpGuestConfig, map[string]any{"mp0": "local-lvm:8,mp=/data"}, Provenance{}, Benign},
		{"config attaching another guest's volume", OpGuestConfig, map[string]any{"scsi1": "local-lvm:vm-102-disk-0"}, Provenance{}, Destructive},
		{"config importing a volume", OpGuestConfig, map[string]any{"scsi1": "local-lvm:0,import-from=local-lvm:vm-102-disk-0"}, Provenance{}, Destructive},
		{"config with an unknown key", OpGuestConfig, map[string]any{"hookscript": "local:snippets/x.pl"}, Provenance{}, Destructive},
		{"config deleting keys", OpGuestConfig, map[string]any{"delete": "net0"}, Provenance{}, Destructive},
		{"config freeing an unused disk", OpGuestConfig, map[string]any{"unused0": "local-lvm:8"}, Provenance{}, Destructive},
		{"destroy of a customer guest", OpGuestDestroy, nil, Provenance{}, Destructive},
		{"compensating rollback", OpGuestDestroy, nil, fresh, Benign},
		{"rollback at the window's end", OpGuestDestroy, nil, Provenance{AgentCreated: true, CreatedAt: now.Add(-RollbackWindow)}, Benign},
		{"destroy after the guest was started", OpGuestDestroy, nil, started, Destructive},
		{"destroy past the rollback window", OpGuestDestroy, nil, old, Destructive},
		{"create time ahead of the clock", OpGuestDestroy, nil, future, Destructive},
		{"fresh but not agent-created", OpGuestDestroy, nil, Provenance{CreatedAt: now}, Destructive},
		{"agent-created without a create time", OpGuestDestroy, nil, Provenance{AgentCreated: true}, Destructive},
		{"scratch destroy", OpGuestDestroy, nil, scratch, Benign},
		{"scratch claim without agent creation", OpGuestDestroy, nil, Provenance{Scratch: true}, Destructive},
		{"restore over a fresh create", OpGuestRestore, nil, fresh, Destructive},
		{"restore over scratch", OpGuestRestore, nil, scratch, Benign},
		{"detach on a customer guest", OpDiskDetach, nil, Provenance{}, Destructive},
		{"shrink on scratch", OpDiskShrink, nil, scratch, Benign},
		{"wipe of a customer volume", OpVolumeWipe, wipe("local-lvm:vm-101-disk-1"), Provenance{}, Destructive},
		{"wipe of the scratch instance's own volume", OpVolumeWipe, wipe("local-lvm:vm-101-disk-1"), scratch, Benign},
		{"wipe of an earlier instance's volume", OpVolumeWipe, wipe("local-lvm:vm-101-disk-2"), scratch, Destructive},
		{"wipe of a backup, even a recorded one", OpVolumeWipe, wipe("local:backup/vzdump-qemu-101-2026_01_01-00_00_00.vma.zst"), scratch, Destructive},
		{"rotation", OpSignersRotate, nil, scratch, Destructive},
		{"unknown op fails safe", "guest.migrate", nil, scratch, Destructive},
		{"empty op", "", nil, Provenance{}, Destructive},
	}
	for _, tt := range tests {
		params := tt.params
		if params == nil {
			params = map[string]any{"scratch": true}
		}
		a := Action{Op: tt.op, HostID: "pve1", GuestID: "101", Params: params}
		if got := Classify(a, tt.prov, now); got != tt.want {
			t.Errorf("%s: Classify(%s, %+v) = %s, want %s", tt.name, tt.op, tt.prov, got, tt.want)
		}
	}
}

func TestReadmit(t *testing.T) {
	g := newGate(t, NewMemoryNonceStore(), slog.New(slog.DiscardHandler))
	ctx := context.Background()
	ap := approve(t, opKey, destroyOp("readmit"))
	if d, err := g.Decide(ctx, Request{Action: destroyAction(), Approval: ap}); err != nil || d.Code != CodeAllowedSigned {
		t.Fatalf("first Decide = %+v, %v", d, err)
	}
	if _, err := g.Decide(ctx, Request{Action: destroyAction(), Approval: ap}); !errors.Is(err, ErrReplay) {
		t.Fatalf("second Decide err = %v, want ErrReplay", err)
	}
	if d, err := g.Readmit(ctx, Request{Action: destroyAction(), Approval: ap}); err != nil || !d.Allowed || d.Code != CodeAllowedAdmitted {
		t.Fatalf("Readmit = %+v, %v; want allowed_admitted", d, err)
	}
	expired := destroyOp("readmit-expired")
	expired.NotBefore, expired.ExpiresAt = now.Add(-2*time.Hour), now.Add(-time.Hour)
	if d, err := g.Readmit(ctx, Request{Action: destroyAction(), Approval: approve(t, opKey, expired)}); err != nil || !d.Allowed {
		t.Fatalf("Readmit past the window = %+v, %v; an admitted act outlives its window", d, err)
	}
	other := destroyAction()
	other.GuestID = "102"
	for name, req := range map[string]Request{
		"another guest":  {Action: other, Approval: ap},
		"unknown signer": {Action: destroyAction(), Approval: approve(t, strangerKey, destroyOp("readmit"))},
		"recovery role":  {Action: destroyAction(), Approval: approve(t, recKey, destroyOp("readmit"))},
		"unsigned":       {Action: destroyAction()},
	} {
		if d, err := g.Readmit(ctx, req); err == nil || d.Allowed {
			t.Errorf("Readmit %s = %+v, %v; want refused", name, d, err)
		}
	}
}

func TestDecideBenignAndAudit(t *testing.T) {
	var logs bytes.Buffer
	g := newGate(t, NewMemoryNonceStore(), slog.New(slog.NewJSONHandler(&logs, nil)))
	d, err := g.Decide(context.Background(), Request{Action: Action{Op: OpGuestStart, HostID: "pve1", GuestID: "101"}})
	if err != nil || !d.Allowed || d.Class != Benign || d.Code != CodeAllowedBenign {
		t.Fatalf("benign: %+v, %v", d, err)
	}
	rollback := Request{Action: destroyAction(), Provenance: Provenance{AgentCreated: true, CreatedAt: now.Add(-time.Minute)}}
	if d, err := g.Decide(context.Background(), rollback); err != nil || !d.Allowed || d.Class != Benign {
		t.Fatalf("rollback of own create: %+v, %v", d, err)
	}
	if _, err := g.Decide(context.Background(), Request{Action: destroyAction()}); !errors.Is(err, ErrPendingSignature) {
		t.Fatal(err)
	}
	if _, err := g.Decide(context.Background(), Request{Action: destroyAction(), Approval: approve(t, opKey, destroyOp("audit"))}); err != nil {
		t.Fatal(err)
	}

	var records []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		records = append(records, r)
	}
	if len(records) != 4 {
		t.Fatalf("%d audit records for 4 decisions:\n%s", len(records), logs.String())
	}
	want := []struct {
		level, code string
		allowed     bool
	}{
		{"INFO", "allowed_benign", true},
		{"INFO", "allowed_benign", true},
		{"WARN", "pending_signature", false},
		{"INFO", "allowed_signed", true},
	}
	for i, w := range want {
		r := records[i]
		if r["msg"] != "gate decision" || r["level"] != w.level || r["code"] != w.code || r["allowed"] != w.allowed {
			t.Errorf("record %d = %v, want %+v", i, r, w)
		}
	}
	signed, _ := records[3]["signed"].(map[string]any)
	if signed["signer"] != ssh.FingerprintSHA256(opKey.pub) || signed["role"] != "operational" || signed["nonce"] != "audit" {
		t.Errorf("signed op not in audit record: %v", records[3])
	}
	if records[2]["params"] != `{"purge":true}` || records[2]["error"] == nil {
		t.Errorf("pending record lacks the action or error: %v", records[2])
	}
}

func TestDecideWithoutPinnedKeys(t *testing.T) {
	testKeys(t)
	g := New(nil, slog.New(slog.DiscardHandler))
	_, err := g.Decide(context.Background(), Request{Action: destroyAction(), Approval: approve(t, opKey, destroyOp("x"))})
	if !errors.Is(err, ErrUnknownSigner) {
		t.Fatalf("no verifier: %v, want ErrUnknownSigner", err)
	}
}

// Concurrent presentations of one approval: exactly one runs.
func TestDecideConcurrentPresentations(t *testing.T) {
	store, err := OpenFileNonceStore(filepath.Join(t.TempDir(), "nonces.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	g := newGate(t, store, slog.New(slog.DiscardHandler))
	ok := approve(t, opKey, destroyOp("race"))
	const n = 8
	results := make(chan error, n)
	for range n {
		go func() {
			_, err := g.Decide(context.Background(), Request{Action: destroyAction(), Approval: ok})
			results <- err
		}()
	}
	allowed, replays := 0, 0
	for range n {
		switch err := <-results; {
		case err == nil:
			allowed++
		case errors.Is(err, ErrReplay):
			replays++
		default:
			t.Fatal(err)
		}
	}
	if allowed != 1 || replays != n-1 {
		t.Fatalf("%d allowed, %d replays; want 1 and %d", allowed, replays, n-1)
	}
}

// recordingNonces is a MemoryNonceStore that counts Use calls and can fail.
type recordingNonces struct {
	*MemoryNonceStore
	uses int
	fail error
}

func (r *recordingNonces) Use(ctx context.Context, nonce string, exp time.Time) error {
	r.uses++
	if r.fail != nil {
		return r.fail
	}
	return r.MemoryNonceStore.Use(ctx, nonce, exp)
}

// TestEveryRejectionLeavesTheNonceUnused: the nonce is the last stage, so an
// op refused at any other stage is not used up: the store is never asked,
// and the same nonce still authorises the right act afterwards.
func TestEveryRejectionLeavesTheNonceUnused(t *testing.T) {
	testKeys(t)
	clock := now
	store := &recordingNonces{MemoryNonceStore: NewMemoryNonceStore()}
	signers, err := ParseSigners([]string{opKey.line}, []string{recKey.line})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{HostID: "pve1", Signers: signers, Nonces: store, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	g := New(v, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	at := func(nb, exp time.Duration) func(*Op) {
		return func(o *Op) { o.NotBefore, o.ExpiresAt = now.Add(nb), now.Add(exp) }
	}
	rollback := Provenance{AgentCreated: true, CreatedAt: now.Add(-time.Minute)}
	tests := []struct {
		name   string
		key    *testKey
		edit   func(*Op)
		action func(*Action)
		code   string
	}{
		{"wrong host", &opKey, func(o *Op) { o.HostID = "pve2" }, nil, "wrong_host"},
		{"wrong role", &recKey, nil, nil, "role_denied"},
		{"unknown signer", &strangerKey, nil, nil, "unknown_signer"},
		{"binding mismatch", &opKey, nil, func(a *Action) { a.GuestID = "102" }, "binding_mismatch"},
		{"expired", &opKey, at(-2*time.Hour, -time.Hour), nil, "expired"},
		{"valid too long", &opKey, at(-time.Hour, 48*time.Hour), nil, "validity_too_long"},
		{"not yet valid", &opKey, at(time.Hour, 2*time.Hour), nil, "not_yet_valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock = now
			nonce := "unused-" + strings.ReplaceAll(tt.name, " ", "-")
			op := destroyOp(nonce)
			if tt.edit != nil {
				tt.edit(&op)
			}
			action := destroyAction()
			if tt.action != nil {
				tt.action(&action)
			}
			before := store.uses
			_, err := g.Decide(ctx, Request{Action: action, Approval: approve(t, *tt.key, op)})
			if Code(err) != tt.code {
				t.Fatalf("Decide err = %v (%s), want %s", err, Code(err), tt.code)
			}
			// The same approval with the benign rollback of a fresh create:
			// the act is allowed, the approval refused with the same code.
			d, err := g.Decide(ctx, Request{Action: action, Provenance: rollback, Approval: approve(t, *tt.key, op)})
			if err != nil || !d.Allowed || d.Code != CodeAllowedBenign || d.ApprovalCode != tt.code || Code(d.ApprovalErr) != tt.code {
				t.Fatalf("benign Decide = %+v, %v; want allowed_benign with approval code %s", d, err, tt.code)
			}
			if store.uses != before {
				t.Fatalf("the nonce store was asked %d times for a refused op", store.uses-before)
			}
			// The same nonce still authorises the act it was meant for.
			good := destroyOp(nonce)
			if tt.name == "not yet valid" {
				clock = now.Add(90 * time.Minute) // into the op's window: the very same approval is accepted
				good = op
			}
			if d, err := g.Decide(ctx, Request{Action: destroyAction(), Approval: approve(t, opKey, good)}); err != nil || !d.Allowed {
				t.Fatalf("the nonce was used up by the refusal: %+v, %v", d, err)
			}
		})
	}

	t.Run("failing nonce store", func(t *testing.T) {
		clock = now
		store.fail = errors.New("disk full")
		defer func() { store.fail = nil }()
		d, err := g.Decide(ctx, Request{Action: destroyAction(), Approval: approve(t, opKey, destroyOp("store-fails"))})
		if !errors.Is(err, ErrNonceStore) || d.Allowed || d.Code != "nonce_store" {
			t.Fatalf("Decide with a failing store = %+v, %v; want refused with nonce_store", d, err)
		}
		// The benign act needs no signature: a store that cannot spend the
		// approval does not block it, and the decision says so.
		d, err = g.Decide(ctx, Request{Action: destroyAction(), Provenance: rollback, Approval: approve(t, opKey, destroyOp("store-fails"))})
		if err != nil || !d.Allowed || d.Code != CodeAllowedBenign || d.ApprovalCode != "nonce_store" || !errors.Is(d.ApprovalErr, ErrNonceStore) {
			t.Fatalf("benign Decide with a failing store = %+v, %v; want allowed_benign, approval nonce_store", d, err)
		}
	})
}

// TestDecideBenignSpendsItsApproval: an approval that comes with a benign act
// is verified and spent by it, so it cannot be admitted later for a
// destructive act on another instance at the same VMID (the op names no
// instance).
func TestDecideBenignSpendsItsApproval(t *testing.T) {
	var logs bytes.Buffer
	g := newGate(t, NewMemoryNonceStore(), slog.New(slog.NewJSONHandler(&logs, nil)))
	ctx := context.Background()
	rollback := Provenance{AgentCreated: true, CreatedAt: now.Add(-time.Minute)}
	ap := approve(t, opKey, destroyOp("benign-spent"))

	d, err := g.Decide(ctx, Request{Action: destroyAction(), Provenance: rollback, Approval: ap})
	if err != nil || !d.Allowed || d.Class != Benign || d.Code != CodeAllowedBenign || d.ApprovalCode != CodeApprovalConsumed || d.ApprovalErr != nil || d.Op == nil {
		t.Fatalf("benign rollback with a valid approval = %+v, %v; want allowed_benign, approval consumed", d, err)
	}
	// The next instance at the VMID was started: destroying it is
	// destructive, and the approval is used up.
	d, err = g.Decide(ctx, Request{Action: destroyAction(), Provenance: Provenance{InUse: true}, Approval: ap})
	if !errors.Is(err, ErrReplay) || d.Allowed || d.Code != "replay" {
		t.Fatalf("the spent approval on a started guest = %+v, %v; want refused with replay", d, err)
	}
	// Presented again with the benign act, the act runs and the approval
	// is reported a replay.
	d, err = g.Decide(ctx, Request{Action: destroyAction(), Provenance: rollback, Approval: ap})
	if err != nil || !d.Allowed || d.ApprovalCode != "replay" || !errors.Is(d.ApprovalErr, ErrReplay) {
		t.Fatalf("benign rollback with a spent approval = %+v, %v; want allowed, approval replay", d, err)
	}
	// A benign act without an approval reports none.
	d, err = g.Decide(ctx, Request{Action: destroyAction(), Provenance: rollback})
	if err != nil || !d.Allowed || d.ApprovalCode != "" || d.ApprovalErr != nil || d.Op != nil {
		t.Fatalf("benign rollback without an approval = %+v, %v", d, err)
	}

	var records []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		records = append(records, r)
	}
	want := []struct{ level, code, approval string }{
		{"INFO", "allowed_benign", "approval_consumed"},
		{"WARN", "replay", ""},
		{"WARN", "allowed_benign", "replay"},
		{"INFO", "allowed_benign", ""},
	}
	if len(records) != len(want) {
		t.Fatalf("%d audit records for %d decisions:\n%s", len(records), len(want), logs.String())
	}
	for i, w := range want {
		r := records[i]
		approval, _ := r["approval_code"].(string)
		if r["level"] != w.level || r["code"] != w.code || approval != w.approval {
			t.Errorf("record %d = %v, want %+v", i, r, w)
		}
	}
	if records[2]["approval_error"] == nil {
		t.Errorf("refused approval's reason not in the audit record: %v", records[2])
	}
}

func TestNonceSpent(t *testing.T) {
	ctx := context.Background()
	file, err := OpenFileNonceStore(filepath.Join(t.TempDir(), "nonces"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	for name, store := range map[string]NonceStore{"memory": NewMemoryNonceStore(), "file": file, "no lookup": useOnly{NewMemoryNonceStore()}} {
		t.Run(name, func(t *testing.T) {
			g := newGate(t, store, slog.New(slog.DiscardHandler))
			_, lookup := store.(spentLookup)
			ap := approve(t, opKey, destroyOp("spent-"+strings.ReplaceAll(name, " ", "-")))
			if spent, known := g.NonceSpent(ap); spent || known != lookup {
				t.Fatalf("before Decide: spent %v known %v", spent, known)
			}
			if _, err := g.Decide(ctx, Request{Action: destroyAction(), Approval: ap}); err != nil {
				t.Fatal(err)
			}
			if spent, known := g.NonceSpent(ap); spent != lookup || known != lookup {
				t.Fatalf("after Decide: spent %v known %v", spent, known)
			}
			if spent, known := g.NonceSpent(&Approval{Blob: []byte("not json"), Signature: ap.Signature}); spent || known {
				t.Fatalf("garbage blob: spent %v known %v", spent, known)
			}
		})
	}
	if spent, known := New(nil, nil).NonceSpent(&Approval{}); spent || known {
		t.Fatalf("gate without a verifier: spent %v known %v", spent, known)
	}
}

// useOnly is a NonceStore that cannot tell whether a nonce is spent.
type useOnly struct{ NonceStore }
