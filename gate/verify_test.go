package gate

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

var now = t0.Add(30 * time.Minute) // inside baseOp's window

func newVerifier(t testing.TB, store NonceStore, signers ...Signer) *Verifier {
	t.Helper()
	v, err := NewVerifier(VerifierConfig{HostID: "pve1", Signers: signers, Nonces: store, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var keyTypes4Interop = []struct {
	typ     string
	bits    int
	wantAlg string
}{
	{"ed25519", 0, ssh.KeyAlgoED25519},
	{"rsa", 3072, ssh.KeyAlgoRSASHA512}, // ssh-keygen signs RSA with rsa-sha2-512
	{"ecdsa", 256, ssh.KeyAlgoECDSA256},
	{"ecdsa", 384, ssh.KeyAlgoECDSA384},
	{"ecdsa", 521, ssh.KeyAlgoECDSA521},
}

// ssh-keygen -Y sign → Verifier.Verify.
func TestVerifySSHKeygenSignatures(t *testing.T) {
	for _, kt := range keyTypes4Interop {
		t.Run(kt.typ+itoa(kt.bits), func(t *testing.T) {
			t.Parallel()
			k := genKey(t, kt.typ, kt.bits)
			op := baseOp()
			op.Nonce = "interop-" + kt.typ
			op.Params = map[string]any{"purge": true, "disks": []any{"scsi0", "scsi1"}}
			blob := mustCanon(t, op)
			sig := keygenSign(t, k, Namespace, blob)
			v := newVerifier(t, NewMemoryNonceStore(), Signer{Key: k.pub, Role: RoleOperational})
			got, err := v.Verify(context.Background(), sig, blob)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got.SigAlgorithm != kt.wantAlg || got.HashAlgorithm != "sha512" {
				t.Fatalf("algorithms %s/%s, want %s/sha512", got.SigAlgorithm, got.HashAlgorithm, kt.wantAlg)
			}
			if got.Op.Nonce != op.Nonce || got.Op.Params["purge"] != true || got.Signer.Role != RoleOperational {
				t.Fatalf("verified op %+v does not carry the signed op", got)
			}
			// The same signature in another namespace is refused.
			other := keygenSign(t, k, "file", blob)
			if _, err := v.Verify(context.Background(), other, blob); !errors.Is(err, ErrNamespace) {
				t.Fatalf("namespace file: %v, want ErrNamespace", err)
			}
		})
	}
}

// gate.Sign → ssh-keygen -Y verify, and back through Verify.
func TestSignPassesSSHKeygenVerify(t *testing.T) {
	cases := []struct {
		typ     string
		bits    int
		rsaAlg  string
		wantAlg string
	}{
		{"ed25519", 0, "", ssh.KeyAlgoED25519},
		{"rsa", 2048, "", ssh.KeyAlgoRSASHA512},
		{"rsa", 2048, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSASHA256},
		{"ecdsa", 256, "", ssh.KeyAlgoECDSA256},
		{"ecdsa", 384, "", ssh.KeyAlgoECDSA384},
		{"ecdsa", 521, "", ssh.KeyAlgoECDSA521},
	}
	for _, c := range cases {
		t.Run(c.typ+itoa(c.bits)+c.rsaAlg, func(t *testing.T) {
			t.Parallel()
			k := genKey(t, c.typ, c.bits)
			blob := mustCanon(t, baseOp())
			sig, err := Sign(k.signer, blob, c.rsaAlg)
			if err != nil {
				t.Fatal(err)
			}
			if out, err := keygenVerify(t, k.line, sig, blob); err != nil {
				t.Fatalf("ssh-keygen -Y verify refused our signature: %v\n%s", err, out)
			}
			tampered := append([]byte{}, blob...)
			tampered[10] ^= 1
			if out, err := keygenVerify(t, k.line, sig, tampered); err == nil {
				t.Fatalf("ssh-keygen -Y verify accepted a tampered blob:\n%s", out)
			}
			v := newVerifier(t, NewMemoryNonceStore(), Signer{Key: k.pub, Role: RoleOperational})
			got, err := v.Verify(context.Background(), sig, blob)
			if err != nil {
				t.Fatal(err)
			}
			if got.SigAlgorithm != c.wantAlg {
				t.Fatalf("signature algorithm %s, want %s", got.SigAlgorithm, c.wantAlg)
			}
		})
	}
}

// A sha256 message hash is legal SSHSIG; ssh-keygen only makes sha512.
func TestVerifySHA256MessageHash(t *testing.T) {
	k := genKey(t, "ed25519", 0)
	blob := mustCanon(t, baseOp())
	sig := signRaw(t, k.signer, Namespace, "sha256", "", blob)
	if out, err := keygenVerify(t, k.line, sig, blob); err != nil {
		t.Fatalf("ssh-keygen refused a sha256 SSHSIG: %v\n%s", err, out)
	}
	v := newVerifier(t, NewMemoryNonceStore(), Signer{Key: k.pub, Role: RoleOperational})
	if got, err := v.Verify(context.Background(), sig, blob); err != nil || got.HashAlgorithm != "sha256" {
		t.Fatalf("Verify = %+v, %v", got, err)
	}
}

// skKey is a software stand-in for a FIDO2 authenticator holding an
// sk-ssh-ed25519@openssh.com key.
type skKey struct {
	priv ed25519.PrivateKey
	pub  ssh.PublicKey
	app  string
}

func newSKKey(t testing.TB) skKey {
	pubRaw, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const app = "ssh:"
	wire := ssh.Marshal(struct {
		Type, Key, App string
	}{ssh.KeyAlgoSKED25519, string(pubRaw), app})
	pub, err := ssh.ParsePublicKey(wire)
	if err != nil {
		t.Fatal(err)
	}
	return skKey{priv: priv, pub: pub, app: app}
}

// sign makes an SSHSIG the way an authenticator does: the key signs
// sha256(application) | flags | counter | sha256(signed data), and the SSH
// signature carries flags and counter after the signature bytes.
func (k skKey) sign(t testing.TB, blob []byte, flags byte, counter uint32) []byte {
	data, err := SignedData(Namespace, "sha512", blob)
	if err != nil {
		t.Fatal(err)
	}
	app := sha256.Sum256([]byte(k.app))
	msg := sha256.Sum256(data)
	var signed []byte
	signed = append(signed, app[:]...)
	signed = append(signed, flags)
	signed = binary.BigEndian.AppendUint32(signed, counter)
	signed = append(signed, msg[:]...)
	rest := binary.BigEndian.AppendUint32([]byte{flags}, counter)
	sig := ssh.Signature{Format: ssh.KeyAlgoSKED25519, Blob: ed25519.Sign(k.priv, signed), Rest: rest}
	env := Signature{PublicKey: k.pub.Marshal(), Namespace: Namespace, HashAlgorithm: "sha512", Sig: ssh.Marshal(sig)}
	return Armor(env.Marshal())
}

func TestVerifySecurityKeySignature(t *testing.T) {
	k := newSKKey(t)
	line := string(ssh.MarshalAuthorizedKey(k.pub))
	blob := mustCanon(t, baseOp())
	v := newVerifier(t, NewMemoryNonceStore(), Signer{Key: k.pub, Role: RoleOperational})

	touched := k.sign(t, blob, 0x01, 7)
	if out, err := keygenVerify(t, line, touched, blob); err != nil {
		t.Fatalf("ssh-keygen refused the synthesized sk signature: %v\n%s", err, out)
	}
	// No user presence: ssh-keygen -Y verify accepts it, the gate must not.
	untouched := k.sign(t, blob, 0x00, 8)
	if out, err := keygenVerify(t, line, untouched, blob); err != nil {
		t.Logf("ssh-keygen also refused the no-touch signature: %v\n%s", err, out)
	}
	if _, err := v.Verify(context.Background(), untouched, blob); !errors.Is(err, ErrSignature) {
		t.Fatalf("signature without user presence: %v, want ErrSignature", err)
	}
	got, err := v.Verify(context.Background(), touched, blob)
	if err != nil {
		t.Fatalf("touched sk signature: %v (the refused one must not have burnt the nonce)", err)
	}
	if got.SigAlgorithm != ssh.KeyAlgoSKED25519 {
		t.Fatalf("algorithm %s", got.SigAlgorithm)
	}
	// Flags and counter are signed: flipping UP on in the envelope breaks it.
	forged := k.sign(t, blob, 0x00, 9)
	env, _ := ParseArmor(forged)
	var sig ssh.Signature
	ssh.Unmarshal(env.Sig, &sig)
	sig.Rest[0] = 0x01
	env.Sig = ssh.Marshal(sig)
	if _, err := v.Verify(context.Background(), Armor(env.Marshal()), blob); !errors.Is(err, ErrSignature) {
		t.Fatalf("UP flag set after signing: %v, want ErrSignature", err)
	}
}

func TestVerifyFileStoreReplayAcrossRestart(t *testing.T) {
	k := genKey(t, "ed25519", 0)
	blob := mustCanon(t, baseOp())
	sig := keygenSign(t, k, Namespace, blob)
	path := filepath.Join(t.TempDir(), "nonces.log")
	store, err := OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	v := newVerifier(t, store, Signer{Key: k.pub, Role: RoleOperational})
	if _, err := v.Verify(context.Background(), sig, blob); err != nil {
		t.Fatal(err)
	}
	store.Close()
	store, err = OpenFileNonceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	v = newVerifier(t, store, Signer{Key: k.pub, Role: RoleOperational})
	if _, err := v.Verify(context.Background(), sig, blob); !errors.Is(err, ErrReplay) || Code(err) != "replay" {
		t.Fatalf("after restart: %v, want ErrReplay", err)
	}
}

func TestCheckValidity(t *testing.T) {
	at := func(h int) time.Time { return now.Add(time.Duration(h) * time.Hour) }
	tests := []struct {
		name    string
		nb, exp time.Time
		max     time.Duration
		tooLong bool
	}{
		{"one hour", at(-1), at(0), DefaultMaxValidity, false},
		{"exactly the cap", at(-12), at(12), DefaultMaxValidity, false},
		{"expires exactly the cap ahead", at(0), at(24), DefaultMaxValidity, false},
		{"a second over the cap", at(-12), at(12).Add(time.Second), DefaultMaxValidity, true},
		{"starts later, ends too far ahead", at(20), at(25), DefaultMaxValidity, true},
		{"a week with a week's cap", at(-1), at(7*24 - 1), MaxValidityLimit, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckValidity(Op{NotBefore: tt.nb, ExpiresAt: tt.exp}, now, tt.max)
			if got := errors.Is(err, ErrValidityTooLong); got != tt.tooLong {
				t.Fatalf("CheckValidity = %v, want too long %v", err, tt.tooLong)
			}
		})
	}
}

func TestVerifierRefusesAMaxValidityOutsideTheLimit(t *testing.T) {
	for _, d := range []time.Duration{-time.Hour, MaxValidityLimit + time.Second} {
		if _, err := NewVerifier(VerifierConfig{HostID: "pve1", Nonces: NewMemoryNonceStore(), MaxValidity: d}); err == nil {
			t.Errorf("MaxValidity %s accepted", d)
		}
	}
}
