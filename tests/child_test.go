package tests

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/killpoint"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
)

// The crash tests run the agent's parts as separate processes, so that they
// can kill them with SIGKILL: the worker is the real felhom-agent binary
// (`felhom-agent run`, built once per test binary with the killpoints tag),
// a Temporal server node is this test binary started with childServerEnv.
// childProcess is the one piece of code that starts, watches and kills them.

// childProcess is a program the test runs in its own process. Its stdout
// and stderr go to a log file, shown when the test fails.
type childProcess struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once the process has exited
	waitErr error         // cmd.Wait's result, set before exited is closed
}

// startProcess starts cmd and waits, at most within, until a line of its
// output satisfies ready; it returns that line. The process is killed when
// the test ends.
func startProcess(t *testing.T, name string, cmd *exec.Cmd, ready func(line string) bool, within time.Duration) (*childProcess, string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pw.Close()
	p := &childProcess{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	readyLine := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		defer logFile.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			if !found && ready(line) {
				found = true
				readyLine <- line
			}
		}
	}()
	go func() {
		p.waitErr = cmd.Wait()
		<-copied // the log is complete once the process is gone and its output read
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s:\n%s", name, tail(p.output(), 4000))
		}
	})
	select {
	case line := <-readyLine:
		return p, line
	case <-p.exited:
		t.Fatalf("%s exited before it was ready: %v\n%s", name, p.waitErr, tail(p.output(), 4000))
	case <-time.After(within):
		t.Fatalf("%s not ready within %s", name, within)
	}
	return nil, ""
}

// output is everything the process wrote so far.
func (p *childProcess) output() string {
	out, _ := os.ReadFile(p.logPath)
	return string(out)
}

// kill ends the process the hard way, as a power cut would: no handler
// runs, nothing is flushed. It returns once the process is gone.
func (p *childProcess) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// signal sends sig to the process.
func (p *childProcess) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", p.name, err)
	}
}

// wait waits for the process to exit and returns its exit error.
func (p *childProcess) wait() error {
	<-p.exited
	return p.waitErr
}

// waitKilled waits, at most within, for the process to die of SIGKILL and
// fails the test if it ends any other way or lives on.
func (p *childProcess) waitKilled(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(within):
		t.Fatalf("%s still runs after %s, want it killed", p.name, within)
	}
	var exit *exec.ExitError
	if !errors.As(p.waitErr, &exit) {
		t.Fatalf("%s exited with %v, want SIGKILL", p.name, p.waitErr)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("%s exited with %v, want SIGKILL", p.name, p.waitErr)
	}
}

// stop stops the process with SIGTERM and fails the test unless it exits
// with status 0 within a minute.
func (p *childProcess) stop(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		t.Fatalf("%s still runs a minute after SIGTERM", p.name)
	}
	if p.waitErr != nil {
		t.Fatalf("%s exited with %v after SIGTERM, want status 0", p.name, p.waitErr)
	}
}

var agentBin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// agentBinary is the felhom-agent binary built with -tags killpoints, once
// per test binary; removeAgentBinary deletes it after the last test.
func agentBinary(t *testing.T) string {
	t.Helper()
	agentBin.once.Do(func() {
		agentBin.dir, agentBin.err = os.MkdirTemp("", "felhom-agent-test-")
		if agentBin.err != nil {
			return
		}
		path := filepath.Join(agentBin.dir, "felhom-agent")
		out, err := exec.Command("go", "build", "-tags", "killpoints", "-o", path, "../cmd/felhom-agent").CombinedOutput()
		if err != nil {
			agentBin.err = fmt.Errorf("go build -tags killpoints ./cmd/felhom-agent: %v\n%s", err, out)
			return
		}
		agentBin.path = path
	})
	if agentBin.err != nil {
		t.Fatal(agentBin.err)
	}
	return agentBin.path
}

func removeAgentBinary() {
	if agentBin.dir != "" {
		_ = os.RemoveAll(agentBin.dir)
	}
}

// simCAFile writes the simulator's certificate to a PEM file for
// proxmox.ca_file.
func simCAFile(t *testing.T, sim *pvesim.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pve-ca.pem")
	if err := os.WriteFile(path, sim.CertificatePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// childEnviron turns cfg into the FELHOM_* environment of a worker process,
// as in production: the rest of this process's environment, without its
// FELHOM_* variables and without a kill point.
func childEnviron(cfg worker.Config, caFile string) []string {
	cfg.Proxmox.CAFile = caFile
	cfg.Metrics.Address = "off"
	cfg.Log.Level = "debug"
	env := cfg.Environ()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, worker.EnvPrefix) && !strings.HasPrefix(kv, killpoint.Env+"=") {
			env = append(env, kv)
		}
	}
	return env
}

// startChild runs `felhom-agent run` with environ and waits until it polls
// its task queue.
func startChild(t *testing.T, environ []string, logName string) *childProcess {
	t.Helper()
	return startChildCmd(t, exec.Command(agentBinary(t), "run"), environ, logName)
}

// startChildCmd is startChild with the command that runs the agent, e.g.
// one that enters a network namespace first.
func startChildCmd(t *testing.T, cmd *exec.Cmd, environ []string, logName string) *childProcess {
	t.Helper()
	cmd.Env = environ
	p, _ := startProcess(t, strings.TrimSuffix(logName, ".log"), cmd,
		func(line string) bool { return strings.Contains(line, `"msg":"worker polling"`) }, 2*time.Minute)
	return p
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
