package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/felhom/felhom-agent/internal/cmdline"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/pinnedsigners"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/internal/webui"
	"github.com/felhom/felhom-agent/worker"
)

const devHelp = `Usage: felhom-dev [flags]

Runs the whole system in one process, with nothing else to install:
  - a real Temporal server (SQLite in DATA_DIR/temporal.db; data survives restarts),
  - the Temporal Web UI,
  - a Proxmox VE API simulator (unless --config sets proxmox.url): seeded with demo
    guests on the first run, its guests, volumes and token kept in DATA_DIR/pvesim.json
    and its address in DATA_DIR/pvesim-addr, so that a restart finds the same node,
  - this host's worker, with an operator signing key made for you in DATA_DIR.

Every address must be free; a taken one fails at start with its name. Use
127.0.0.1:0 for any free port. Ctrl-C stops everything gracefully.

Host-local stores. With the simulator, the nonce store, the pinned signers
and the provenance ledger live in DATA_DIR, whatever a --config file says:
they describe simulated guests only. With a real Proxmox (--config with
proxmox.url), dev uses the nonce_store, pinned_signers and provenance_ledger
of the file (their defaults under /var/lib/felhom-agent when unset), exactly
as "felhom-agent run" would: they are the host's record of spent approvals,
rotated keys and the agent's own guests, and a second copy would let a spent
approval run again or bring back a rotated-away key. For the same reason dev
makes no operator key for a real Proxmox: signers.operational must be in the
file. The banner says which stores are in use.
`

type devFlags struct {
	dataDir, frontendAddr, uiAddr, metricsAddr, pveAddr, hostID, configPath, logLevel string
	taskDuration                                                                      time.Duration
}

func cmdDev(args []string, stdout, stderr io.Writer) error {
	fs := cmdline.NewFlagSet("dev", devHelp, stderr)
	var f devFlags
	fs.StringVar(&f.dataDir, "data-dir", ".felhom-dev", "`directory` for the Temporal database, the host-local stores and the dev operator key")
	fs.StringVar(&f.frontendAddr, "frontend-addr", "127.0.0.1:7233", "Temporal frontend gRPC `address`")
	fs.StringVar(&f.uiAddr, "ui-addr", "127.0.0.1:8233", "Temporal Web UI `address`, or \"off\"")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "127.0.0.1:9464", "worker Prometheus metrics `address`, or \"off\"")
	fs.StringVar(&f.pveAddr, "pvesim-addr", "", "Proxmox simulator `address` (default: the last run's, kept in DATA_DIR, else a free port on 127.0.0.1)")
	fs.DurationVar(&f.taskDuration, "pvesim-task-duration", 2*time.Second, "how long each simulated Proxmox task runs")
	fs.StringVar(&f.hostID, "host-id", "dev", "this host's `id`")
	fs.StringVar(&f.configPath, "config", "", "optional agent configuration `file`: a proxmox.url there drives a real Proxmox instead of the simulator")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := cmdline.ParseFlags(fs, args); err != nil {
		return err
	}
	log, err := worker.NewLogger(worker.LogConfig{Level: f.logLevel, Format: "text"}, stderr)
	if err != nil {
		return cmdline.UsageError{Err: fmt.Errorf("--log-level: %w", err)}
	}
	// The server's own info lines are about its internals; keep its warnings
	// unless everything was asked for.
	serverLevel := "warn"
	if f.logLevel == "debug" {
		serverLevel = "debug"
	}
	serverLog, _ := worker.NewLogger(worker.LogConfig{Level: serverLevel, Format: "text"}, stderr)
	cfg, operatorKey, err := devConfig(f)
	if err != nil {
		return cmdline.UsageError{Err: err}
	}
	simulated := cfg.Proxmox.URL == ""
	if !simulated {
		// A configuration that cannot drive the real Proxmox is refused
		// before anything starts; the Temporal settings are the embedded
		// server's.
		check := cfg
		check.Temporal = worker.TemporalConfig{Address: f.frontendAddr, Namespace: "default"}
		if err := check.Validate(); err != nil {
			return cmdline.UsageError{Err: err}
		}
		if err := worker.CheckSigners(check); err != nil {
			if errors.As(err, new(*pinnedsigners.DivergedError)) {
				return cmdline.UsageError{Err: err}
			}
			return err
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	temporal, err := devserver.Start(ctx, devserver.Config{
		DBPath:           filepath.Join(f.dataDir, "temporal.db"),
		FrontendAddr:     f.frontendAddr,
		SearchAttributes: visibility.SearchAttributes(),
		SystemWorkers:    true,
		Logger:           serverLog,
	})
	if err != nil {
		return fmt.Errorf("%w (choose another with --frontend-addr)", err)
	}
	defer temporal.Stop()
	// The worker talks to the embedded server, whatever the file says.
	cfg.Temporal = worker.TemporalConfig{Address: temporal.FrontendAddr(), Namespace: temporal.Namespace()}

	uiURL := "off"
	if f.uiAddr != "off" {
		ui, err := webui.Start(ctx, webui.Config{Addr: f.uiAddr, TemporalAddr: temporal.FrontendAddr(), Namespace: temporal.Namespace(), Logger: log})
		if err != nil {
			return fmt.Errorf("%w (choose another with --ui-addr, or --ui-addr off)", err)
		}
		defer ui.Stop()
		uiURL = ui.URL()
	}

	var opts worker.RunOptions
	proxmoxWhere := cfg.Proxmox.URL
	if cfg.Proxmox.URL == "" {
		sim, where, err := startDevSimulator(f, cfg.HostID, log.With("component", "pvesim"))
		if err != nil {
			return err
		}
		defer sim.Close()
		cfg.Proxmox.URL = sim.URL()
		cfg.Proxmox.Node = sim.Node()
		cfg.Proxmox.TokenID = sim.TokenID()
		cfg.Proxmox.TokenSecret = sim.TokenSecret()
		opts.ProxmoxRootCAs = sim.RootCAs()
		proxmoxWhere = where
	}
	if err := cfg.Validate(); err != nil {
		return cmdline.UsageError{Err: err}
	}

	opts.Ready = func(info worker.Info) {
		printDevBanner(stdout, devBanner{
			UI: uiURL, Frontend: temporal.FrontendAddr(), Namespace: temporal.Namespace(),
			Metrics: info.MetricsURL, Proxmox: proxmoxWhere, TaskQueue: info.TaskQueue,
			HostID: cfg.HostID, OperatorKey: operatorKey, Simulated: simulated,
			Stores: []string{cfg.NonceStore, cfg.PinnedSigners, cfg.ProvenanceLedger},
		})
	}
	err = worker.Run(ctx, cfg, log, opts)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// devConfig is the worker configuration of `dev`: the optional file, then,
// with the simulator, the data directory for everything host-local and a
// signing key made for the developer so that approvals can be tried at
// once. Against a real Proxmox (proxmox.url in the file) the host-local
// stores and the signer keys are the file's, as `run` would use them: they
// protect real guests, and a copy of them in the data directory would not.
//
// operatorKey is the private key file of the key dev made and pinned, or
// empty when the keys come from the file.
func devConfig(f devFlags) (cfg worker.Config, operatorKey string, err error) {
	cfg = worker.Defaults()
	var loadErr error
	if f.configPath != "" {
		cfg, loadErr = worker.LoadConfigUnvalidated(f.configPath, os.Environ())
	}
	if cfg.HostID == "" {
		cfg.HostID = f.hostID
	}
	if loadErr != nil {
		return cfg, "", devLoadProblems(f, cfg, loadErr)
	}
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return cfg, "", fmt.Errorf("--data-dir: %w", err)
	}
	cfg.Metrics.Address = f.metricsAddr
	cfg.Log.Level = f.logLevel
	if cfg.Proxmox.URL != "" {
		if len(cfg.Signers.Operational) == 0 {
			return cfg, "", fmt.Errorf("config %s: signers.operational: must be set when dev drives a real Proxmox (proxmox.url %s); dev makes its own operator key only for the simulator",
				f.configPath, cfg.Proxmox.URL)
		}
		return cfg, "", nil
	}
	cfg.NonceStore = filepath.Join(f.dataDir, "nonces.log")
	cfg.ProvenanceLedger = filepath.Join(f.dataDir, "provenance.log")
	cfg.PinnedSigners = filepath.Join(f.dataDir, "signers.json")
	if len(cfg.Signers.Operational) == 0 {
		operatorKey = filepath.Join(f.dataDir, "operator_ed25519")
		pub, err := devOperatorKey(operatorKey)
		if err != nil {
			return cfg, "", err
		}
		cfg.Signers.Operational = []string{pub}
	}
	return cfg, operatorKey, nil
}

// devLoadProblems is every problem of a configuration file that could not
// be read as a whole: those of reading it, and what Validate finds in the
// settings dev takes from it, so that one run names them all. The settings
// dev sets itself (Temporal, and the simulator's Proxmox section when the
// file names no proxmox.url) are stood in for.
func devLoadProblems(f devFlags, cfg worker.Config, loadErr error) error {
	check := cfg
	check.Temporal = worker.TemporalConfig{Address: f.frontendAddr, Namespace: "default"}
	check.Metrics.Address, check.Log.Level = f.metricsAddr, f.logLevel
	if check.Proxmox.URL == "" {
		check.Proxmox = worker.Defaults().Proxmox
		check.Proxmox.URL, check.Proxmox.TokenID, check.Proxmox.TokenSecret = "http://127.0.0.1/api2/json", "felhom@pve!dev", "simulated"
		check.NonceStore, check.ProvenanceLedger, check.PinnedSigners = "data-dir", "data-dir", "data-dir"
	}
	return worker.JoinProblems(loadErr, check.Validate())
}

// devOperatorKey returns the authorized_keys line of the dev operator key at
// path, creating the key pair (OpenSSH format, unencrypted) on first use.
func devOperatorKey(path string) (string, error) {
	if pub, err := os.ReadFile(path + ".pub"); err == nil {
		return strings.TrimSpace(string(pub)), nil
	}
	pubKey, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	block, err := ssh.MarshalPrivateKey(priv, "felhom dev operator")
	if err != nil {
		return "", err
	}
	sshPub, err := ssh.NewPublicKey(pubKey)
	if err != nil {
		return "", err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " felhom-dev-operator"
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", fmt.Errorf("dev operator key: %w", err)
	}
	if err := os.WriteFile(path+".pub", []byte(line+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("dev operator key: %w", err)
	}
	return line, nil
}

type devBanner struct {
	UI, Frontend, Namespace, Metrics, Proxmox, TaskQueue, HostID, OperatorKey string
	Simulated                                                                 bool
	Stores                                                                    []string // nonce store, pinned signers, provenance ledger
}

func printDevBanner(w io.Writer, b devBanner) {
	if b.Metrics == "" {
		b.Metrics = "off"
	}
	key := "from the configuration's signers"
	if b.OperatorKey != "" {
		key = b.OperatorKey + "  (pinned as this host's operational signer)"
	}
	fmt.Fprintf(w, `
felhom-dev is running.

  Temporal Web UI   %s
  Temporal frontend %s  (namespace %s)
  Worker metrics    %s
  Proxmox API       %s
  Task queue        %s
  Operator key      %s
  Host-local stores %s

`, b.UI, b.Frontend, b.Namespace, b.Metrics, b.Proxmox, b.TaskQueue, key, strings.Join(b.Stores, ", "))
	if b.Simulated {
		fmt.Fprint(w, firstSteps(b))
	}
}

// firstSteps shows how to send a first desired state and a first approval
// with nothing but the temporal CLI and ssh-keygen.
func firstSteps(b devBanner) string {
	guest := func(vmid int, body string) string {
		return fmt.Sprintf(`{"host":"%s","vmid":%d,"desired":{"host":"%s","vmid":%d,%s}}`, b.HostID, vmid, b.HostID, vmid, body)
	}
	return fmt.Sprintf(`First steps (temporal CLI; see README.md "Operating" for felhomctl and more):

  # a desired state: start the stopped demo VM 101
  temporal workflow start --address %[1]s --task-queue %[2]s --type GuestReconcileWorkflow \
    --workflow-id guest/%[3]s/101 --input '%[4]s'

  # a destructive one: VM 100 absent. It waits for an operator's signature:
  temporal workflow start --address %[1]s --task-queue %[2]s --type GuestReconcileWorkflow \
    --workflow-id guest/%[3]s/100 --input '%[5]s'
  temporal workflow list --address %[1]s --query "FelhomPendingSignature = true AND ExecutionStatus = 'Running'"
  temporal workflow query --address %[1]s --workflow-id guest/%[3]s/100 --type pending

  # approve it with the operator key: felhomctl checks and shows the op, and asks "yes"
  # (or with ssh-keygen and the temporal CLI: README.md, "Approving")
  go run ./cmd/felhomctl --address %[1]s pending
  go run ./cmd/felhomctl --address %[1]s approve guest/%[3]s/100 --key %[6]s

`, b.Frontend, b.TaskQueue, b.HostID,
		guest(101, `"kind":"qemu","name":"worker","state":"running","memory":"4GiB","cores":4,"tags":["demo"]`),
		guest(100, `"state":"absent"`),
		cmp.Or(b.OperatorKey, "YOUR_KEY"))
}
