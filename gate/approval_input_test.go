package gate

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// approvalPayload is an approval as the hub or an operator sends it to a
// guest workflow, and as Temporal's JSON converter decodes it there
// (workflows.Approval): the op blob and its armored signature, as strings.
type approvalPayload struct {
	Blob      string `json:"blob"`
	Signature string `json:"signature"`
}

var approvalNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// approvalFixture is a verifier for host pve1 pinning one operational key,
// and an approval of guest.destroy on pve1/140 signed by it.
func approvalFixture(t testing.TB) (*Verifier, approvalPayload) {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{
		HostID:  "pve1",
		Signers: []Signer{{Key: signer.PublicKey(), Role: RoleOperational}},
		Nonces:  NewMemoryNonceStore(),
		Now:     func() time.Time { return approvalNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	blob, err := Canonicalize(Op{
		Op: OpGuestDestroy, HostID: "pve1", GuestID: "140", Params: map[string]any{"kind": "qemu"},
		Nonce: "00112233445566778899aabbccddeeff", NotBefore: approvalNow.Add(-time.Minute), ExpiresAt: approvalNow.Add(10 * time.Minute), KeyID: "ops",
	})
	if err != nil {
		t.Fatal(err)
	}
	sig, err := Sign(signer, blob, "")
	if err != nil {
		t.Fatal(err)
	}
	return v, approvalPayload{Blob: string(blob), Signature: string(sig)}
}

// verifyPayload decodes raw as a workflow does and verifies it: the error
// of the first step that refuses it.
func verifyPayload(v *Verifier, raw []byte) (*VerifiedOp, error) {
	var p approvalPayload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, err
	}
	return v.Verify(context.Background(), []byte(p.Signature), []byte(p.Blob))
}

// Every malformed approval is refused with the code of the stage that
// refuses it, whatever its shape, size or encoding; none burns the nonce of
// the op it tampers with, so the genuine approval is still accepted after.
func TestVerifyRefusesMalformedApprovals(t *testing.T) {
	armorBody := func(sig string) string {
		lines := strings.Split(strings.TrimSpace(sig), "\n")
		return strings.Join(lines[1:len(lines)-1], "")
	}
	garbageInArmor := string(Armor([]byte("SSHSIG\x00\x00\x00\x01garbage that is no envelope")))
	tests := []struct {
		name     string
		payload  func(p approvalPayload) []byte
		wantJSON bool   // refused by the JSON decoding, before the gate
		wantCode string // else the gate's code
	}{
		{"not JSON", func(approvalPayload) []byte { return []byte("blob=x&signature=y") }, true, ""},
		{"wrong shape: a list", func(approvalPayload) []byte { return []byte(`["blob","sig"]`) }, true, ""},
		{"wrong shape: a number for the blob", func(approvalPayload) []byte { return []byte(`{"blob":5,"signature":"x"}`) }, true, ""},
		{"wrong shape: the op itself instead of its bytes", func(p approvalPayload) []byte {
			return []byte(`{"blob":` + p.Blob + `,"signature":` + mustQuote(p.Signature) + `}`)
		}, true, ""},
		{"empty", func(approvalPayload) []byte { return []byte(`{}`) }, false, "armor"},
		{"signature in raw base64 without armor", func(p approvalPayload) []byte {
			return mustJSON(approvalPayload{Blob: p.Blob, Signature: armorBody(p.Signature)})
		}, false, "armor"},
		{"signature base64 of base64", func(p approvalPayload) []byte {
			return mustJSON(approvalPayload{Blob: p.Blob, Signature: string(Armor([]byte(base64.StdEncoding.EncodeToString([]byte(p.Signature)))))})
		}, false, "armor"},
		{"signature in latin-1 bytes", func(p approvalPayload) []byte {
			return mustJSON(approvalPayload{Blob: p.Blob, Signature: strings.ReplaceAll(p.Signature, "A", "\xc4")})
		}, false, "armor"},
		{"giant signature", func(p approvalPayload) []byte {
			return mustJSON(approvalPayload{Blob: p.Blob, Signature: string(Armor(bytes.Repeat([]byte("A"), 1<<20)))})
		}, false, "armor"},
		{"valid armor around garbage", func(p approvalPayload) []byte {
			return mustJSON(approvalPayload{Blob: p.Blob, Signature: garbageInArmor})
		}, false, "armor"},
		{"valid signature over another blob", func(p approvalPayload) []byte {
			return mustJSON(approvalPayload{Blob: strings.Replace(p.Blob, `"140"`, `"141"`, 1), Signature: p.Signature})
		}, false, "signature"},
		{"blob with a trailing newline", func(p approvalPayload) []byte {
			return mustJSON(approvalPayload{Blob: p.Blob + "\n", Signature: p.Signature})
		}, false, "signature"},
		{"giant blob", func(p approvalPayload) []byte {
			return mustJSON(approvalPayload{Blob: p.Blob + strings.Repeat(" ", 1<<20), Signature: p.Signature})
		}, false, "signature"},
		{"blob in UTF-16", func(p approvalPayload) []byte {
			var b strings.Builder
			for _, c := range p.Blob {
				b.WriteRune(c)
				b.WriteByte(0)
			}
			return mustJSON(approvalPayload{Blob: b.String(), Signature: p.Signature})
		}, false, "signature"},
	}
	v, good := approvalFixture(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := verifyPayload(v, tt.payload(good))
			var syntax *json.SyntaxError
			var typ *json.UnmarshalTypeError
			isJSON := errors.As(err, &syntax) || errors.As(err, &typ)
			switch {
			case tt.wantJSON && !isJSON:
				t.Fatalf("err = %v, want the payload refused as JSON", err)
			case tt.wantJSON:
				return
			case Code(err) != tt.wantCode:
				t.Fatalf("err = %v (code %q), want code %q", err, Code(err), tt.wantCode)
			}
			if len(err.Error()) > 1<<10 {
				t.Errorf("the error is %d bytes long: it echoes the input", len(err.Error()))
			}
		})
	}
	if _, err := verifyPayload(v, mustJSON(good)); err != nil {
		t.Fatalf("the genuine approval, after the malformed ones: %v", err)
	}
	if _, err := verifyPayload(v, mustJSON(good)); Code(err) != "replay" {
		t.Fatalf("the genuine approval again: %v, want replay", err)
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func mustQuote(s string) string { return string(mustJSON(s)) }

// FuzzVerifyApproval decodes arbitrary approval payloads as a workflow
// does and runs the verify pipeline over them: never a panic, every
// refusal carries a rejection code, and only the exact signed bytes are
// ever accepted, once.
func FuzzVerifyApproval(f *testing.F) {
	_, good := approvalFixture(f)
	f.Add(mustJSON(good))
	f.Add(mustJSON(approvalPayload{Blob: good.Blob, Signature: string(Armor([]byte("SSHSIG\x00\x00\x00\x01garbage")))}))
	f.Add(mustJSON(approvalPayload{Blob: strings.Replace(good.Blob, "pve1", "pve2", 1), Signature: good.Signature}))
	f.Add([]byte(`{"blob":5,"signature":[]}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		v, good := approvalFixture(t)
		vop, err := verifyPayload(v, raw)
		if err != nil {
			var syntax *json.SyntaxError
			var typ *json.UnmarshalTypeError
			if !errors.As(err, &syntax) && !errors.As(err, &typ) && Code(err) == "internal" {
				t.Fatalf("refusal without a rejection code: %v", err)
			}
			return
		}
		if string(vop.Blob) != good.Blob {
			t.Fatalf("accepted bytes that were not signed: %q", vop.Blob)
		}
		if _, err := verifyPayload(v, raw); Code(err) != "replay" {
			t.Fatalf("accepted twice: %v", err)
		}
	})
}
