package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
)

// host is one simulated Proxmox host: its simulator, its worker process
// (restarted by a supervisor whenever it exits while it should run), the
// link from the worker to the Temporal server, and its files.
type host struct {
	id    string
	sim   *pvesim.Server
	dir   string
	link  *proxy
	env   []string
	agent string // felhom-agent binary
	log   string // the worker's log (JSON lines, every process appended)

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	want     bool // the worker should run: the supervisor restarts it
	starts   int
	kills    int
	crashes  int // exits the soak did not cause
	snapshot int
	done     chan struct{} // closed when the soak stopped the worker for good

	chaos  hostChaos
	vmids  []int
	guests []*guest
}

func (h *host) ledgerPath() string { return filepath.Join(h.dir, "provenance.log") }
func (h *host) noncePath() string  { return filepath.Join(h.dir, "nonces.log") }
func (h *host) snapDir() string    { return filepath.Join(h.dir, "snapshots") }

// workerEnv is the FELHOM_* environment of the host's worker.
func workerEnv(h *host, caFile string, k *keys) []string {
	cfg := worker.Defaults()
	cfg.HostID = h.id
	cfg.Temporal.Address = h.link.addr()
	cfg.Temporal.Namespace = "default"
	cfg.Proxmox.URL, cfg.Proxmox.Node = h.sim.URL(), h.sim.Node()
	cfg.Proxmox.TokenID, cfg.Proxmox.TokenSecret = h.sim.TokenID(), h.sim.TokenSecret()
	cfg.Proxmox.CAFile = caFile
	cfg.Signers.Operational = []string{k.operational.pub}
	cfg.Signers.Recovery = []string{k.recovery.pub}
	cfg.NonceStore, cfg.ProvenanceLedger = h.noncePath(), h.ledgerPath()
	cfg.PinnedSigners = filepath.Join(h.dir, "signers.json")
	cfg.Metrics.Address = "off"
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.DriftCheckInterval = 15 * time.Second
	cfg.Log.Level, cfg.Log.Format = "info", "json"
	env := cfg.Environ()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, worker.EnvPrefix) {
			env = append(env, kv)
		}
	}
	return env
}

// start starts the worker and its supervisor.
func (h *host) start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.want = true
	return h.spawnLocked()
}

// spawnLocked starts one worker process. Before it, the host's ledger and
// nonce store are copied aside: the worker compacts both when it opens
// them, dropping admissions and nonces whose op expired, and the checks
// need every admission ever written.
func (h *host) spawnLocked() error {
	h.snapshot++
	for _, f := range []string{h.ledgerPath(), h.noncePath()} {
		if err := copyFile(f, filepath.Join(h.snapDir(), fmt.Sprintf("%04d-%s", h.snapshot, filepath.Base(f)))); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	logFile, err := os.OpenFile(h.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(h.agent, "run")
	cmd.Env = h.env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start worker of %s: %w", h.id, err)
	}
	h.starts++
	exited := make(chan struct{})
	h.cmd, h.exited = cmd, exited
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(exited)
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.cmd != cmd {
			return // killed by the soak, which restarts it itself
		}
		h.cmd = nil
		if !h.want {
			return
		}
		// It stopped by itself (no server at start, a fatal error): the
		// service manager would start it again.
		h.crashes++
		go func() {
			time.Sleep(2 * time.Second)
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.want && h.cmd == nil {
				_ = h.spawnLocked()
			}
		}()
	}()
	return nil
}

// kill ends the worker with SIGKILL and starts it again after down.
func (h *host) kill(down time.Duration) {
	h.mu.Lock()
	cmd, exited := h.cmd, h.exited
	h.cmd = nil
	h.want = false
	if cmd != nil {
		h.kills++
	}
	h.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
	time.Sleep(down)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil && !h.stopped() {
		h.want = true
		_ = h.spawnLocked()
	}
}

func (h *host) stopped() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// ensureRunning starts the worker if it does not run.
func (h *host) ensureRunning() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.want = true
	if h.cmd != nil {
		return nil
	}
	return h.spawnLocked()
}

// stop ends the worker gracefully (SIGTERM) and keeps it stopped.
func (h *host) stop() {
	h.mu.Lock()
	h.want = false
	cmd, exited := h.cmd, h.exited
	h.cmd = nil
	h.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
