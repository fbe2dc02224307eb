// Command felhom-agent is the worker daemon of one Proxmox VE host: it polls
// the host's Temporal task queue and runs the guest reconcile workflows and
// their Proxmox activities.
//
//	felhom-agent run --config /etc/felhom-agent/agent.yaml   # production
//	felhom-agent check --config /etc/felhom-agent/agent.yaml # what would stop it, named
//	felhom-agent signers repin --config FILE                 # pin the configured signer keys (host operator)
//
// It links no Temporal server, Web UI or SQLite: the all-in-one that does is
// its own command, cmd/felhom-dev.
package main

import (
	"errors"
	"fmt"
	"github.com/felhom/felhom-agent/internal/cmdline"
	"io"
	"os"
)

const usage = `felhom-agent keeps this Proxmox VE host's guests at the state the control plane asks for.

Usage:
  felhom-agent run --config FILE   run the host's worker against an existing Temporal cluster
  felhom-agent check --config FILE check the configuration, Temporal, Proxmox, the token's privileges
                                   and the state files, naming each problem; changes nothing
  felhom-agent --version           print the version
  felhom-agent signers repin --config FILE
                                   pin the configured signer keys in place of the pinned ones (the host's operator)

Run "felhom-agent COMMAND --help" for a command's flags. Temporal, the Web UI,
the worker and a Proxmox simulator in one process: felhom-dev (go run ./cmd/felhom-dev).
`

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// cmdline.ExitUsage is the exit code for a command line or configuration that cannot work.

func runMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return cmdline.ExitUsage
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stdout, stderr)
	case "check":
		err = cmdCheck(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		printVersion(stdout)
		return 0
	case "dev":
		err = cmdline.UsageError{Err: errors.New(`"dev" is a command of its own: felhom-dev (go run ./cmd/felhom-dev); this binary is the per-host worker`)}
	case "signers":
		err = cmdSigners(args[1:], stdin, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "felhom-agent: unknown command %q\n\n%s", args[0], usage)
		return cmdline.ExitUsage
	}
	return cmdline.Exit("felhom-agent", err, stderr)
}
