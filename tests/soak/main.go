// Command soak is felhom-agent's chaos soak: it runs a small fleet under
// sustained random faults for a bounded time, lets it settle, and checks
// from the facts (the Proxmox simulators' request logs, the hosts' audit
// logs and ledgers, the Temporal server's workflows) that nothing the agent
// promises was broken. It prints a table of invariants with their counts of
// violations, and the figures of the run, and exits 1 when any invariant
// was violated (2 on bad flags, 3 when the fleet could not be set up).
//
// What runs, all on 127.0.0.1:
//
//   - a Temporal server (internal/devserver on a SQLite file) in a child
//     process of the soak, killed with SIGKILL and started again on the same
//     file at random;
//   - per host, a Proxmox simulator (internal/pvesim, StrictPVE, random
//     task lengths) and the real `felhom-agent run` binary as a child
//     process, with its FELHOM_* environment, killed with SIGKILL and
//     started again at random; the worker reaches the server through a TCP
//     proxy the soak cuts (connections closed, new ones held unanswered)
//     and heals at random;
//   - a stream of desired-state changes (create, resize, stop, start,
//     absent), sent by the real `felhomctl apply`, and of approvals signed
//     with ssh-keygen, valid or forged, tampered, replayed, expired, valid
//     too long, bound to another guest or act, for another host, or signed
//     by the recovery key;
//   - simulator faults: 5xx and 596 before and after the side effect,
//     dropped connections, slow replies, slow, failing and warning tasks,
//     lock timeouts inside tasks, lost tasks (a node reboot), guest locks,
//     nightly-backup locks and guests hidden from the API token.
//
// The run stops by itself: --duration of chaos, then everything healed and
// at most --settle for the fleet to converge. See --help for the flags and
// README.md ("Chaos soak") for what each invariant means.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

const help = `Usage: go run ./tests/soak [flags]

Runs felhom-agent's chaos soak: a Temporal server (SQLite) and, per host, a
Proxmox simulator and a felhom-agent worker process, under random desired
state changes, simulator faults, worker kills, server restarts, network
cuts and a stream of valid and invalid approvals, for --duration. It then
heals every fault, lets the fleet settle for at most --settle, checks the
invariants and prints them with their counts of violations, and the figures
of the run. Exit status: 0 all invariants held, 1 some were violated, 2 bad
flags, 3 the fleet could not be set up.

Needs ssh-keygen and the go tool (it builds felhom-agent and felhomctl from
this module). Run it from the module's directory.

Flags:
`

// options are the soak's flags.
type options struct {
	duration  time.Duration
	settle    time.Duration
	hosts     int
	guests    int
	seed      int64
	faultRate float64
	// skipFaults are fault kinds not injected.
	skipFaults map[string]bool
	jsonOut    bool
	dir        string
	keep       bool
	verbose    bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, help)
		fs.PrintDefaults()
	}
	fs.DurationVar(&o.duration, "duration", 3*time.Minute, "how long the chaos runs, before healing and settling")
	fs.DurationVar(&o.settle, "settle", 2*time.Minute, "at most this long for the healed fleet to converge before the invariants are checked")
	fs.IntVar(&o.hosts, "hosts", 3, "number of simulated Proxmox hosts, each with its own worker process")
	fs.IntVar(&o.guests, "guests", 60, "number of guests (VMIDs) in total, spread over the hosts; about two thirds exist at the start")
	fs.Int64Var(&o.seed, "seed", 0, "seed of the random choices (0: from the clock; the seed used is printed)")
	fs.Float64Var(&o.faultRate, "fault-rate", 1, "multiplies how often faults, kills, restarts and cuts happen (0: none, only changes and approvals)")
	var skip string
	fs.StringVar(&skip, "skip-faults", "", "comma-separated simulator fault `kinds` not to inject (the names the figures use, e.g. lost_tasks_node_reboot)")
	fs.BoolVar(&o.jsonOut, "json", false, "print the report as JSON instead of tables")
	fs.StringVar(&o.dir, "dir", "", "work directory for the server's database, the hosts' files and the logs (default: a new temporary directory)")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (it is always kept when an invariant is violated)")
	fs.BoolVar(&o.verbose, "v", false, "log each chaos event to stderr")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var bad []error
	if o.duration <= 0 {
		bad = append(bad, errors.New("--duration: must be positive"))
	}
	if o.settle <= 0 {
		bad = append(bad, errors.New("--settle: must be positive"))
	}
	if o.hosts < 1 || o.hosts > 20 {
		bad = append(bad, fmt.Errorf("--hosts: %d is outside 1-20", o.hosts))
	}
	if o.guests < o.hosts || o.guests > 5000 {
		bad = append(bad, fmt.Errorf("--guests: %d is outside %d (one per host) to 5000", o.guests, o.hosts))
	}
	if o.faultRate < 0 || o.faultRate > 20 {
		bad = append(bad, fmt.Errorf("--fault-rate: %g is outside 0-20", o.faultRate))
	}
	o.skipFaults = map[string]bool{}
	for kind := range strings.SplitSeq(skip, ",") {
		if kind = strings.TrimSpace(kind); kind == "" {
			continue
		}
		if !slices.ContainsFunc(faultWeights, func(w weighted) bool { return w.name == kind }) {
			bad = append(bad, fmt.Errorf("--skip-faults: %q is not a fault kind (%s)", kind, faultKindNames()))
			continue
		}
		o.skipFaults[kind] = true
	}
	if len(o.skipFaults) == len(faultWeights) {
		bad = append(bad, errors.New("--skip-faults: every fault kind skipped; use --fault-rate 0 for no faults"))
	}
	if o.seed == 0 {
		o.seed = time.Now().UnixNano()
	}
	return o, errors.Join(bad...)
}

func main() {
	if raw := os.Getenv(serverChildEnv); raw != "" {
		os.Exit(runServerChild(raw))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "soak:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	fmt.Fprintf(stderr, "soak: seed %d, %d hosts, %d guests, %s of chaos, fault rate %g\n", o.seed, o.hosts, o.guests, o.duration, o.faultRate)
	f, err := newFleet(ctx, o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "soak: set up:", err)
		if f != nil {
			f.close()
		}
		return 3
	}
	rep, err := f.soak(ctx)
	f.close()
	if err != nil {
		fmt.Fprintln(stderr, "soak:", err)
		fmt.Fprintln(stderr, "soak: work directory kept:", f.dir)
		return 3
	}
	if o.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		rep.print(stdout)
	}
	if rep.Violations() > 0 {
		fmt.Fprintln(stderr, "soak: invariants violated; work directory kept:", f.dir)
		return 1
	}
	if o.keep || o.dir != "" {
		fmt.Fprintln(stderr, "soak: work directory:", f.dir)
	} else {
		_ = os.RemoveAll(f.dir)
	}
	return 0
}
