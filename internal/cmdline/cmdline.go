// Package cmdline is the command-line plumbing that felhom-agent and
// felhom-dev share: flag sets that print their command's help, positional
// arguments refused, and one rule for exit codes: 0 when the command did
// its work or printed its help, 2 (ExitUsage) when the command line or the
// configuration cannot work, 1 for a failure met while running.
package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// ExitUsage is the exit code for a command line or configuration that
// cannot work.
const ExitUsage = 2

// UsageError marks an error in the command line or the configuration, as
// opposed to one met while running.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// NewFlagSet returns a flag set that reports its errors and, on -h, prints
// help followed by the flags.
func NewFlagSet(name, help string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), help)
		fmt.Fprintln(fs.Output(), "\nFlags:")
		fs.PrintDefaults()
	}
	return fs
}

// ParseFlags parses args and refuses positional arguments; a bad flag is a
// UsageError, -h is flag.ErrHelp.
func ParseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return UsageError{err}
	}
	if fs.NArg() > 0 {
		return UsageError{fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// Exit reports err on stderr, prefixed with prog, and returns the
// command's exit code.
func Exit(prog string, err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(UsageError)):
		fmt.Fprintln(stderr, prog+":", err)
		return ExitUsage
	default:
		fmt.Fprintln(stderr, prog+":", err)
		return 1
	}
}
