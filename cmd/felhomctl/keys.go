package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/sshkeys"
	"github.com/felhom/felhom-agent/workflows"
)

const keyDoc = `
The signing key is --key FILE, an OpenSSH private key. An encrypted key, or a
public key file, is used through ssh-agent (SSH_AUTH_SOCK) when the agent
holds its private half; felhomctl never reads passphrases. Without --key,
the key comes from ssh-agent: the one whose SHA256 fingerprint or comment is
--key-id, or the agent's only key.
The op's key_id is --key-id, or the key's SHA256 fingerprint.

The op is valid from one minute ago (for clock skew) until --ttl from now.
A --ttl that makes it valid for longer than --max-validity (default 24h, the
hosts' default signers.max_validity) is refused with exit 2 before anything
is signed or sent: the hosts would refuse the op (validity_too_long).
`

// signFlags are the flags of commands that sign an op.
type signFlags struct {
	key, keyID       string
	ttl, maxValidity time.Duration
}

func addSignFlags(fs *flag.FlagSet) *signFlags {
	s := &signFlags{}
	fs.StringVar(&s.key, "key", "", "OpenSSH private key `FILE`, or public key FILE of a key in ssh-agent (default: ssh-agent)")
	fs.StringVar(&s.keyID, "key-id", "", "key_id written in the op; also picks the ssh-agent key by fingerprint or comment")
	fs.DurationVar(&s.ttl, "ttl", 10*time.Minute, "how long the signature stays valid")
	fs.DurationVar(&s.maxValidity, "max-validity", gate.DefaultMaxValidity,
		fmt.Sprintf("refuse to sign an op valid for longer than this: the hosts' signers.max_validity, at most %s", gate.MaxValidityLimit))
	return s
}

// clockSkew is how far in the past a signed op's not_before lies, so that a
// host whose clock is a little behind still accepts it.
const clockSkew = time.Minute

func (s *signFlags) check() error {
	if s.maxValidity <= 0 || s.maxValidity > gate.MaxValidityLimit {
		return usageErrorf("--max-validity %s: want more than 0 and at most %s", s.maxValidity, gate.MaxValidityLimit)
	}
	if s.ttl <= 0 {
		return usageErrorf("--ttl %s: want more than 0", s.ttl)
	}
	if span := s.ttl + clockSkew; span > s.maxValidity {
		return usageErrorf("--ttl %s: the op would be valid for %s (not_before lies %s back, for clock skew), more than --max-validity %s: the hosts would refuse it (validity_too_long)",
			s.ttl, span, clockSkew, s.maxValidity)
	}
	return nil
}

// loadSigner finds the signing key: a key file, or ssh-agent.
func loadSigner(ctx context.Context, keyFile, keyID string) (*sshkeys.Key, error) {
	key, err := sshkeys.Load(ctx, keyFile, keyID)
	return key, keyHints.Explain(err)
}

var keyHints = sshkeys.Hints{Program: "felhomctl", KeyFlag: "--key", Choose: "--key-id or --key"}

// prepareOp fills in a fresh nonce, the validity window (not_before
// clockSkew before now, expires_at ttl after now) and the key id (keyID,
// or pub's SHA256 fingerprint), refuses a window longer than maxValidity as
// the hosts would (gate.CheckValidity), and canonicalises op with gate's
// canonicaliser. The blob is exactly what is signed.
func prepareOp(op gate.Op, pub ssh.PublicKey, keyID string, ttl, maxValidity time.Duration, now time.Time) (gate.Op, []byte, error) {
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return op, nil, err
	}
	op.Nonce = hex.EncodeToString(nonce[:])
	now = now.UTC().Truncate(time.Second)
	op.NotBefore = now.Add(-clockSkew)
	op.ExpiresAt = now.Add(ttl)
	op.KeyID = keyID
	if op.KeyID == "" {
		op.KeyID = ssh.FingerprintSHA256(pub)
	}
	if err := gate.CheckValidity(op, now, maxValidity); err != nil {
		return op, nil, err
	}
	blob, err := gate.Canonicalize(op)
	if err != nil {
		return op, nil, err
	}
	return op, blob, nil
}

// signBlob signs a canonical blob (SSHSIG, namespace felhom-op-v1).
func signBlob(s ssh.Signer, blob []byte) (workflows.Approval, error) {
	sig, err := gate.Sign(s, blob, "")
	if err != nil {
		return workflows.Approval{}, err
	}
	return workflows.Approval{Blob: string(blob), Signature: string(sig)}, nil
}

// signOp is prepareOp, then signBlob.
func signOp(op gate.Op, s ssh.Signer, keyID string, ttl, maxValidity time.Duration, now time.Time) (workflows.Approval, gate.Op, error) {
	op, blob, err := prepareOp(op, s.PublicKey(), keyID, ttl, maxValidity, now)
	if err != nil {
		return workflows.Approval{}, op, err
	}
	approval, err := signBlob(s, blob)
	return approval, op, err
}
