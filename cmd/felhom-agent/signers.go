package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"github.com/felhom/felhom-agent/internal/cmdline"
	"io"
	"os"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pinnedsigners"
	"github.com/felhom/felhom-agent/worker"
)

const signersHelp = `Usage: felhom-agent signers repin --config FILE [--yes]

Replaces this host's pinned signer keys (the pinned_signers file, which a
signed signers.rotate op writes) with the keys of the configuration
(signers.operational and signers.recovery), and records them as the
configuration in effect.

The agent refuses to start when the configured keys differ both from the
pinned keys and from the configured keys recorded when they were pinned, or
when the pinned-signers file cannot be used: it never picks one set
silently. There are two ways out: make the configuration equal the pinned
keys (which keeps the signed rotation), or run this command to pin the
configured keys instead (which undoes it).

repin is a local action of the host's operator (root, or the user the agent
runs as), outside the signed-op path: no signature is asked for, because
whoever can run it on the host can already edit the configuration and the
file. Stop the agent first (it holds the file's lock while it runs). repin
prints the keys that would be removed, added and kept, by SHA256
fingerprint, then reads one line from stdin: "yes" pins them, anything else
changes nothing (exit 1), and no answer without --yes is refused (exit 2).
`

func cmdSigners(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "repin" {
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-help" || args[0] == "-h" || args[0] == "help") {
			fmt.Fprint(stderr, signersHelp)
			return flag.ErrHelp
		}
		return cmdline.UsageError{Err: fmt.Errorf("want \"signers repin\"\n\n%s", signersHelp)}
	}
	fs := cmdline.NewFlagSet("signers repin", signersHelp, stderr)
	configPath := fs.String("config", os.Getenv("FELHOM_CONFIG"), "YAML configuration `file` (env FELHOM_CONFIG)")
	yes := fs.Bool("yes", false, "pin without asking for confirmation on stdin")
	if err := cmdline.ParseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *configPath == "" {
		return cmdline.UsageError{Err: errors.New("signers repin: --config FILE is required: the configuration whose keys are to be pinned")}
	}
	cfg, err := worker.LoadConfigUnvalidated(*configPath, os.Environ())
	if err != nil {
		return cmdline.UsageError{Err: err}
	}
	path := cfg.PinnedSigners
	if path == "" {
		return cmdline.UsageError{Err: errors.New("config: pinned_signers: must name the file of the host's pinned signer keys")}
	}
	configured := pinnedsigners.Keys{Operational: cfg.Signers.Operational, Recovery: cfg.Signers.Recovery}
	conf, err := pinnedsigners.Fingerprints(configured)
	if err != nil {
		return cmdline.UsageError{Err: fmt.Errorf("config: signers: %w", err)}
	}

	lock, err := pinnedsigners.TryLock(path)
	if err != nil {
		if errors.Is(err, pinnedsigners.ErrLocked) {
			return fmt.Errorf("%w: stop the agent before repinning (e.g. systemctl stop felhom-agent)", err)
		}
		return err
	}
	defer lock.Unlock()

	var old pinnedsigners.Keys
	f, err := pinnedsigners.Read(path)
	switch {
	case err != nil:
		fmt.Fprintf(stdout, "%v\nIt will be replaced by the configured keys.\n", err)
	case f == nil:
		fmt.Fprintf(stdout, "No pinned-signers file at %s: the configured keys are in force already; nothing to repin.\n", path)
		return nil
	default:
		old = f.Keys
		pinned, _ := pinnedsigners.Fingerprints(f.Keys)
		var recorded pinnedsigners.Set
		if f.Configured != nil {
			recorded, _ = pinnedsigners.Fingerprints(*f.Configured)
		}
		if pinned.Equal(conf) && f.Configured != nil && recorded.Equal(conf) {
			fmt.Fprintf(stdout, "%s already pins the configured keys; nothing to do.\n", path)
			return nil
		}
	}
	fmt.Fprintf(stdout, "Signer keys of %s, now pinned (-) and as configured in %s (+):\n", path, *configPath)
	printKeyChanges(stdout, gate.RoleOperational, old.Operational, configured.Operational)
	printKeyChanges(stdout, gate.RoleRecovery, old.Recovery, configured.Recovery)
	if !*yes {
		if err := confirm(stdin, stdout, `Pin the configured keys on this host? Type "yes" to repin: `); err != nil {
			return err
		}
	}
	if err := pinnedsigners.Repin(path, configured); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Pinned %s in %s. Start the agent.\n", conf, path)
	return nil
}

// printKeyChanges lists one role's keys: removed (pinned, not configured),
// added (configured, not pinned) and kept, by fingerprint and comment.
// Lines that do not parse are shown as they are.
func printKeyChanges(w io.Writer, role gate.Role, pinned, configured []string) {
	type key struct{ fp, comment string }
	parse := func(lines []string) []key {
		var out []key
		for _, l := range lines {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			pub, comment, err := gate.ParseSignerLine(l)
			if err != nil {
				out = append(out, key{fp: fmt.Sprintf("%.40q", l), comment: "(unreadable)"})
				continue
			}
			out = append(out, key{fp: ssh.FingerprintSHA256(pub), comment: comment})
		}
		return out
	}
	before, after := parse(pinned), parse(configured)
	has := func(keys []key, fp string) bool {
		return slices.ContainsFunc(keys, func(k key) bool { return k.fp == fp })
	}
	fmt.Fprintf(w, "  %s:\n", role)
	if len(before) == 0 && len(after) == 0 {
		fmt.Fprintln(w, "    none")
	}
	for _, k := range before {
		if !has(after, k.fp) {
			fmt.Fprintf(w, "    - %s %s  (removed)\n", k.fp, k.comment)
		}
	}
	for _, k := range after {
		if has(before, k.fp) {
			fmt.Fprintf(w, "      %s %s  (kept)\n", k.fp, k.comment)
		} else {
			fmt.Fprintf(w, "    + %s %s  (added)\n", k.fp, k.comment)
		}
	}
}

// confirm asks on w and reads one line from r: "yes" confirms. No line at
// all is a usage error: the command cannot ask, and --yes was not given.
func confirm(r io.Reader, w io.Writer, prompt string) error {
	fmt.Fprint(w, prompt)
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && (!errors.Is(err, io.EOF) || line == "") {
		fmt.Fprintln(w)
		return cmdline.UsageError{Err: errors.New("no confirmation on stdin (it ended before a line was read): answer \"yes\" at the prompt, or give --yes; nothing was changed")}
	}
	if answer := strings.TrimSpace(line); answer != "yes" {
		return fmt.Errorf("answered %q: nothing was changed", answer)
	}
	return nil
}
