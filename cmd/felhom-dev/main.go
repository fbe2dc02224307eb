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
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

// exitUsage is the exit code for a command line or configuration that cannot work.
const exitUsage = 2

func runMain(args []string, stdout, stderr io.Writer) int {
	err := cmdDev(args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintln(stderr, "felhom-dev:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "felhom-dev:", err)
		return 1
	}
}

// usageError marks an error in the command line or the configuration, as
// opposed to one met while running.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func newFlagSet(name, help string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), help)
		fmt.Fprintln(fs.Output(), "\nFlags:")
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and refuses positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}
