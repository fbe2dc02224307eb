package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/felhom/felhom-agent/internal/temporalclient"
	"github.com/felhom/felhom-agent/workflows"
)

// globals are the connection and output settings every command takes, with
// the temporal CLI's names and environment variables.
type globals struct {
	address, namespace           string
	tls                          bool
	caPath, certPath, keyPath    string
	serverName, apiKey, output   string
	commandTimeout, queryTimeout time.Duration
}

func defaultGlobals() *globals {
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	tlsOn, _ := strconv.ParseBool(os.Getenv("TEMPORAL_TLS"))
	return &globals{
		address:      env("TEMPORAL_ADDRESS", "127.0.0.1:7233"),
		namespace:    env("TEMPORAL_NAMESPACE", "default"),
		tls:          tlsOn,
		caPath:       os.Getenv("TEMPORAL_TLS_CA_PATH"),
		certPath:     os.Getenv("TEMPORAL_TLS_CERT_PATH"),
		keyPath:      os.Getenv("TEMPORAL_TLS_KEY_PATH"),
		serverName:   os.Getenv("TEMPORAL_TLS_SERVER_NAME"),
		apiKey:       os.Getenv("TEMPORAL_API_KEY"),
		output:       "text",
		queryTimeout: 20 * time.Second,
	}
}

// register adds the flags to fs, with the current values as defaults, so a
// flag given before the command carries into the command's flag set.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.address, "address", g.address, "Temporal frontend `HOST:PORT` (env TEMPORAL_ADDRESS)")
	fs.StringVar(&g.namespace, "namespace", g.namespace, "Temporal `NAMESPACE` (env TEMPORAL_NAMESPACE)")
	fs.BoolVar(&g.tls, "tls", g.tls, "use TLS with the system's CAs (env TEMPORAL_TLS)")
	fs.StringVar(&g.caPath, "tls-ca-path", g.caPath, "CA certificate `FILE` to trust (env TEMPORAL_TLS_CA_PATH)")
	fs.StringVar(&g.certPath, "tls-cert-path", g.certPath, "client certificate `FILE` for mTLS (env TEMPORAL_TLS_CERT_PATH)")
	fs.StringVar(&g.keyPath, "tls-key-path", g.keyPath, "client key `FILE` for mTLS (env TEMPORAL_TLS_KEY_PATH)")
	fs.StringVar(&g.serverName, "tls-server-name", g.serverName, "server `NAME` to verify (env TEMPORAL_TLS_SERVER_NAME)")
	fs.Var(secret{&g.apiKey}, "api-key", "bearer API `KEY` (env TEMPORAL_API_KEY)")
	fs.StringVar(&g.output, "output", g.output, "output `FORMAT`: text or json")
	fs.DurationVar(&g.commandTimeout, "command-timeout", g.commandTimeout, "give up on the whole command after this `DURATION` (0: wait as long as it takes)")
	fs.DurationVar(&g.queryTimeout, "query-timeout", g.queryTimeout, "how long a workflow query may wait for the host's worker to answer")
}

// secret is a string flag whose value --help never prints.
type secret struct{ p *string }

func (s secret) String() string { return "" }
func (s secret) Set(v string) error {
	*s.p = v
	return nil
}

func (g *globals) check() error {
	if g.output != "text" && g.output != "json" {
		return usageErrorf("--output %q: want text or json", g.output)
	}
	if _, _, err := net.SplitHostPort(g.address); err != nil {
		return usageErrorf("--address %q is not HOST:PORT", g.address)
	}
	if (g.certPath == "") != (g.keyPath == "") {
		return usageErrorf("--tls-cert-path and --tls-key-path go together")
	}
	for flagName, path := range map[string]string{"tls-ca-path": g.caPath, "tls-cert-path": g.certPath, "tls-key-path": g.keyPath} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return usageErrorf("--%s: %w", flagName, err)
		}
	}
	if g.queryTimeout <= 0 {
		return usageErrorf("--query-timeout must be positive")
	}
	return nil
}

func (g *globals) json() bool { return g.output == "json" }

// context bounds the command by --command-timeout.
func (g *globals) context() (context.Context, context.CancelFunc) {
	if g.commandTimeout > 0 {
		return context.WithTimeout(context.Background(), g.commandTimeout)
	}
	return context.WithCancel(context.Background())
}

// dial connects to Temporal the way the agent does (package
// temporalclient), so both read TLS and API keys alike.
func (c *command) dial(ctx context.Context) (client.Client, error) {
	cfg := temporalclient.Config{
		Address: c.address, Namespace: c.namespace, APIKey: c.apiKey,
		TLS: temporalclient.TLS{CAFile: c.caPath, CertFile: c.certPath, KeyFile: c.keyPath, ServerName: c.serverName},
	}
	if c.tls && !cfg.TLS.Enabled() {
		// TLS with the system's roots: naming the server turns it on.
		host, _, _ := net.SplitHostPort(c.address)
		cfg.TLS.ServerName = host
	}
	dialCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// The SDK's own logging is noise to an operator; errors come back as values.
	log := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelError + 4}))
	return temporalclient.Dial(dialCtx, cfg, log, nil)
}

// errNoWorkflow is returned when a guest workflow does not exist.
var errNoWorkflow = errors.New("no such workflow")

// query runs a workflow query, bounded by --query-timeout: a query waits for
// the host's worker, which may not run.
func (c *command) query(ctx context.Context, tc client.Client, workflowID, name string, out any) error {
	qctx, cancel := context.WithTimeout(ctx, c.queryTimeout)
	defer cancel()
	v, err := tc.QueryWorkflow(qctx, workflowID, "", name)
	var nf *serviceerror.NotFound
	// The server gives up a moment before qctx does, with DeadlineExceeded:
	// either way no worker answered in time.
	var de *serviceerror.DeadlineExceeded
	switch {
	case errors.As(err, &nf):
		return fmt.Errorf("%s: %w", workflowID, errNoWorkflow)
	case err != nil && ctx.Err() == nil && (qctx.Err() != nil || errors.As(err, &de)):
		return fmt.Errorf("%s: no worker answered the %s query within %s: is felhom-agent running for its host? (%w)", workflowID, name, c.queryTimeout, err)
	case err != nil:
		return fmt.Errorf("%s: query %s: %w", workflowID, name, err)
	}
	return v.Get(out)
}

// queryStatus reads a guest workflow's status.
func (c *command) queryStatus(ctx context.Context, tc client.Client, workflowID string) (workflows.GuestStatus, error) {
	var st workflows.GuestStatus
	err := c.query(ctx, tc, workflowID, workflows.QueryStatus, &st)
	return st, err
}

// waitWithProgress runs wait, telling stderr every few seconds that it is
// still waiting and, when probe is given, what probe says.
func (c *command) waitWithProgress(ctx context.Context, what string, probe func(context.Context) string, wait func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- wait(ctx) }()
	start := time.Now()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil && timedOut(ctx, err) {
				return &waitTimeout{what: what, waited: time.Since(start), err: err}
			}
			return err
		case <-tick.C:
			line := fmt.Sprintf("%s: still waiting (%s)", what, time.Since(start).Round(time.Second))
			if probe != nil {
				if s := probe(ctx); s != "" {
					line += ": " + s
				}
			}
			fmt.Fprintln(c.stderr, line)
		}
	}
}

// waitTimeout is a wait cut short by --command-timeout.
type waitTimeout struct {
	what   string
	waited time.Duration
	err    error
}

func (e *waitTimeout) Error() string {
	return fmt.Sprintf("%s: no answer after %s (--command-timeout): is felhom-agent running for this host? (%v)", e.what, e.waited.Round(time.Second), e.err)
}
func (e *waitTimeout) Unwrap() error { return e.err }

// timedOut reports whether err means the command's deadline passed; the SDK
// may give up a moment before ctx itself expires.
func timedOut(ctx context.Context, err error) bool {
	var upd *client.WorkflowUpdateServiceTimeoutOrCanceledError
	return ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &upd) ||
		status.Code(err) == codes.DeadlineExceeded
}

// progressEvery is how often a long wait reports on stderr.
var progressEvery = 5 * time.Second

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
