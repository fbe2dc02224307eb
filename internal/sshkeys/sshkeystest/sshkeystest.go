// Package sshkeystest runs a real ssh-agent for tests of code that signs
// with an operator's SSH key.
package sshkeystest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// StartAgent runs a real ssh-agent holding the private key files keys until
// the test ends, and returns its socket, the value for SSH_AUTH_SOCK. It
// skips the test when ssh-agent or ssh-add is not installed.
func StartAgent(t testing.TB, keys ...string) string {
	t.Helper()
	for _, tool := range []string{"ssh-agent", "ssh-add"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install openssh-client)", tool)
		}
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cmd := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ssh-agent socket did not appear")
		}
	}
	for _, k := range keys {
		add := exec.Command("ssh-add", k)
		add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add %s: %v\n%s", k, err, out)
		}
	}
	return sock
}
