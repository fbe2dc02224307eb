package tests

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
)

// childEnv makes the test binary run a worker instead of the tests: the
// crash tests start it as a separate process and kill it. Its configuration
// comes from FELHOM_* variables, as in production.
const childEnv = "AGENT_TEST_CHILD_WORKER"

func runChildWorker() int {
	cfg, err := worker.LoadConfig("", os.Environ())
	if err != nil {
		fmt.Fprintln(os.Stderr, "child worker:", err)
		return 2
	}
	log, _ := worker.NewLogger(worker.LogConfig{Level: "debug", Format: "text"}, os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = worker.Run(ctx, cfg, log, worker.RunOptions{Ready: func(worker.Info) { fmt.Println("READY") }})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child worker:", err)
		return 1
	}
	return 0
}

// childAgent is a worker in its own process.
type childAgent struct {
	cmd *exec.Cmd
	log *os.File
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

// childEnviron turns cfg into the FELHOM_* environment of a child worker.
func childEnviron(cfg worker.Config, caFile string) []string {
	env := []string{
		childEnv + "=1",
		"FELHOM_HOST_ID=" + cfg.HostID,
		"FELHOM_TEMPORAL_ADDRESS=" + cfg.Temporal.Address,
		"FELHOM_TEMPORAL_NAMESPACE=" + cfg.Temporal.Namespace,
		"FELHOM_PROXMOX_URL=" + cfg.Proxmox.URL,
		"FELHOM_PROXMOX_NODE=" + cfg.Proxmox.Node,
		"FELHOM_PROXMOX_TOKEN_ID=" + cfg.Proxmox.TokenID,
		"FELHOM_PROXMOX_TOKEN_SECRET=" + cfg.Proxmox.TokenSecret,
		"FELHOM_PROXMOX_CA_FILE=" + caFile,
		"FELHOM_SIGNERS_OPERATIONAL=" + strings.Join(cfg.Signers.Operational, "\n"),
		"FELHOM_NONCE_STORE=" + cfg.NonceStore,
		"FELHOM_PROVENANCE_LEDGER=" + cfg.ProvenanceLedger,
		"FELHOM_PINNED_SIGNERS=" + cfg.PinnedSigners,
		"FELHOM_METRICS_ADDRESS=off",
		"FELHOM_SHUTDOWN_TIMEOUT=" + cfg.ShutdownTimeout.String(),
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FELHOM_") && !strings.HasPrefix(kv, childEnv) {
			env = append(env, kv)
		}
	}
	return env
}

// startChild starts a worker process and waits until it polls.
func startChild(t *testing.T, environ []string, logName string) *childAgent {
	t.Helper()
	return startChildCmd(t, exec.Command(os.Args[0], "-test.run=^$"), environ, logName)
}

// startChildCmd is startChild with the command that runs the test binary
// as a worker, e.g. one that enters a network namespace first.
func startChildCmd(t *testing.T, cmd *exec.Cmd, environ []string, logName string) *childAgent {
	t.Helper()
	logFile, err := os.Create(filepath.Join(t.TempDir(), logName))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = environ
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child worker: %v", err)
	}
	c := &childAgent{cmd: cmd, log: logFile}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
		if t.Failed() {
			out, _ := os.ReadFile(logFile.Name())
			t.Logf("%s:\n%s", logName, tail(string(out), 4000))
		}
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "READY" {
				ready <- true
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			_ = cmd.Wait()
			out, _ := os.ReadFile(logFile.Name())
			t.Fatalf("child worker exited before it was ready: %s\n%s", cmd.ProcessState, tail(string(out), 4000))
		}
	case <-time.After(60 * time.Second):
		t.Fatal("child worker not ready within 60s")
	}
	return c
}

// kill ends the worker the hard way: no handler runs, nothing is flushed.
func (c *childAgent) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill child worker: %v", err)
	}
	_ = c.cmd.Wait()
}

// signal sends sig to the worker.
func (c *childAgent) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal child worker: %v", err)
	}
}

// wait waits for the worker to exit and returns its exit error.
func (c *childAgent) wait() error { return c.cmd.Wait() }

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
