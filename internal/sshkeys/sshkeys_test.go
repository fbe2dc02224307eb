package sshkeys

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/internal/sshkeys/sshkeystest"
	"github.com/felhom/felhom-agent/internal/testtool"
)

func TestLoad(t *testing.T) {
	testtool.Need(t, "ssh-keygen", "ssh-agent", "ssh-add")
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	plain := keygen(t, path("plain"), "ed25519", "plain@test")
	ops := keygen(t, path("ops"), "ed25519", "ops@test")
	other := keygen(t, path("other"), "ed25519", "other@test")
	rsaKey := keygen(t, path("rsa"), "rsa", "rsa@test")
	oneKeyAgent := sshkeystest.StartAgent(t, path("ops"))
	agent := sshkeystest.StartAgent(t, path("ops"), path("other"), path("rsa"))
	emptyAgent := sshkeystest.StartAgent(t)
	// The agents hold ops unencrypted; on disk it becomes encrypted, as an
	// operator's key is after ssh-add asked for its passphrase.
	run(t, "ssh-keygen", "-q", "-p", "-P", "", "-N", "correct horse", "-f", path("ops"))
	// A PEM key keeps no public key inside, so without its .pub file nothing
	// says which agent key it is.
	run(t, "ssh-keygen", "-q", "-t", "ecdsa", "-m", "PEM", "-N", "correct horse", "-f", path("pem"))
	if err := os.Remove(path("pem.pub")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path("junk"), []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		sock      string
		file      string
		keyID     string
		want      ssh.PublicKey // the loaded key; nil when an error is wanted
		wantIs    error         // errors.Is target
		wantAs    any           // errors.As target
		wantInErr string        // the error message contains this
	}{
		{name: "no file, no agent", wantIs: ErrNoKey, wantInErr: "no key"},
		{name: "plain file, no agent", file: path("plain"), want: plain},
		{name: "plain file wins over the agent", sock: agent, file: path("plain"), want: plain},
		{name: "missing file", file: path("nope"), wantIs: os.ErrNotExist, wantAs: new(*FileError),
			wantInErr: "key file " + path("nope") + " does not exist"},
		{name: "not a key", file: path("junk"), wantAs: new(*FileError),
			wantInErr: "key file " + path("junk") + ": ssh: no key found"},
		{name: "encrypted file, no agent", file: path("ops"), wantIs: ErrNoAgent, wantAs: new(*EncryptedKeyError),
			wantInErr: "key " + path("ops") + " is encrypted and no ssh-agent runs (SSH_AUTH_SOCK is not set)"},
		{name: "public key file, no agent", file: path("ops.pub"), wantIs: ErrNoAgent,
			wantInErr: path("ops.pub") + " is a public key; its private key must be in ssh-agent, but SSH_AUTH_SOCK is not set"},
		{name: "agent's only key", sock: oneKeyAgent, want: ops},
		{name: "agent with several keys and no key id", sock: agent, wantAs: new(*AmbiguousAgentError),
			wantInErr: "ssh-agent holds 3 keys (" + ssh.FingerprintSHA256(ops) + " ops@test; "},
		{name: "agent key by comment", sock: agent, keyID: "other@test", want: other},
		{name: "agent key by fingerprint", sock: agent, keyID: ssh.FingerprintSHA256(ops), want: ops},
		{name: "agent key id matches nothing", sock: agent, keyID: "nobody@test", wantIs: ErrNotInAgent,
			wantInErr: `ssh-agent holds no key with fingerprint or comment "nobody@test"`},
		{name: "encrypted file through the agent", sock: agent, file: path("ops"), want: ops},
		{name: "public key file through the agent", sock: agent, file: path("ops.pub"), want: ops},
		{name: "RSA public key file through the agent", sock: agent, file: path("rsa.pub"), want: rsaKey},
		{name: "public key file not in the agent", sock: agent, file: path("plain.pub"), wantIs: ErrNotInAgent,
			wantInErr: "key " + path("plain.pub") + " (" + ssh.FingerprintSHA256(plain) + ") is not loaded in ssh-agent: run ssh-add " + path("plain")},
		{name: "encrypted file, empty agent", sock: emptyAgent, file: path("ops"), wantIs: ErrNotInAgent,
			wantInErr: "is not loaded in ssh-agent: run ssh-add " + path("ops")},
		{name: "empty agent", sock: emptyAgent, wantIs: ErrAgentEmpty, wantInErr: "ssh-agent holds no keys"},
		{name: "encrypted PEM file without its public key", sock: agent, file: path("pem"),
			wantInErr: "key " + path("pem") + " is encrypted and its public key is unknown (no " + path("pem") + ".pub)"},
		{name: "agent socket gone", sock: path("gone.sock"), wantInErr: "ssh-agent at SSH_AUTH_SOCK=" + path("gone.sock")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(AuthSockEnv, tt.sock)
			key, err := Load(context.Background(), tt.file, tt.keyID)
			if tt.want == nil {
				if err == nil {
					key.Close()
					t.Fatalf("Load(%q, %q) = %s, want an error", tt.file, tt.keyID, ssh.FingerprintSHA256(key.Signer.PublicKey()))
				}
				if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
					t.Errorf("error %q is not %v", err, tt.wantIs)
				}
				if tt.wantAs != nil && !errors.As(err, tt.wantAs) {
					t.Errorf("error %q is not a %T", err, tt.wantAs)
				}
				if !strings.Contains(err.Error(), tt.wantInErr) {
					t.Errorf("error %q does not contain %q", err, tt.wantInErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load(%q, %q): %v", tt.file, tt.keyID, err)
			}
			defer key.Close()
			if got := key.Signer.PublicKey(); ssh.FingerprintSHA256(got) != ssh.FingerprintSHA256(tt.want) {
				t.Fatalf("loaded %s, want %s", ssh.FingerprintSHA256(got), ssh.FingerprintSHA256(tt.want))
			}
			// The key must sign, through the agent too, with what callers
			// need to pick an RSA algorithm.
			msg := []byte("felhom-op-v1 test message")
			sig, err := key.Signer.Sign(rand.Reader, msg)
			if err != nil {
				t.Fatalf("sign: %v", err)
			}
			if err := tt.want.Verify(msg, sig); err != nil {
				t.Fatalf("signature does not verify: %v", err)
			}
			if tt.want.Type() == ssh.KeyAlgoRSA {
				if _, ok := key.Signer.(ssh.AlgorithmSigner); !ok {
					t.Fatalf("RSA signer %T cannot choose rsa-sha2-512", key.Signer)
				}
			}
		})
	}
}

// TestCloseReleasesAgent checks that Close ends the agent connection: a
// signer used after Close fails instead of leaking the connection.
func TestCloseReleasesAgent(t *testing.T) {
	testtool.Need(t, "ssh-keygen", "ssh-agent", "ssh-add")
	dir := t.TempDir()
	keygen(t, filepath.Join(dir, "ops"), "ed25519", "ops@test")
	t.Setenv(AuthSockEnv, sshkeystest.StartAgent(t, filepath.Join(dir, "ops")))
	key, err := Load(context.Background(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := key.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := key.Signer.Sign(rand.Reader, []byte("x")); err == nil {
		t.Fatal("agent signer still signs after Close")
	}
}

// keygen makes an unencrypted key with ssh-keygen and returns its public key.
func keygen(t *testing.T, path, typ, comment string) ssh.PublicKey {
	t.Helper()
	args := []string{"-q", "-t", typ, "-N", "", "-C", comment, "-f", path}
	if typ == "rsa" {
		args = append(args, "-b", "2048")
	}
	run(t, "ssh-keygen", args...)
	data, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func TestHintsExplain(t *testing.T) {
	h := Hints{Program: "felhomctl", KeyFlag: "--key", Choose: "--key-id or --key"}
	notThere := &FileError{Path: "k", Err: os.ErrNotExist}
	tests := []struct {
		name   string
		err    error
		want   string
		wantIs error
		wantAs any
	}{
		{name: "no key", err: ErrNoKey, wantIs: ErrNoKey,
			want: "no key: give --key FILE, or run ssh-agent (SSH_AUTH_SOCK is not set)"},
		{name: "encrypted key without agent", err: &EncryptedKeyError{Path: "id"}, wantIs: ErrNoAgent, wantAs: new(*EncryptedKeyError),
			want: "key id is encrypted and no ssh-agent runs (SSH_AUTH_SOCK is not set): felhomctl does not read passphrases; run ssh-agent and ssh-add id"},
		{name: "empty agent", err: ErrAgentEmpty, wantIs: ErrAgentEmpty,
			want: "ssh-agent holds no keys: ssh-add one, or give --key FILE"},
		{name: "several agent keys", err: &AmbiguousAgentError{Keys: []string{"SHA256:a a@x", "SHA256:b b@x"}}, wantAs: new(*AmbiguousAgentError),
			want: "ssh-agent holds 2 keys (SHA256:a a@x; SHA256:b b@x): choose one with --key-id or --key"},
		{name: "other errors pass through", err: notThere, wantIs: os.ErrNotExist, want: "key file k does not exist"},
		{name: "nil stays nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := h.Explain(tt.err)
			if tt.err == nil {
				if got != nil {
					t.Fatalf("Explain(nil) = %v", got)
				}
				return
			}
			if got == nil || got.Error() != tt.want {
				t.Fatalf("Explain: %v\nwant: %s", got, tt.want)
			}
			if tt.wantIs != nil && !errors.Is(got, tt.wantIs) {
				t.Errorf("%q is not %v", got, tt.wantIs)
			}
			if tt.wantAs != nil && !errors.As(got, tt.wantAs) {
				t.Errorf("%q is not a %T", got, tt.wantAs)
			}
		})
	}
}
