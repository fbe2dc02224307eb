// Package sshkeys loads an operator's SSH signing key from a file or from
// ssh-agent.
//
// A key file may be an unencrypted OpenSSH private key, an encrypted one
// whose private half ssh-agent holds, or a public key file of a key in
// ssh-agent. Passphrases are never read: an encrypted key is only usable
// through the agent. The agent is the one SSH_AUTH_SOCK names.
package sshkeys

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// AuthSockEnv names the environment variable that locates ssh-agent.
const AuthSockEnv = "SSH_AUTH_SOCK"

var (
	// ErrNoKey: no key file was given and no ssh-agent runs.
	ErrNoKey = errors.New("no key: no key file given and no ssh-agent runs (SSH_AUTH_SOCK is not set)")
	// ErrNoAgent: the key is only usable through ssh-agent, and none runs.
	ErrNoAgent = errors.New("no ssh-agent runs (SSH_AUTH_SOCK is not set)")
	// ErrAgentEmpty: ssh-agent runs but holds no keys.
	ErrAgentEmpty = errors.New("ssh-agent holds no keys")
	// ErrNotInAgent: ssh-agent does not hold the wanted key.
	ErrNotInAgent = errors.New("key is not in ssh-agent")
)

// FileError is a key file that cannot be read or parsed.
type FileError struct {
	Path string
	Err  error
}

func (e *FileError) Error() string {
	if errors.Is(e.Err, os.ErrNotExist) {
		return fmt.Sprintf("key file %s does not exist", e.Path)
	}
	return fmt.Sprintf("key file %s: %v", e.Path, e.Err)
}

func (e *FileError) Unwrap() error { return e.Err }

// EncryptedKeyError is an encrypted private key while no ssh-agent runs.
// Callers add how to load it, since only they know whether they read
// passphrases.
type EncryptedKeyError struct {
	Path string
}

func (e *EncryptedKeyError) Error() string {
	return fmt.Sprintf("key %s is encrypted and no ssh-agent runs (SSH_AUTH_SOCK is not set)", e.Path)
}

func (e *EncryptedKeyError) Unwrap() error { return ErrNoAgent }

// AmbiguousAgentError is an ssh-agent holding several keys when nothing
// picks one of them. Callers add which flag picks one.
type AmbiguousAgentError struct {
	// Keys lists each held key as "SHA256:... comment".
	Keys []string
}

func (e *AmbiguousAgentError) Error() string {
	return fmt.Sprintf("ssh-agent holds %d keys (%s)", len(e.Keys), strings.Join(e.Keys, "; "))
}

// Key is a loaded signing key. Close it when done: a key in ssh-agent
// signs over an open connection to the agent.
type Key struct {
	// Signer is the key itself, not wrapped: callers type-assert it to
	// ssh.AlgorithmSigner to choose an RSA signature algorithm.
	Signer ssh.Signer
	conn   net.Conn
}

// Close releases the connection to ssh-agent, if any.
func (k *Key) Close() error {
	if k.conn == nil {
		return nil
	}
	return k.conn.Close()
}

// Load finds the signing key. With a file, it is the key in that file, or
// the agent's copy of it when the file is an encrypted private key or a
// public key. Without a file, it is the agent's key whose SHA256
// fingerprint or comment is keyID, or the agent's only key when keyID is
// empty.
func Load(ctx context.Context, file, keyID string) (*Key, error) {
	if file == "" {
		if os.Getenv(AuthSockEnv) == "" {
			return nil, ErrNoKey
		}
		return fromAgent(ctx, nil, keyID, "")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, &FileError{Path: file, Err: err}
	}
	if pub, _, _, _, perr := ssh.ParseAuthorizedKey(data); perr == nil {
		if os.Getenv(AuthSockEnv) == "" {
			return nil, explained(ErrNoAgent, "%s is a public key; its private key must be in ssh-agent, but SSH_AUTH_SOCK is not set", file)
		}
		return fromAgent(ctx, pub, "", file)
	}
	signer, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	switch {
	case err == nil:
		return &Key{Signer: signer}, nil
	case errors.As(err, &missing):
		if os.Getenv(AuthSockEnv) == "" {
			return nil, &EncryptedKeyError{Path: file}
		}
		// Older key formats keep the public key only beside the file.
		pub := missing.PublicKey
		if pub == nil {
			if pubData, rerr := os.ReadFile(file + ".pub"); rerr == nil {
				pub, _, _, _, _ = ssh.ParseAuthorizedKey(pubData)
			}
		}
		if pub == nil {
			return nil, fmt.Errorf("key %s is encrypted and its public key is unknown (no %s.pub): use the public key file of a key in ssh-agent instead", file, file)
		}
		return fromAgent(ctx, pub, "", file)
	default:
		return nil, &FileError{Path: file, Err: err}
	}
}

// fromAgent returns the agent's signer for want, else the one matching
// keyID, else its only key. file names want in errors.
func fromAgent(ctx context.Context, want ssh.PublicKey, keyID, file string) (*Key, error) {
	sock := os.Getenv(AuthSockEnv)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("ssh-agent at SSH_AUTH_SOCK=%s: %w", sock, err)
	}
	key, err := pick(agent.NewClient(conn), want, keyID, file)
	if err != nil {
		conn.Close()
		return nil, err
	}
	key.conn = conn
	return key, nil
}

func pick(ag agent.ExtendedAgent, want ssh.PublicKey, keyID, file string) (*Key, error) {
	keys, err := ag.List()
	if err != nil {
		return nil, fmt.Errorf("ssh-agent: %w", err)
	}
	var chosen *agent.Key
	var held []string
	for _, k := range keys {
		fp := ssh.FingerprintSHA256(k)
		held = append(held, fp+" "+k.Comment)
		switch {
		case want != nil:
			if bytes.Equal(k.Marshal(), want.Marshal()) {
				chosen = k
			}
		case keyID != "":
			if fp == keyID || k.Comment == keyID {
				chosen = k
			}
		case len(keys) == 1:
			chosen = k
		}
	}
	if chosen == nil {
		switch {
		case want != nil:
			return nil, explained(ErrNotInAgent, "key %s (%s) is not loaded in ssh-agent: run ssh-add %s",
				file, ssh.FingerprintSHA256(want), strings.TrimSuffix(file, ".pub"))
		case len(keys) == 0:
			return nil, ErrAgentEmpty
		case keyID != "":
			return nil, explained(ErrNotInAgent, "ssh-agent holds no key with fingerprint or comment %q (it holds: %s)",
				keyID, strings.Join(held, "; "))
		}
		return nil, &AmbiguousAgentError{Keys: held}
	}
	signers, err := ag.Signers()
	if err != nil {
		return nil, fmt.Errorf("ssh-agent: %w", err)
	}
	for _, s := range signers {
		if bytes.Equal(s.PublicKey().Marshal(), chosen.Marshal()) {
			return &Key{Signer: s}, nil
		}
	}
	// The agent dropped the key between listing and signing.
	return nil, explained(ErrNotInAgent, "ssh-agent: key %s vanished before it could sign", ssh.FingerprintSHA256(chosen))
}

// explanation is a full message for a sentinel error: errors.Is finds the
// sentinel without its text repeating in the message.
type explanation struct {
	msg  string
	kind error
}

func explained(kind error, format string, args ...any) error {
	return &explanation{msg: fmt.Sprintf(format, args...), kind: kind}
}

func (e *explanation) Error() string { return e.msg }
func (e *explanation) Unwrap() error { return e.kind }

// Hints are a command's words for how an operator fixes a key error: the
// program name and flags differ from command to command, the fixes do not.
type Hints struct {
	// Program names the command, which reads no passphrases.
	Program string
	// KeyFlag is the flag that takes a key file, e.g. "--key".
	KeyFlag string
	// Choose says how to pick one of several agent keys, e.g. "--key-id or --key".
	Choose string
}

// Explain adds h's fix to the errors Load returns that an operator fixes
// with a flag or ssh-add; other errors, and nil, come back as they are. The
// result still matches the same errors.Is and errors.As targets.
func (h Hints) Explain(err error) error {
	var encrypted *EncryptedKeyError
	var ambiguous *AmbiguousAgentError
	switch {
	case errors.Is(err, ErrNoKey):
		return explained(ErrNoKey, "no key: give %s FILE, or run ssh-agent (SSH_AUTH_SOCK is not set)", h.KeyFlag)
	case errors.As(err, &encrypted):
		return fmt.Errorf("%w: %s does not read passphrases; run ssh-agent and ssh-add %s", err, h.Program, encrypted.Path)
	case errors.Is(err, ErrAgentEmpty):
		return fmt.Errorf("%w: ssh-add one, or give %s FILE", err, h.KeyFlag)
	case errors.As(err, &ambiguous):
		return fmt.Errorf("%w: choose one with %s", err, h.Choose)
	}
	return err
}
