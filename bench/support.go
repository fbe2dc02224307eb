package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
)

// taskClock draws the simulated duration of every Proxmox task from
// [min, max], seeded, and keeps each guest's sum. The draw depends only on
// the seed, the host, the guest, the task type and how many tasks of that
// type the guest ran before, not on timing, so the agent and the direct
// loop meet the same durations for the same tasks.
type taskClock struct {
	seed     int64
	host     string
	min, max time.Duration

	mu   sync.Mutex
	seen map[taskKey]int
	sum  map[int]time.Duration // by VMID
}

type taskKey struct {
	typ  string
	vmid int
}

func newTaskClock(seed int64, host string, lo, hi time.Duration) *taskClock {
	return &taskClock{seed: seed, host: host, min: lo, max: hi, seen: map[taskKey]int{}, sum: map[int]time.Duration{}}
}

// duration is pvesim's Config.TaskDurationFunc.
func (c *taskClock) duration(typ string, vmid int) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := taskKey{typ, vmid}
	n := c.seen[k]
	c.seen[k] = n + 1
	d := c.min
	if c.max > c.min {
		h := fnv.New64a()
		fmt.Fprintf(h, "%d/%s/%d/%s/%d", c.seed, c.host, vmid, typ, n)
		d += time.Duration(h.Sum64() % uint64(c.max-c.min+1))
	}
	c.sum[vmid] += d
	return d
}

// criticalPath is the longest sum of task durations of one guest since the
// last reset: with unbounded concurrency no schedule finishes sooner.
func (c *taskClock) criticalPath() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var longest time.Duration
	for _, d := range c.sum {
		longest = max(longest, d)
	}
	return longest
}

// reset forgets the sums, not the counts: a later task of a guest draws
// the next duration of its sequence.
func (c *taskClock) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sum = map[int]time.Duration{}
}

// operatorKey is an ed25519 key made by ssh-keygen, as an operator has.
type operatorKey struct {
	path string // private key file
	pub  string // authorized_keys line
}

func newOperatorKey(dir string) (operatorKey, error) {
	path := filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@bench", "-f", path).CombinedOutput(); err != nil {
		return operatorKey{}, fmt.Errorf("ssh-keygen: %w: %s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		return operatorKey{}, err
	}
	return operatorKey{path: path, pub: strings.TrimSpace(string(pub))}, nil
}

// sign fills in tpl with a fresh nonce and a ten-minute window,
// canonicalises it and signs it with `ssh-keygen -Y sign`.
func (k operatorKey) sign(dir string, tpl workflows.OpTemplate) (workflows.Approval, error) {
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	now := time.Now().UTC().Truncate(time.Second)
	blob, err := gate.Canonicalize(gate.Op{
		Op: tpl.Op, HostID: tpl.HostID, GuestID: tpl.GuestID, Params: tpl.Params,
		Nonce: hex.EncodeToString(nonce), NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(10 * time.Minute), KeyID: "ops",
	})
	if err != nil {
		return workflows.Approval{}, err
	}
	path := filepath.Join(dir, "op-"+hex.EncodeToString(nonce)+".json")
	if err := os.WriteFile(path, blob, 0o600); err != nil {
		return workflows.Approval{}, err
	}
	if out, err := exec.Command("ssh-keygen", "-Y", "sign", "-n", gate.Namespace, "-f", k.path, path).CombinedOutput(); err != nil {
		return workflows.Approval{}, fmt.Errorf("ssh-keygen -Y sign: %w: %s", err, out)
	}
	sig, err := os.ReadFile(path + ".sig")
	if err != nil {
		return workflows.Approval{}, err
	}
	return workflows.Approval{Blob: string(blob), Signature: string(sig)}, nil
}

// childEnv marks this program's own process as a child worker. It must not
// start with worker.EnvPrefix: the worker refuses unknown FELHOM_ settings.
const childEnv = "BENCH_WORKER_CHILD"

// runChildWorker is the child process: the worker configured from FELHOM_*
// variables, as felhom-agent run would be, until SIGTERM or a kill. It
// prints "READY <metrics URL>" once it polls.
func runChildWorker() int {
	cfg, err := worker.LoadConfig("", os.Environ())
	if err != nil {
		fmt.Fprintln(os.Stderr, "child worker:", err)
		return 2
	}
	log, _ := worker.NewLogger(worker.LogConfig{Level: "warn", Format: "text"}, os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = worker.Run(ctx, cfg, log, worker.RunOptions{Ready: func(i worker.Info) { fmt.Println("READY", i.MetricsURL) }})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child worker:", err)
		return 1
	}
	return 0
}

// startChild runs h's worker in a child process of this program.
func (e *env) startChild(ctx context.Context, h *host, dir string) error {
	caFile := filepath.Join(dir, "pve-ca.pem")
	if err := os.WriteFile(caFile, h.sim.CertificatePEM(), 0o600); err != nil {
		return err
	}
	cfg := h.cfg
	cfg.Proxmox.CAFile = caFile
	environ := append([]string{childEnv + "=1"}, cfg.Environ()...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, worker.EnvPrefix) && !strings.HasPrefix(kv, childEnv+"=") {
			environ = append(environ, kv)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self)
	cmd.Env = environ
	if e.opts.verbose {
		cmd.Stderr = os.Stderr
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start child worker of %s: %w", h.id, err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if url, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- url
			}
		}
		close(ready)
	}()
	select {
	case url, ok := <-ready:
		if !ok {
			_ = cmd.Wait()
			return fmt.Errorf("child worker of %s exited before it was ready (run with --verbose to see why)", h.id)
		}
		h.metrics = url
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return ctx.Err()
	}
	h.child = cmd
	return nil
}

// terminate stops h's worker gracefully (SIGTERM), or kills it when it
// has not stopped after its shutdown timeout and some.
func (h *host) terminate() error {
	done := make(chan error, 1)
	go func() { done <- h.child.Wait() }()
	if err := h.child.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case err := <-done:
		h.child = nil
		return err
	case <-time.After(h.cfg.ShutdownTimeout + 10*time.Second):
		_ = h.child.Process.Kill()
		<-done
		h.child = nil
		return fmt.Errorf("worker of %s did not stop within %s; killed", h.id, h.cfg.ShutdownTimeout+10*time.Second)
	}
}

// kill kills h's child worker with SIGKILL and reaps it.
func (h *host) kill() error {
	if err := h.child.Process.Kill(); err != nil {
		return err
	}
	_ = h.child.Wait()
	h.child = nil
	return nil
}

// rss reads the resident set size of h's child worker from /proc, in bytes.
func (h *host) rss() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.child.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", h.child.Process.Pid)
}
