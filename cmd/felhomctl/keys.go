package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
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
`

// signFlags are the flags of commands that sign an op.
type signFlags struct {
	key, keyID string
	ttl        time.Duration
}

func addSignFlags(fs *flag.FlagSet) *signFlags {
	s := &signFlags{}
	fs.StringVar(&s.key, "key", "", "OpenSSH private key `FILE`, or public key FILE of a key in ssh-agent (default: ssh-agent)")
	fs.StringVar(&s.keyID, "key-id", "", "key_id written in the op; also picks the ssh-agent key by fingerprint or comment")
	fs.DurationVar(&s.ttl, "ttl", 10*time.Minute, "how long the signature stays valid")
	return s
}

func (s *signFlags) check() error {
	if s.ttl <= 0 || s.ttl > 24*time.Hour {
		return usageErrorf("--ttl %s: want more than 0 and at most 24h", s.ttl)
	}
	return nil
}

// loadSigner finds the signing key: a key file, or ssh-agent.
func loadSigner(ctx context.Context, keyFile, keyID string) (*sshkeys.Key, error) {
	key, err := sshkeys.Load(ctx, keyFile, keyID)
	return key, keyHints.Explain(err)
}

var keyHints = sshkeys.Hints{Program: "felhomctl", KeyFlag: "--key", Choose: "--key-id or --key"}

// signOp fills in a fresh nonce and the validity window, canonicalises op
// with gate's canonicaliser and signs it. not_before lies a minute in the
// past, so a host whose clock is a little behind still accepts it.
func signOp(op gate.Op, s ssh.Signer, keyID string, ttl time.Duration, now time.Time) (workflows.Approval, gate.Op, error) {
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return workflows.Approval{}, op, err
	}
	op.Nonce = hex.EncodeToString(nonce[:])
	now = now.UTC().Truncate(time.Second)
	op.NotBefore = now.Add(-time.Minute)
	op.ExpiresAt = now.Add(ttl)
	op.KeyID = keyID
	if op.KeyID == "" {
		op.KeyID = ssh.FingerprintSHA256(s.PublicKey())
	}
	blob, err := gate.Canonicalize(op)
	if err != nil {
		return workflows.Approval{}, op, err
	}
	sig, err := gate.Sign(s, blob, "")
	if err != nil {
		return workflows.Approval{}, op, err
	}
	return workflows.Approval{Blob: string(blob), Signature: string(sig)}, op, nil
}
