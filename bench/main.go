// Command bench measures a felhom-agent fleet on this machine and prints
// one table from one run.
//
//	go run ./bench [flags]
//
// It starts the embedded Temporal server (internal/devserver: a SQLite
// file with the durable settings of felhom-dev, SQLite in memory, or
// PostgreSQL through internal/pgcluster), and per host a strict Proxmox
// simulator (internal/pvesim) and the host's worker (worker.Run, configured
// as the agent is). Desired states go to the guest workflows the way
// felhomctl apply sends them (workflows.SendDesired: Update-With-Start),
// --concurrency at a time. Simulated Proxmox tasks last a random, seeded
// time from the --task range.
//
// Phases (--phases):
//
//   - converge: a cold fleet of --hosts × --guests QEMU guests is created,
//     configured and started; then, from the same run, three reference
//     figures: the direct loop (the agent's own mutations sent again to
//     fresh simulators with go-proxmox, no Temporal, each host's loop
//     --concurrency guests at a time, as each host has its own worker), the
//     critical path (the longest sum of one guest's task durations), and the
//     bare-Temporal floor (as many minimal workflows started by
//     Update-With-Start, each running one no-op activity).
//   - steady: a second fleet of the same size, converged with shortened
//     intervals (--steady-drift, --steady-resync), watched idle for
//     --steady-window.
//   - approval: --approvals guests whose destroy waits for a signature,
//     approved one after another with ssh-keygen signatures.
//   - crash: --crash-guests creates in flight when the worker process is
//     killed (SIGKILL); a new worker process finishes them.
//   - memory: a worker process with --memory-guests open, converged guest
//     workflows; its resident set from /proc.
//   - replay: one guest history at its continue-as-new bound, replayed.
//
// Workers run in this process (converge, steady, approval, replay) or, where
// the phase kills them or reads their RSS (crash, memory), as child
// processes of this program configured through FELHOM_* variables.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

const usage = `Usage: go run ./bench [flags]

Measures a felhom-agent fleet: an embedded Temporal server, one Proxmox
simulator and one worker per host, desired states sent by Update-With-Start.
Prints one table (or JSON with --json) from one run. Timings depend on the
machine and its load; counts do not.

Flags:
  --hosts N            hosts (simulator + worker each) (default 2)
  --guests N           guests per host (default 10)
  --task RANGE         simulated Proxmox task duration: "0", "2s", or a range
                       "1s-3s" drawn per task, seeded (default 0)
  --concurrency N      desired states (and floor workflows) in flight at
                       once; guests in flight in each host's direct loop;
                       and each worker's max_concurrent_activities and
                       proxmox.max_concurrent_requests (default 32)
  --phases LIST        comma list of converge, steady, approval, crash,
                       memory, replay (default converge,steady,approval,replay)
  --db KIND            Temporal's store: file (SQLite file, WAL,
                       synchronous=FULL, as felhom-dev), memory (SQLite in
                       memory) or postgresql (a private cluster, initdb and
                       pg_ctl on PATH) (default file)
  --seed N             seed of the task durations (default 1)
  --json               print JSON instead of the table
  --approvals N        approvals measured by the approval phase (default 100)
  --steady-window D    how long the steady phase watches the idle fleet
                       (default 1m)
  --steady-drift D     drift_check_interval of the steady fleet (default 10s)
  --steady-resync D    per-guest resync of the steady fleet, in production
                       one hour (default 30s)
  --crash-guests N     creates in flight when the worker is killed (default 10)
  --crash-task D       duration of every task in the crash phase (default 3s)
  --memory-guests LIST comma list of fleet sizes for the memory phase
                       (default 1000)
  --timeout D          give up after this long (default 2h)
  --verbose            show the workers' and the server's warnings

Columns of the table:
  phase    the phase that measured the figure; "reference" and "ratio" rows
           belong to converge
  figure   what was measured:
             converge time         first desired state sent to the last guest
                                   workflow's "converged" (from the histories)
             rate                  guests / converge time
             workflow tasks, activities per guest
                                   WorkflowTaskCompleted and activities
                                   scheduled (local ones included) in the
                                   guest workflows' histories
             worker requests per guest
                                   RPCs of the workers to the Temporal server
                                   (the SDK's temporal_request and
                                   temporal_long_request counters); the
                                   "…" rows below it split them by operation
             worker CPU per guest, server and simulators CPU per guest
                                   CPU time (user and system) while
                                   converging, of the worker processes and of
                                   the benchmark's own process (the embedded
                                   server, the simulators, the driver): work
                                   done, without the waits
             last desired state accepted
                                   when the last Update-With-Start returned
             guest start to first step, in steps, last step to converged
                                   p50 and p99 over the guests, from their
                                   histories: workflow start to the first
                                   step activity scheduled; step activities
                                   started to completed (Proxmox requests
                                   and task waits); last step completed to
                                   the "converged" upsert
             proxmox calls per guest
                                   every request the simulators received,
                                   reads and task polls included
             proxmox task polls per guest
                                   of those calls, the reads of a task's
                                   status and the listings of the node's
                                   active tasks
             proxmox mutations per guest
                                   POST/PUT/DELETE answered 2xx
             direct loop, critical path, bare-Temporal floor
                                   the reference figures (see the phases)
             steady figures        per minute of the idle window
             approval to DELETE    from sending the signed approval to the
                                   destroy's DELETE reaching the simulator
             crash                 SIGKILL of the worker to every guest
                                   converged; duplicates are mutating requests
                                   a guest received twice with the same
                                   method and path, both acted on
             memory                the worker process's VmRSS
             replay                events of the run and median replay time
  value    the figure
  unit     s, ms, MiB, ×, per-second rates; empty for counts
  note     how it was measured, or the settings it depends on
`

// options are the parsed flags.
type options struct {
	hosts, guests    int
	taskMin, taskMax time.Duration
	concurrency      int
	phases           []string
	db               string
	seed             int64
	json             bool
	approvals        int
	steadyWindow     time.Duration
	steadyDrift      time.Duration
	steadyResync     time.Duration
	crashGuests      int
	crashTask        time.Duration
	memoryGuests     []int
	timeout          time.Duration
	verbose          bool
}

var allPhases = []string{"converge", "steady", "approval", "crash", "memory", "replay"}

// errUsage is a bad flag; it exits 2.
var errUsage = errors.New("usage")

func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.IntVar(&o.hosts, "hosts", 2, "")
	fs.IntVar(&o.guests, "guests", 10, "")
	task := fs.String("task", "0", "")
	fs.IntVar(&o.concurrency, "concurrency", 32, "")
	phases := fs.String("phases", "converge,steady,approval,replay", "")
	fs.StringVar(&o.db, "db", "file", "")
	fs.Int64Var(&o.seed, "seed", 1, "")
	fs.BoolVar(&o.json, "json", false, "")
	fs.IntVar(&o.approvals, "approvals", 100, "")
	fs.DurationVar(&o.steadyWindow, "steady-window", time.Minute, "")
	fs.DurationVar(&o.steadyDrift, "steady-drift", 10*time.Second, "")
	fs.DurationVar(&o.steadyResync, "steady-resync", 30*time.Second, "")
	fs.IntVar(&o.crashGuests, "crash-guests", 10, "")
	fs.DurationVar(&o.crashTask, "crash-task", 3*time.Second, "")
	memory := fs.String("memory-guests", "1000", "")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Hour, "")
	fs.BoolVar(&o.verbose, "verbose", false, "")
	bad := func(format string, a ...any) (options, error) {
		fmt.Fprintf(stderr, "bench: "+format+"\nRun 'go run ./bench --help' for usage.\n", a...)
		return o, errUsage
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, usage)
			return o, flag.ErrHelp
		}
		return bad("%v", err)
	}
	if fs.NArg() > 0 {
		return bad("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if o.taskMin, o.taskMax, err = parseRange(*task); err != nil {
		return bad("--task: %v", err)
	}
	for _, p := range strings.Split(*phases, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(allPhases, p) {
			return bad("--phases: %q is not one of %s", p, strings.Join(allPhases, ", "))
		}
		if !slices.Contains(o.phases, p) {
			o.phases = append(o.phases, p)
		}
	}
	for _, s := range strings.Split(*memory, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return bad("--memory-guests: %q is not a positive whole number", s)
		}
		o.memoryGuests = append(o.memoryGuests, n)
	}
	switch {
	case o.hosts < 1 || o.hosts > 99:
		return bad("--hosts: must be 1 to 99, got %d", o.hosts)
	case o.guests < 1 || o.guests > 100000:
		return bad("--guests: must be 1 to 100000, got %d", o.guests)
	case o.concurrency < 1:
		return bad("--concurrency: must be at least 1, got %d", o.concurrency)
	case o.db != "file" && o.db != "memory" && o.db != "postgresql":
		return bad("--db: %q is not file, memory or postgresql", o.db)
	case o.approvals < 1:
		return bad("--approvals: must be at least 1, got %d", o.approvals)
	case o.crashGuests < 1:
		return bad("--crash-guests: must be at least 1, got %d", o.crashGuests)
	case o.steadyDrift < time.Second:
		return bad("--steady-drift: must be at least 1s (as drift_check_interval), got %s", o.steadyDrift)
	case o.steadyResync <= 0 || o.steadyWindow <= 0 || o.timeout <= 0 || o.crashTask < 0:
		return bad("--steady-resync, --steady-window, --timeout and --crash-task must be positive")
	}
	return o, nil
}

// parseRange parses "0", "2s" or "1s-3s".
func parseRange(s string) (time.Duration, time.Duration, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	parse := func(v string) (time.Duration, error) {
		if v == "0" {
			return 0, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return 0, fmt.Errorf("%q is not a duration like 0, 2s or 1s-3s", s)
		}
		return d, nil
	}
	a, err := parse(lo)
	if err != nil {
		return 0, 0, err
	}
	b, err := parse(hi)
	if err != nil {
		return 0, 0, err
	}
	if b < a {
		return 0, 0, fmt.Errorf("%q: the range ends before it starts", s)
	}
	return a, b, nil
}

// row is one figure of the table.
type row struct {
	Phase  string  `json:"phase"`
	Figure string  `json:"figure"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit,omitempty"`
	Note   string  `json:"note,omitempty"`
}

// report is the run's settings and figures.
type report struct {
	Settings map[string]string `json:"settings"`
	Rows     []row             `json:"rows"`
	Elapsed  float64           `json:"elapsed_seconds"`
}

func (r *report) add(phase, figure string, v float64, unit, note string) {
	r.Rows = append(r.Rows, row{phase, figure, v, unit, note})
}

// value returns the figure's value, for the test.
func (r *report) value(phase, figure string) (float64, bool) {
	for _, x := range r.Rows {
		if x.Phase == phase && x.Figure == figure {
			return x.Value, true
		}
	}
	return 0, false
}

func (r *report) print(w io.Writer) error {
	keys := make([]string, 0, len(r.Settings))
	for k := range r.Settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, " %s=%s", k, r.Settings[k])
	}
	fmt.Fprintf(w, "#%s elapsed=%.0fs\n", sb.String(), r.Elapsed)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "phase\tfigure\tvalue\tunit\tnote")
	for _, x := range r.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", x.Phase, x.Figure, formatValue(x.Value), x.Unit, x.Note)
	}
	return tw.Flush()
}

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 0) || math.IsNaN(v):
		return "-"
	case v == math.Trunc(v) && math.Abs(v) < 1e9:
		return strconv.FormatInt(int64(v), 10)
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// run runs the chosen phases and returns their figures.
func run(ctx context.Context, o options) (*report, error) {
	started := time.Now()
	r := &report{Settings: map[string]string{
		"hosts": strconv.Itoa(o.hosts), "guests": strconv.Itoa(o.guests),
		"task": rangeText(o.taskMin, o.taskMax), "concurrency": strconv.Itoa(o.concurrency),
		"db": o.db, "seed": strconv.FormatInt(o.seed, 10), "phases": strings.Join(o.phases, ","),
	}}
	e, err := startEnv(ctx, o)
	if err != nil {
		return nil, err
	}
	defer e.close()
	for _, p := range o.phases {
		var err error
		switch p {
		case "converge":
			_, err = e.converge(ctx, r)
		case "steady":
			err = e.steady(ctx, r)
		case "approval":
			err = e.approval(ctx, r)
		case "crash":
			err = e.crash(ctx, r)
		case "memory":
			for _, n := range o.memoryGuests {
				if err = e.memory(ctx, r, n); err != nil {
					break
				}
			}
		case "replay":
			err = e.replay(ctx, r)
		}
		if err != nil {
			return r, fmt.Errorf("%s: %w", p, err)
		}
	}
	r.Elapsed = time.Since(started).Seconds()
	return r, nil
}

func rangeText(lo, hi time.Duration) string {
	if lo == hi {
		return lo.String()
	}
	return lo.String() + "-" + hi.String()
}

func main() {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChildWorker())
	}
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	r, err := run(ctx, o)
	if r != nil {
		if o.json {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(r)
		} else {
			_ = r.print(os.Stdout)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
