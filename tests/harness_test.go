// Package tests runs felhom-agent end to end: a real Temporal server started
// in-process (SQLite in memory), the real worker with its activities, the
// real go-proxmox client against the Proxmox simulator, real ssh-keygen
// signatures, and real process kills.
package tests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/testwait"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
)

func TestMain(m *testing.M) {
	if raw := os.Getenv(childServerEnv); raw != "" {
		os.Exit(runChildServer(raw))
	}
	devservertest.Main(m, removeAgentBinary)
}

// agent is one host's worker, running in this process, with its simulator.
type agent struct {
	host    string
	metrics string // the worker's /metrics URL, when metrics.address is not off
	sim     *pvesim.Server
	cfg     worker.Config
	client  client.Client
	stop    func()
}

// startSim starts a simulated Proxmox node named host.
func startSim(t *testing.T, host string) *pvesim.Server {
	t.Helper()
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, TaskDuration: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("start simulator: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

// agentConfig is the worker configuration of host against the shared
// Temporal server and sim, with its stores in dir.
func agentConfig(t *testing.T, host string, sim *pvesim.Server, dir string, operational ...string) worker.Config {
	t.Helper()
	srv := devservertest.Start(t)
	return hostConfig(t, host, sim, srv.FrontendAddr(), dir, operational...)
}

// clusterAgentConfig is agentConfig against the frontends of a cluster.
func clusterAgentConfig(t *testing.T, host string, sim *pvesim.Server, frontends string, operational ...string) worker.Config {
	t.Helper()
	return hostConfig(t, host, sim, frontends, t.TempDir(), operational...)
}

func hostConfig(t *testing.T, host string, sim *pvesim.Server, frontends, dir string, operational ...string) worker.Config {
	t.Helper()
	cfg := worker.Defaults()
	cfg.HostID = host
	cfg.Temporal.Address = frontends
	cfg.Temporal.Namespace = "default"
	cfg.Proxmox.URL = sim.URL()
	cfg.Proxmox.Node = sim.Node()
	cfg.Proxmox.TokenID = sim.TokenID()
	cfg.Proxmox.TokenSecret = sim.TokenSecret()
	cfg.NonceStore = filepath.Join(dir, "nonces.log")
	cfg.ProvenanceLedger = filepath.Join(dir, "provenance.log")
	cfg.PinnedSigners = filepath.Join(dir, "signers.json")
	cfg.Metrics.Address = "off"
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Signers.Operational = operational
	if err := cfg.Validate(); err != nil {
		t.Fatalf("agent config: %v", err)
	}
	return cfg
}

// startAgent runs host's worker in this process until the test ends.
func startAgent(t *testing.T, host string, sim *pvesim.Server, operational ...string) *agent {
	t.Helper()
	return startAgentWith(t, host, sim, nil, operational...)
}

// startAgentWith is startAgent with a change to the configuration.
func startAgentWith(t *testing.T, host string, sim *pvesim.Server, edit func(*worker.Config), operational ...string) *agent {
	t.Helper()
	cfg := agentConfig(t, host, sim, t.TempDir(), operational...)
	if edit != nil {
		edit(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	log := testLogger(t)
	var metricsURL string
	go func() {
		done <- worker.Run(ctx, cfg, log, worker.RunOptions{ProxmoxRootCAs: sim.RootCAs(), Ready: func(info worker.Info) {
			metricsURL = info.MetricsURL
			close(ready)
		}})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("worker did not start: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("worker did not start within 60s")
	}
	a := &agent{host: host, sim: sim, cfg: cfg, client: devservertest.Client(t), metrics: metricsURL}
	var once sync.Once
	a.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("worker stopped with: %v", err)
			}
		})
	}
	t.Cleanup(a.stop)
	return a
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("FELHOM_TEST_LOGS") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// guestStatus queries a guest workflow's status.
func (a *agent) guestStatus(t *testing.T, vmid int) workflows.GuestStatus {
	t.Helper()
	st, err := a.queryStatus(vmid)
	if err != nil {
		t.Fatalf("query guest %d: %v", vmid, err)
	}
	return st
}

func (a *agent) queryStatus(vmid int) (workflows.GuestStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st workflows.GuestStatus
	v, err := a.client.QueryWorkflow(ctx, workflows.GuestWorkflowID(a.host, vmid), "", workflows.QueryStatus)
	if err == nil {
		err = v.Get(&st)
	}
	return st, err
}

// clientFor returns a client of the shared Temporal server.
func clientFor(t *testing.T) client.Client { return devservertest.Client(t) }

// waitPhase waits until the guest workflow reports phase.
func (a *agent) waitPhase(t *testing.T, vmid int, phase string) workflows.GuestStatus {
	t.Helper()
	return a.waitPhaseWithin(t, vmid, phase, 60*time.Second)
}

func (a *agent) waitPhaseWithin(t *testing.T, vmid int, phase string, within time.Duration) workflows.GuestStatus {
	t.Helper()
	return a.waitStatusWithin(t, vmid, "phase "+phase, within, func(st workflows.GuestStatus) bool { return st.Phase == phase })
}

// waitStatus waits until the guest workflow's status satisfies cond.
func (a *agent) waitStatus(t *testing.T, vmid int, what string, cond func(workflows.GuestStatus) bool) workflows.GuestStatus {
	t.Helper()
	return a.waitStatusWithin(t, vmid, what, 60*time.Second, cond)
}

func (a *agent) waitStatusWithin(t *testing.T, vmid int, what string, within time.Duration, cond func(workflows.GuestStatus) bool) workflows.GuestStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	var (
		st  workflows.GuestStatus
		err error
	)
	for time.Now().Before(deadline) {
		// A query fails while no worker serves the workflow (a restart).
		if st, err = a.queryStatus(vmid); err == nil && cond(st) {
			return st
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("guest %d: last query failed: %v", vmid, err)
	}
	t.Fatalf("guest %d: phase %s at generation %d, observed %+v after %s, want %s (last error %q, recent %+v)", vmid, st.Phase, st.Generation, st.Observed, within, what, st.LastError, st.Recent)
	return st
}

// countRequests counts the simulator's recorded requests of method whose
// path ends in suffix.
func countRequests(sim *pvesim.Server, method, suffix string) int {
	n := 0
	for _, r := range sim.Requests() {
		if r.Method == method && strings.HasSuffix(r.Path, suffix) {
			n++
		}
	}
	return n
}

// operatorKey is an SSH key made by ssh-keygen for a test operator.
type operatorKey struct {
	Path string // private key file
	Pub  string // authorized_keys line
}

// newOperatorKey generates a key of the given ssh-keygen type (ed25519,
// rsa, ecdsa) in the test's temporary directory.
func newOperatorKey(t *testing.T, typ string) operatorKey {
	t.Helper()
	path := filepath.Join(t.TempDir(), "id_"+typ)
	out, err := exec.Command("ssh-keygen", "-q", "-t", typ, "-N", "", "-C", "operator@test", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return operatorKey{Path: path, Pub: strings.TrimSpace(string(pub))}
}

// waitFor polls cond until it holds, failing the test after 60s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.For(t, what, 60*time.Second, 200*time.Millisecond, cond)
}

// uniqueHost names a test's host apart from every earlier run against the
// same Temporal server (go test -count=N reuses the package's server), so
// workflow IDs and task queues of one run never meet another's.
func uniqueHost(base string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return base + "-" + hex.EncodeToString(b)
}
