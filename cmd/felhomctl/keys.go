package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/workflows"
)

const keyDoc = `
The signing key is --key FILE, an OpenSSH private key. An encrypted key is
used through ssh-agent (SSH_AUTH_SOCK) when the agent holds it; felhomctl
never reads passphrases. Without --key, the key comes from ssh-agent: the one
whose SHA256 fingerprint or comment is --key-id, or the agent's only key.
The op's key_id is --key-id, or the key's SHA256 fingerprint.
`

// signFlags are the flags of commands that sign an op.
type signFlags struct {
	key, keyID string
	ttl        time.Duration
}

func addSignFlags(fs *flag.FlagSet) *signFlags {
	s := &signFlags{}
	fs.StringVar(&s.key, "key", "", "OpenSSH private key `FILE` (default: ssh-agent)")
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

// signer is a loaded signing key.
type signer struct {
	ssh.Signer
	close func()
}

// loadSigner finds the signing key: a private key file, or ssh-agent.
func loadSigner(keyFile, keyID string) (*signer, error) {
	if keyFile == "" {
		return agentSigner(nil, keyID, "")
	}
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	switch {
	case err == nil:
		return &signer{Signer: s, close: func() {}}, nil
	case errors.As(err, &missing):
		pub := missing.PublicKey
		if pub == nil {
			if pubData, rerr := os.ReadFile(keyFile + ".pub"); rerr == nil {
				pub, _, _, _, _ = ssh.ParseAuthorizedKey(pubData)
			}
		}
		if os.Getenv("SSH_AUTH_SOCK") == "" {
			return nil, fmt.Errorf("key %s is encrypted and no ssh-agent runs (SSH_AUTH_SOCK is not set): felhomctl does not read passphrases; run ssh-agent and ssh-add %s", keyFile, keyFile)
		}
		if pub == nil {
			return nil, fmt.Errorf("key %s is encrypted and its public key is unknown (no %s.pub)", keyFile, keyFile)
		}
		return agentSigner(pub, "", keyFile)
	default:
		return nil, fmt.Errorf("key file %s: %w", keyFile, err)
	}
}

// agentSigner returns the agent's signer for want, else the one matching
// keyID, else its only key.
func agentSigner(want ssh.PublicKey, keyID, keyFile string) (*signer, error) {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil, errors.New("no key: give --key FILE, or run ssh-agent (SSH_AUTH_SOCK is not set)")
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("ssh-agent at SSH_AUTH_SOCK=%s: %w", sock, err)
	}
	ag := agent.NewClient(conn)
	keys, err := ag.List()
	if err == nil && len(keys) == 0 {
		err = errors.New("it holds no keys: ssh-add one, or give --key FILE")
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh-agent: %w", err)
	}
	var pick *agent.Key
	var names []string
	for _, k := range keys {
		fp := ssh.FingerprintSHA256(k)
		names = append(names, fp+" "+k.Comment)
		switch {
		case want != nil:
			if bytes.Equal(k.Marshal(), want.Marshal()) {
				pick = k
			}
		case keyID != "":
			if fp == keyID || k.Comment == keyID {
				pick = k
			}
		case len(keys) == 1:
			pick = k
		}
	}
	if pick == nil {
		conn.Close()
		switch {
		case want != nil:
			return nil, fmt.Errorf("key %s (%s) is not loaded in ssh-agent: run ssh-add %s", keyFile, ssh.FingerprintSHA256(want), keyFile)
		case keyID != "":
			return nil, fmt.Errorf("ssh-agent holds no key with fingerprint or comment %q (it holds: %s)", keyID, strings.Join(names, "; "))
		}
		return nil, fmt.Errorf("ssh-agent holds %d keys (%s): choose one with --key-id or --key", len(keys), strings.Join(names, "; "))
	}
	signers, err := ag.Signers()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh-agent: %w", err)
	}
	for _, s := range signers {
		if bytes.Equal(s.PublicKey().Marshal(), pick.Marshal()) {
			return &signer{Signer: s, close: func() { conn.Close() }}, nil
		}
	}
	conn.Close()
	return nil, errors.New("ssh-agent: the chosen key vanished")
}

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
