// Command felhomctl is the operators' and the hub's client of felhom-agent:
// it sends desired state to the guest workflows, shows what a change would
// do, lists and signs the destructive actions that wait for an operator, runs
// signed one-shot jobs, and shows a guest's state. It talks only to Temporal,
// like the temporal CLI, and signs with the same canonicaliser and SSHSIG
// code as the hosts that verify (package gate).
//
//	felhomctl apply -f guests.yaml
//	felhomctl plan -f guests/
//	felhomctl pending --host pve1
//	felhomctl approve guest/pve1/101 --key ~/.ssh/id_ed25519   # shows the op, asks "yes"
//	felhomctl job submit --op volume.wipe --host pve1 --guest 101 --params '{"volume":"local-lvm:vm-101-disk-1"}'
//	felhomctl status pve1/101
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// Exit codes, documented in usage.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and something was rejected or failed
	exitUsage   = 2 // bad command line or invalid local input; nothing was sent
	exitChanges = 3 // plan --detailed-exitcode: some guest would change
)

const usage = `felhomctl drives felhom-agent through Temporal: desired state, plans,
approvals of destructive actions, signed jobs and guest status.

Usage:
  felhomctl [connection flags] COMMAND [flags]

Commands:
  apply -f FILE|DIR          validate desired state locally, then send it to the guest workflows
  plan -f FILE|DIR           show the actions a desired state would cause; changes nothing
  pending [--host H]         list the actions waiting for an operator's signature
  approve WORKFLOW_ID        check and show the action a guest workflow waits for; sign and send it once confirmed
  job submit --op OP ...     sign and run a one-shot destructive job (restore, wipe, destroy)
  status HOST/VMID           a guest's desired and observed state, phase and last actions
                             (HOST/VMID and guest/HOST/VMID name the same guest everywhere)

Connection flags (accepted before or after the command), as in the temporal CLI.
Settings load as the temporal CLI loads them: the config file's profile, then
TEMPORAL_* variables, then these flags; a profile that works for temporal works
here.
  --address HOST:PORT        Temporal frontend, or several: HOST:PORT,HOST:PORT (env TEMPORAL_ADDRESS,
                             default 127.0.0.1:7233)
  -n, --namespace NAME       Temporal namespace (env TEMPORAL_NAMESPACE, default "default")
  --profile NAME             profile of the config file (env TEMPORAL_PROFILE, default "default")
  --config-file FILE         TOML config file (env TEMPORAL_CONFIG_FILE, default the temporal CLI's:
                             ~/.config/temporalio/temporal.toml)
  --disable-config-file      read no config file
  --disable-config-env       read no TEMPORAL_* client settings from the environment
  --api-key KEY              bearer API key (env TEMPORAL_API_KEY)
  --grpc-meta KEY=VALUE      gRPC header for every request, repeatable (env TEMPORAL_GRPC_META_KEY)
  --tls                      use TLS with the system's CAs (env TEMPORAL_TLS)
  --tls-ca-path FILE         server CA certificate (env TEMPORAL_TLS_SERVER_CA_CERT_PATH, or TEMPORAL_TLS_CA)
  --tls-cert-path FILE       client certificate for mTLS (env TEMPORAL_TLS_CLIENT_CERT_PATH, or TEMPORAL_TLS_CERT)
  --tls-key-path FILE        client key for mTLS (env TEMPORAL_TLS_CLIENT_KEY_PATH, or TEMPORAL_TLS_KEY)
  --tls-server-name NAME     server name to verify (env TEMPORAL_TLS_SERVER_NAME)
  --tls-disable-host-verification
                             do not verify the server's name (env TEMPORAL_TLS_DISABLE_HOST_VERIFICATION)
  --client-authority NAME    :authority header (env TEMPORAL_CLIENT_AUTHORITY)
  -o, --output text|json|jsonl
                             text for people (default), json for scripts, jsonl one object a line

Exit codes:
  0  success: everything was accepted, done or listed
  1  the command ran, and something was rejected or failed (a refused desired
     state, a gate rejection, a failed job, a pending action approve refuses
     to sign, an approval not confirmed, a workflow or server error)
  2  bad command line or invalid local input (a spec that does not validate,
     malformed params, no confirmation on stdin without --yes); nothing was
     sent
  3  plan --detailed-exitcode only: the plan has changes (0: it has none)

Run "felhomctl COMMAND --help" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := defaultGlobals()
	top := flag.NewFlagSet("felhomctl", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	g.register(top)
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return exitOK
		}
		fmt.Fprintf(stderr, "felhomctl: %v\n\n%s", err, usage)
		return exitUsage
	}
	args = top.Args()
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd := &command{globals: g, stdin: stdin, stdout: stdout, stderr: stderr}
	var err error
	switch args[0] {
	case "apply":
		err = cmd.apply(args[1:])
	case "plan":
		err = cmd.plan(args[1:])
	case "pending":
		err = cmd.pending(args[1:])
	case "approve":
		err = cmd.approve(args[1:])
	case "job":
		err = cmd.job(args[1:])
	case "status":
		err = cmd.status(args[1:])
	case "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "felhomctl: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errReported):
		return exitFailure
	case errors.Is(err, errChanges):
		return exitChanges
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "felhomctl %s: %v\n", args[0], err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "felhomctl %s: %v\n", args[0], err)
		return exitFailure
	}
}

// usageError marks a command line or local input that cannot work; nothing
// was sent when it is returned.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// errReported is returned by a command that has already printed its
// rejections or failures: exit 1 without another message.
var errReported = errors.New("reported")

// command is one invocation: the connection settings, where to write, and
// where an operator's answers come from.
type command struct {
	*globals
	stdin          io.Reader
	stdout, stderr io.Writer
}

// newFlagSet returns a subcommand's flag set with the connection flags; its
// --help prints help and the flags to stdout.
func (c *command) newFlagSet(name, help string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		fs.SetOutput(c.stdout)
		fmt.Fprint(c.stdout, help)
		fmt.Fprintln(c.stdout, "\nFlags:")
		fs.PrintDefaults()
		fs.SetOutput(c.stderr)
	}
	c.globals.register(fs)
	return fs
}

// parseFlags parses args, leaving at most maxArgs positional arguments.
// Flags may follow positional arguments.
func (c *command) parseFlags(fs *flag.FlagSet, args []string, maxArgs int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) > maxArgs {
		return nil, usageErrorf("unexpected argument %q", pos[maxArgs])
	}
	if err := c.globals.check(); err != nil {
		return nil, err
	}
	if _, ok := c.stdout.(jsonLines); !ok && c.output == "jsonl" {
		c.stdout = jsonLines{c.stdout}
	}
	return pos, nil
}
