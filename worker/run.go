// Package worker wires one host's felhom-agent: it loads and checks the
// configuration, connects to Temporal and to Proxmox, opens the host-local
// stores, and runs the Temporal worker on the host's task queue with the
// workflows and activities registered.
package worker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	sdkworker "go.temporal.io/sdk/worker"

	"github.com/felhom/felhom-agent/activities"
	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pinnedsigners"
	"github.com/felhom/felhom-agent/internal/pveclient"
	"github.com/felhom/felhom-agent/internal/temporalclient"
	"github.com/felhom/felhom-agent/workflows"
)

// RunOptions are what `dev` and tests add to a Config.
type RunOptions struct {
	// ProxmoxRootCAs trusts these CAs for the Proxmox API (the embedded
	// simulator's certificate in `dev`).
	ProxmoxRootCAs *x509.CertPool
	// Ready is called once the worker polls its task queue.
	Ready func(Info)
}

// Info describes a running worker.
type Info struct {
	TaskQueue  string
	MetricsURL string
}

// Run runs the host's worker until ctx is done, then stops it gracefully:
// in-flight activities get cfg.ShutdownTimeout to heartbeat and return, and
// Temporal hands whatever did not finish to the next worker of this host.
func Run(ctx context.Context, cfg Config, log *slog.Logger, opts RunOptions) error {
	// Which signer keys are in force is decided from host-local files
	// before anything connects: a divergence or a corrupt file stops here.
	if err := CheckSigners(cfg); err != nil {
		return err
	}
	metrics, err := StartMetrics(cfg.Metrics.Address, log)
	if err != nil {
		return err
	}
	defer metrics.Close()

	c, err := temporalclient.Dial(ctx, clientConfig(cfg.Temporal), log, metrics.Handler)
	if err != nil {
		return err
	}
	defer c.Close()

	host, err := OpenHost(ctx, cfg, log, opts.ProxmoxRootCAs, metrics)
	if err != nil {
		return err
	}
	defer host.Close()

	queue := workflows.TaskQueue(cfg.HostID)
	sdkworker.SetStickyWorkflowCacheSize(StickyWorkflowCacheSize)
	w := sdkworker.New(c, queue, WorkerOptions(cfg, c))
	Register(w, host.Activities(c))
	if err := w.Start(); err != nil {
		return fmt.Errorf("worker: start on task queue %s: %w", queue, err)
	}
	defer w.Stop()
	if err := ensureHostWorkflow(ctx, c, cfg.HostID, cfg.DriftCheckInterval); err != nil {
		return err
	}
	go watchGuests(ctx, c, cfg, metrics, log)
	log.Info("worker polling", "task_queue", queue, "temporal", cfg.Temporal.Address, "namespace", cfg.Temporal.Namespace,
		"proxmox", cfg.Proxmox.URL, "node", cfg.Proxmox.Node, "metrics", metrics.URL())
	if opts.Ready != nil {
		opts.Ready(Info{TaskQueue: queue, MetricsURL: metrics.URL()})
	}
	<-ctx.Done()
	log.Info("stopping worker", "grace", cfg.ShutdownTimeout)
	return nil
}

// WorkerOptions are the Temporal worker's options for cfg, with c the
// worker's client.
func WorkerOptions(cfg Config, c client.Client) sdkworker.Options {
	return sdkworker.Options{
		Identity:                           fmt.Sprintf("felhom-agent/%s/%d", cfg.HostID, os.Getpid()),
		WorkerStopTimeout:                  cfg.ShutdownTimeout,
		MaxConcurrentActivityExecutionSize: cfg.MaxConcurrentActivities,
		// A new Progress (a Proxmox task's UPID) goes straight to the server
		// through c; the SDK batches the keep-alives with its default
		// throttle, which is also how long a heartbeat may take to arrive
		// before the SDK cancels the attempt: never a second or so, which a
		// busy server can take.
		Interceptors: []interceptor.WorkerInterceptor{activities.HeartbeatInterceptor(c)},
	}
}

// StickyWorkflowCacheSize bounds the workflows the worker keeps in memory
// between their tasks (the SDK's default is 10,000). A guest workflow in
// the cache costs about 80 KiB of RSS (the fleet benchmark: 96 MiB for a
// worker with none, 173 MiB with 1,000 open guest workflows), so the cap
// keeps a host with many guests near 260 MiB. A workflow evicted from the
// cache replays its history (at most MaxHistoryEvents, 2000 events) at its
// next task; a converged guest has a task only when it drifts, so the
// replays of a host with more guests than this are rare.
const StickyWorkflowCacheSize = 2000

// Register registers every workflow and activity of the agent on w.
func Register(w sdkworker.Registry, acts *activities.Host) {
	w.RegisterWorkflow(workflows.GuestReconcileWorkflow)
	w.RegisterWorkflow(workflows.HostWorkflow)
	w.RegisterWorkflow(workflows.SignedJobWorkflow)
	w.RegisterWorkflow(workflows.ObserveGuestWorkflow)
	w.RegisterActivity(acts)
}

// ensureHostWorkflow starts the host's supervisor unless it runs already,
// and gives it this worker's settings either way (Signal-With-Start), so
// that a changed drift_check_interval reaches a running host workflow.
func ensureHostWorkflow(ctx context.Context, c client.Client, hostID string, interval time.Duration) error {
	_, err := c.SignalWithStartWorkflow(ctx, workflows.HostWorkflowID(hostID), workflows.SignalConfigure, workflows.HostSettings{Interval: interval},
		client.StartWorkflowOptions{TaskQueue: workflows.TaskQueue(hostID)},
		workflows.HostWorkflow, workflows.HostInput{Host: hostID, Interval: interval})
	if err != nil {
		return fmt.Errorf("worker: start host workflow: %w", err)
	}
	return nil
}

// CheckSigners decides, without changing anything, which signer keys the
// host would trust from cfg's signers and its pinned-signers file (see
// package pinnedsigners). It returns the reason the agent must not start:
// bad configured keys, a *pinnedsigners.DivergedError, or a file that
// cannot be used (pinnedsigners.ErrCorrupt).
func CheckSigners(cfg Config) error {
	if _, err := gate.ParseSigners(cfg.Signers.Operational, cfg.Signers.Recovery); err != nil {
		return fmt.Errorf("config: signers: %w", err)
	}
	_, err := pinnedsigners.Resolve(cfg.PinnedSigners, pinnedsigners.Keys{Operational: cfg.Signers.Operational, Recovery: cfg.Signers.Recovery})
	if err != nil {
		return fmt.Errorf("pinned_signers: %w", err)
	}
	return nil
}

// Host is what the activities of one host act with: the Proxmox client,
// the host-local stores and the gate built from the pinned keys.
type Host struct {
	proxmox *activities.Proxmox
	ledger  *ledger.Ledger
	nonces  *gate.FileNonceStore
	signers *activities.PinnedSigners
}

// OpenHost connects to Proxmox (failing early on a bad URL or token) and
// opens the nonce store and the provenance ledger, which another process
// must not hold. metrics (nil: none) hears about the gate's decisions, the
// Proxmox requests and task waits, and the stores' fsyncs.
func OpenHost(ctx context.Context, cfg Config, log *slog.Logger, rootCAs *x509.CertPool, metrics *Metrics) (*Host, error) {
	if metrics == nil {
		metrics, _ = StartMetrics("off", log)
	}
	if _, err := gate.ParseSigners(cfg.Signers.Operational, cfg.Signers.Recovery); err != nil {
		return nil, fmt.Errorf("config: signers: %w", err)
	}
	pve, err := pveclient.New(pveclient.Config{
		URL: cfg.Proxmox.URL, TokenID: cfg.Proxmox.TokenID,
		TokenSecret: cfg.Proxmox.TokenSecret, TokenSecretFile: cfg.Proxmox.TokenSecretFile,
		CAFile: cfg.Proxmox.CAFile, RootCAs: rootCAs, InsecureSkipVerify: cfg.Proxmox.Insecure,
		Timeout: cfg.Proxmox.Timeout, MaxConcurrent: cfg.Proxmox.MaxConcurrentRequests, KeepAlive: activities.KeepAlive,
		Observe: metrics.ProxmoxRequest,
	})
	if err != nil {
		return nil, err
	}
	checkCtx, cancel := context.WithTimeout(ctx, cfg.Proxmox.Timeout)
	defer cancel()
	if err := pveclient.Check(checkCtx, pve, cfg.Proxmox.Node); err != nil {
		return nil, err
	}
	nonces, err := gate.OpenFileNonceStoreObserved(cfg.NonceStore, metrics.StoreSync("nonce_store"))
	if err != nil {
		return nil, fmt.Errorf("nonce_store: %w", err)
	}
	// Only ops that expired a day ago are forgotten: a clock stepped back by
	// less than that cannot make a used nonce usable again.
	if dropped, err := nonces.Compact(time.Now().Add(-24 * time.Hour)); err != nil {
		log.Warn("nonce store compaction failed; the log keeps growing", "err", err)
	} else if dropped > 0 {
		log.Info("nonce store compacted", "dropped_expired", dropped)
	}
	led, err := ledger.OpenObserved(cfg.ProvenanceLedger, metrics.StoreSync("provenance_ledger"))
	if err != nil {
		nonces.Close()
		return nil, fmt.Errorf("provenance_ledger: %w", err)
	}
	gateLog := log.With("component", "gate")
	newGate := func(signers []gate.Signer) (*gate.Gate, error) {
		v, err := gate.NewVerifier(gate.VerifierConfig{HostID: cfg.HostID, Signers: signers, Nonces: nonces, MaxValidity: cfg.Signers.MaxValidity})
		if err != nil {
			return nil, err
		}
		return gate.New(v, gateLog, gate.WithObserver(metrics.GateDecision)), nil
	}
	pinned, err := activities.OpenPinnedSigners(cfg.PinnedSigners, cfg.Signers.Operational, cfg.Signers.Recovery, newGate, log)
	if err != nil {
		led.Close()
		nonces.Close()
		return nil, fmt.Errorf("pinned_signers: %w", err)
	}
	return &Host{
		ledger: led, nonces: nonces, signers: pinned,
		proxmox: &activities.Proxmox{
			Client: pve, Node: cfg.Proxmox.Node, HostID: cfg.HostID, Ledger: led, Gate: pinned, Log: log,
			OnTaskWait: metrics.TaskWait,
		},
	}, nil
}

// Activities returns the activities of this host; c lets them wake guest
// workflows.
func (h *Host) Activities(c client.Client) *activities.Host {
	return &activities.Host{Proxmox: h.proxmox, Temporal: c, Signers: h.signers}
}

// Close closes the host-local stores.
func (h *Host) Close() error {
	return errors.Join(h.signers.Close(), h.ledger.Close(), h.nonces.Close())
}
