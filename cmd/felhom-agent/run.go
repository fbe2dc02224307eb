package main

import (
	"context"
	"errors"
	"github.com/felhom/felhom-agent/internal/cmdline"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/felhom/felhom-agent/internal/pinnedsigners"
	"github.com/felhom/felhom-agent/worker"
)

const runHelp = `Usage: felhom-agent run --config FILE

Runs this host's worker against an existing Temporal cluster: it connects to
temporal.address, polls task queue felhom-host-<host_id>, and drives the
Proxmox API at proxmox.url. Every setting can be overridden by an environment
variable FELHOM_<PATH> (e.g. FELHOM_TEMPORAL_ADDRESS); the configuration is
checked at start and every problem is named at once, each with its setting
(file:line and YAML path, or the variable) and the reason: exit 2.

Before it connects anywhere it decides which signer keys are in force: the
configured signers, or the keys a signed signers.rotate pinned in
pinned_signers. A configuration that differs both from the pinned keys and
from the configuration recorded when they were pinned, or a pinned-signers
file that cannot be used, stops it (exit 2 and exit 1): see
"felhom-agent signers repin --help".

SIGINT or SIGTERM stops it gracefully: in-flight activities get
shutdown_timeout to heartbeat and stop, and Temporal resumes them later.
`

func cmdRun(args []string, stdout, stderr io.Writer) error {
	fs := cmdline.NewFlagSet("run", runHelp, stderr)
	configPath := fs.String("config", os.Getenv("FELHOM_CONFIG"), "YAML configuration `file` (env FELHOM_CONFIG)")
	if err := cmdline.ParseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := worker.LoadConfig(*configPath, os.Environ())
	if err != nil {
		return cmdline.UsageError{Err: err}
	}
	log, err := worker.NewLogger(cfg.Log, stderr)
	if err != nil {
		return cmdline.UsageError{Err: err}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = worker.Run(ctx, cfg, log, worker.RunOptions{})
	if errors.As(err, new(*pinnedsigners.DivergedError)) {
		// The configuration disagrees with the host: the operator decides.
		return cmdline.UsageError{Err: err}
	}
	return err
}
