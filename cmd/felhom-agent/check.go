package main

import (
	"context"
	"fmt"
	"github.com/felhom/felhom-agent/internal/cmdline"
	"io"
	"log/slog"
	"os"

	"github.com/felhom/felhom-agent/worker"
)

const checkHelp = `Usage: felhom-agent check --config FILE

Checks this host's configuration and everything it names, changing nothing,
and prints one line per check:

  config     the file and FELHOM_* variables: every bad field, with the reason
  temporal   temporal.address answers, the namespace exists and has the
             search attributes the workflows set
  proxmox    proxmox.url answers with the certificate trusted, the token is
             accepted, proxmox.node is this node, and the token has the
             privileges the agent needs
  signers    the signer keys in force can be decided (see "signers repin")
  state      nonce_store, pinned_signers and provenance_ledger can be
             written by this user

Run it as the agent's user (sudo -u felhom-agent felhom-agent check ...).
Exit status: 0 when everything passed, 1 when a check failed, 2 when the
configuration itself is invalid (then nothing is contacted).
`

func cmdCheck(args []string, stdout, stderr io.Writer) error {
	fs := cmdline.NewFlagSet("check", checkHelp, stderr)
	configPath := fs.String("config", os.Getenv("FELHOM_CONFIG"), "YAML configuration `file` (env FELHOM_CONFIG)")
	if err := cmdline.ParseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := worker.LoadConfig(*configPath, os.Environ())
	if err != nil {
		fmt.Fprintf(stdout, "FAIL config\n")
		return cmdline.UsageError{Err: err}
	}
	fmt.Fprintf(stdout, "ok   config     %s\n", *configPath)
	// The SDK's own logging is noise here; errors come back as values.
	quiet := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError + 4}))
	failed := 0
	for _, r := range worker.Check(context.Background(), cfg, quiet, nil) {
		if r.Err != nil {
			failed++
			fmt.Fprintf(stdout, "FAIL %-10s %v\n", r.Name, r.Err)
			continue
		}
		fmt.Fprintf(stdout, "ok   %-10s %s\n", r.Name, r.Note)
	}
	if failed > 0 {
		return fmt.Errorf("%d of 5 checks failed", failed)
	}
	return nil
}
