// Package sshkeystest runs a real ssh-agent for tests of code that signs
// with an operator's SSH key.
package sshkeystest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/felhom/felhom-agent/internal/testtool"
)

// StartAgent runs a real ssh-agent holding the private key files keys until
// the test ends, and returns its socket, the value for SSH_AUTH_SOCK. Without
// ssh-agent or ssh-add on PATH the test is skipped, or fails under CI
// (testtool.Need).
func StartAgent(t testing.TB, keys ...string) string {
	t.Helper()
	testtool.Need(t, "ssh-agent", "ssh-add")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	stop, err := Run(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	for _, k := range keys {
		add := exec.Command("ssh-add", k)
		add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add %s: %v\n%s", k, err, out)
		}
	}
	return sock
}

// Run starts `ssh-agent -D -a sock` and returns once the agent listens on
// sock, which it says by printing its environment, with a function that
// stops it.
func Run(sock string) (stop func(), err error) {
	cmd := exec.Command("ssh-agent", "-D", "-a", sock)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start ssh-agent: %w", err)
	}
	stop = func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if want := "SSH_AUTH_SOCK=" + sock + ";"; err != nil || !strings.HasPrefix(line, want) {
		stop()
		return nil, fmt.Errorf("ssh-agent did not start listening on %s: printed %q (%v)", sock, line, err)
	}
	return stop, nil
}
