// Command felhom-dev is the all-in-one of felhom-agent: in one process it
// runs a real Temporal server (SQLite file), the Temporal Web UI, a Proxmox
// VE API simulator (unless a real Proxmox URL is configured) and one host's
// worker. Nothing else needs to be installed:
//
//	go run ./cmd/felhom-dev
//
// It is a command of its own so that the per-host worker binary
// (cmd/felhom-agent) links neither the Temporal server, nor the Web UI, nor
// SQLite.
package main

import (
	"github.com/felhom/felhom-agent/internal/cmdline"
	"io"
	"os"
)

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

// cmdline.ExitUsage is the exit code for a command line or configuration that cannot work.

func runMain(args []string, stdout, stderr io.Writer) int {
	err := cmdDev(args, stdout, stderr)
	return cmdline.Exit("felhom-dev", err, stderr)
}
