package gate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestEnvelopeRejections(t *testing.T) {
	k := genKey(t, "ed25519", 0)
	blob := mustCanon(t, baseOp())
	good, err := ParseArmor(keygenSign(t, k, Namespace, blob))
	if err != nil {
		t.Fatal(err)
	}
	raw := good.Marshal()
	withVersion := func(v uint32) []byte {
		b := append([]byte{}, raw...)
		binary.BigEndian.PutUint32(b[6:], v)
		return b
	}
	with := func(edit func(*Signature)) []byte {
		s := *good
		edit(&s)
		return s.Marshal()
	}
	tests := []struct {
		name string
		raw  []byte
		want error
	}{
		{"version 2", withVersion(2), ErrArmor},
		{"trailing bytes", append(append([]byte{}, raw...), 0), ErrArmor},
		{"truncated", raw[:len(raw)-1], ErrArmor},
		{"bad magic", append([]byte("SSHSIH"), raw[6:]...), ErrArmor},
		{"sha1 message hash", with(func(s *Signature) { s.HashAlgorithm = "sha1" }), ErrArmor},
		{"garbage public key", with(func(s *Signature) { s.PublicKey = []byte{0, 0, 0, 1, 'x'} }), ErrPublicKey},
		{"inner signature of another type", with(func(s *Signature) {
			var sig ssh.Signature
			ssh.Unmarshal(s.Sig, &sig)
			sig.Format = ssh.KeyAlgoECDSA256
			s.Sig = ssh.Marshal(sig)
		}), ErrSignature},
		{"bytes after inner signature", with(func(s *Signature) {
			var sig ssh.Signature
			ssh.Unmarshal(s.Sig, &sig)
			sig.Rest = []byte{1, 0, 0, 0, 1}
			s.Sig = ssh.Marshal(sig)
		}), ErrSignature},
		{"hash switched to sha256", with(func(s *Signature) { s.HashAlgorithm = "sha256" }), ErrSignature},
		// OpenSSH signs over an empty reserved field whatever the envelope
		// carries, so a filled one still verifies.
		{"reserved field filled", with(func(s *Signature) { s.Reserved = []byte("x") }), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVerifier(t, NewMemoryNonceStore(), Signer{Key: k.pub, Role: RoleOperational})
			_, err := v.Verify(context.Background(), Armor(tt.raw), blob)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestArmor(t *testing.T) {
	k := genKey(t, "ed25519", 0)
	blob := mustCanon(t, baseOp())
	fromKeygen := keygenSign(t, k, Namespace, blob)
	env, err := ParseArmor(fromKeygen)
	if err != nil {
		t.Fatal(err)
	}
	// Our armor is byte-identical to ssh-keygen's.
	if got := Armor(env.Marshal()); !bytes.Equal(got, fromKeygen) {
		t.Fatalf("Armor differs from ssh-keygen:\n%s\n%s", got, fromKeygen)
	}
	s := string(fromKeygen)
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"as written", s, true},
		{"CRLF", strings.ReplaceAll(s, "\n", "\r\n"), true},
		{"surrounding blank lines", "\n\n" + s + "\n\n", true},
		{"no trailing newline", strings.TrimSuffix(s, "\n"), true},
		{"missing BEGIN", s[strings.Index(s, "\n")+1:], false},
		{"missing END", s[:strings.LastIndex(s, "-----END")], false},
		{"text after END", s + "x", false},
		{"text before BEGIN", "x" + s, false},
		{"other armor", strings.ReplaceAll(s, "SSH SIGNATURE", "PGP SIGNATURE"), false},
		{"bad base64", strings.Replace(s, "\n", "\n*", 2), false},
		{"body dropped", "-----BEGIN SSH SIGNATURE-----\n-----END SSH SIGNATURE-----\n", false},
		{"begin line not ended", strings.Replace(s, "-----\n", "----- ", 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseArmor([]byte(tt.in))
			if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrArmor)) {
				t.Fatalf("ParseArmor = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
