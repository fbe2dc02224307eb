package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/felhom/felhom-agent/internal/temporalclient"
	"github.com/felhom/felhom-agent/workflows"
)

// globals are the connection and output settings every command takes, with
// the temporal CLI's names. Client settings load as the temporal CLI loads
// them (go.temporal.io/sdk/contrib/envconfig): the profile of the config file
// (--profile or TEMPORAL_PROFILE, --config-file or TEMPORAL_CONFIG_FILE),
// then TEMPORAL_* variables (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
// TEMPORAL_TLS_SERVER_CA_CERT_PATH, TEMPORAL_GRPC_META_*, ...), then the
// CLI's older TEMPORAL_TLS_CA, _CERT and _KEY, then the flags given. A
// profile that works for temporal works for felhomctl.
type globals struct {
	address, namespace                  stringFlag
	apiKey, clientAuthority, serverName string
	tls, tlsDisableHostVerification     bool
	caPath, certPath, keyPath           string
	grpcMeta                            metaFlag
	profile, configFile                 string
	disableConfigFile, disableConfigEnv bool
	output                              string
	commandTimeout, queryTimeout        time.Duration

	// env is where environment variables come from (the process's).
	env envconfig.EnvLookup
	// clientOptions are the resolved client settings, set by check.
	clientOptions client.Options
}

func defaultGlobals() *globals {
	return &globals{
		address:      stringFlag{value: "127.0.0.1:7233"},
		namespace:    stringFlag{value: "default"},
		output:       "text",
		queryTimeout: 20 * time.Second,
		env:          nonEmptyEnv{},
	}
}

// nonEmptyEnv is the process's environment, where a variable set to ""
// counts as unset, as envconfig documents it ("set and non-empty").
type nonEmptyEnv struct{}

func (nonEmptyEnv) Environ() []string { return os.Environ() }
func (nonEmptyEnv) LookupEnv(key string) (string, bool) {
	v := os.Getenv(key)
	return v, v != ""
}

// register adds the flags to fs, with the current values as defaults, so a
// flag given before the command carries into the command's flag set.
func (g *globals) register(fs *flag.FlagSet) {
	fs.Var(&g.address, "address", "Temporal frontend `HOST:PORT`, or several as HOST:PORT,HOST:PORT (env TEMPORAL_ADDRESS, or the profile; default 127.0.0.1:7233)")
	fs.Var(&g.namespace, "namespace", "Temporal `NAMESPACE` (env TEMPORAL_NAMESPACE, or the profile; default \"default\")")
	fs.Var(&g.namespace, "n", "short for --namespace")
	fs.Var(secret{&g.apiKey}, "api-key", "bearer API `KEY` (env TEMPORAL_API_KEY)")
	fs.Var(&g.grpcMeta, "grpc-meta", "gRPC header `KEY=VALUE` for every request; repeatable (env TEMPORAL_GRPC_META_KEY)")
	fs.BoolVar(&g.tls, "tls", g.tls, "use TLS, with the system's CAs unless --tls-ca-path (env TEMPORAL_TLS)")
	fs.StringVar(&g.caPath, "tls-ca-path", g.caPath, "server CA certificate `FILE` (env TEMPORAL_TLS_SERVER_CA_CERT_PATH)")
	fs.StringVar(&g.certPath, "tls-cert-path", g.certPath, "client certificate `FILE` for mTLS (env TEMPORAL_TLS_CLIENT_CERT_PATH)")
	fs.StringVar(&g.keyPath, "tls-key-path", g.keyPath, "client key `FILE` for mTLS (env TEMPORAL_TLS_CLIENT_KEY_PATH)")
	fs.StringVar(&g.serverName, "tls-server-name", g.serverName, "server `NAME` to verify (env TEMPORAL_TLS_SERVER_NAME)")
	fs.BoolVar(&g.tlsDisableHostVerification, "tls-disable-host-verification", g.tlsDisableHostVerification, "do not verify the server's name (env TEMPORAL_TLS_DISABLE_HOST_VERIFICATION)")
	fs.StringVar(&g.clientAuthority, "client-authority", g.clientAuthority, "`AUTHORITY` header value (env TEMPORAL_CLIENT_AUTHORITY)")
	fs.StringVar(&g.profile, "profile", g.profile, "`NAME` of the config file's profile (env TEMPORAL_PROFILE; default \"default\")")
	fs.StringVar(&g.configFile, "config-file", g.configFile, "TOML config `FILE` of profiles (env TEMPORAL_CONFIG_FILE; default the temporal CLI's)")
	fs.BoolVar(&g.disableConfigFile, "disable-config-file", g.disableConfigFile, "read no config file")
	fs.BoolVar(&g.disableConfigEnv, "disable-config-env", g.disableConfigEnv, "read no TEMPORAL_* client settings from the environment")
	fs.StringVar(&g.output, "output", g.output, "output `FORMAT`: text, json or jsonl")
	fs.StringVar(&g.output, "o", g.output, "short for --output")
	fs.DurationVar(&g.commandTimeout, "command-timeout", g.commandTimeout, "give up on the whole command after this `DURATION` (0: wait as long as it takes)")
	fs.DurationVar(&g.queryTimeout, "query-timeout", g.queryTimeout, "how long a workflow query may wait for the host's worker to answer")
}

// stringFlag is a string flag that knows whether it was given: an address
// or namespace flag overrides the profile only when given, as in the
// temporal CLI.
type stringFlag struct {
	value string
	set   bool
}

func (f *stringFlag) String() string { return f.value }
func (f *stringFlag) Set(v string) error {
	f.value, f.set = v, true
	return nil
}

// metaFlag collects repeated KEY=VALUE flags.
type metaFlag []string

func (m *metaFlag) String() string { return strings.Join(*m, ",") }
func (m *metaFlag) Set(v string) error {
	*m = append(*m, v)
	return nil
}

// secret is a string flag whose value --help never prints.
type secret struct{ p *string }

func (s secret) String() string { return "" }
func (s secret) Set(v string) error {
	*s.p = v
	return nil
}

// retiredEnv are variables earlier versions of felhomctl read and the
// temporal CLI never did; each names the variable that replaces it.
var retiredEnv = map[string]string{
	"TEMPORAL_TLS_CA_PATH":   "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
	"TEMPORAL_TLS_CERT_PATH": "TEMPORAL_TLS_CLIENT_CERT_PATH",
	"TEMPORAL_TLS_KEY_PATH":  "TEMPORAL_TLS_CLIENT_KEY_PATH",
}

// check validates the flags and resolves the client settings; every problem
// is a usage error, found before anything is sent.
func (g *globals) check() error {
	switch g.output {
	case "text", "json", "jsonl":
	default:
		return usageErrorf("--output %q: want text, json or jsonl", g.output)
	}
	if g.queryTimeout <= 0 {
		return usageErrorf("--query-timeout must be positive")
	}
	prof, err := g.clientProfile()
	if err != nil {
		return err
	}
	if _, err := temporalclient.Frontends(prof.Address); err != nil {
		return usageErrorf("address (--address, TEMPORAL_ADDRESS or the profile): %w", err)
	}
	if t := prof.TLS; t != nil && !t.Disabled {
		if (t.ClientCertPath == "") != (t.ClientKeyPath == "") {
			return usageErrorf("the client certificate and key (--tls-cert-path and --tls-key-path, TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH) go together")
		}
		for _, f := range []struct{ what, path string }{
			{"--tls-ca-path (TEMPORAL_TLS_SERVER_CA_CERT_PATH)", t.ServerCACertPath},
			{"--tls-cert-path (TEMPORAL_TLS_CLIENT_CERT_PATH)", t.ClientCertPath},
			{"--tls-key-path (TEMPORAL_TLS_CLIENT_KEY_PATH)", t.ClientKeyPath},
		} {
			if f.path == "" {
				continue
			}
			if _, err := os.Stat(f.path); err != nil {
				return usageErrorf("%s: %w", f.what, err)
			}
		}
	}
	opts, err := prof.ToClientOptions(envconfig.ToClientOptionsRequest{})
	if err != nil {
		return usageErrorf("client settings: %w", err)
	}
	g.clientOptions = opts
	return nil
}

// clientProfile loads the client settings as the temporal CLI does: the
// config file's profile, the TEMPORAL_* environment, the CLI's older TLS
// variables, and last the flags given.
func (g *globals) clientProfile() (envconfig.ClientConfigProfile, error) {
	var prof envconfig.ClientConfigProfile
	if !g.disableConfigEnv {
		for old, repl := range retiredEnv {
			if v, ok := g.env.LookupEnv(old); ok && v != "" {
				return prof, usageErrorf("%s is not read (nor by the temporal CLI): set %s instead", old, repl)
			}
		}
	}
	if !g.disableConfigFile || !g.disableConfigEnv {
		var err error
		prof, err = envconfig.LoadClientConfigProfile(envconfig.LoadClientConfigProfileOptions{
			ConfigFilePath:    g.configFile,
			ConfigFileProfile: g.profile,
			DisableFile:       g.disableConfigFile,
			DisableEnv:        g.disableConfigEnv,
			EnvLookup:         g.env,
		})
		if err != nil {
			return prof, usageErrorf("client settings (--profile, --config-file, TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE): %w", err)
		}
	}
	tlsOf := func() *envconfig.ClientConfigTLS {
		if prof.TLS == nil {
			prof.TLS = &envconfig.ClientConfigTLS{}
		}
		return prof.TLS
	}
	if !g.disableConfigEnv {
		for name, set := range map[string]func(string){
			"TEMPORAL_TLS_CA":   func(v string) { tlsOf().ServerCACertPath = v },
			"TEMPORAL_TLS_CERT": func(v string) { tlsOf().ClientCertPath = v },
			"TEMPORAL_TLS_KEY":  func(v string) { tlsOf().ClientKeyPath = v },
		} {
			if v, ok := g.env.LookupEnv(name); ok && v != "" {
				set(v)
			}
		}
	}
	if g.address.set || prof.Address == "" {
		prof.Address = g.address.value
	}
	if g.namespace.set || prof.Namespace == "" {
		prof.Namespace = g.namespace.value
	}
	if g.apiKey != "" {
		prof.APIKey = g.apiKey
	}
	if g.clientAuthority != "" {
		prof.Authority = g.clientAuthority
	}
	for _, kv := range g.grpcMeta {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return prof, usageErrorf("--grpc-meta %q: want KEY=VALUE", kv)
		}
		if prof.GRPCMeta == nil {
			prof.GRPCMeta = map[string]string{}
		}
		prof.GRPCMeta[envconfig.NormalizeGRPCMetaKey(k)] = v
	}
	if g.tls || g.caPath != "" || g.certPath != "" || g.keyPath != "" || g.serverName != "" || g.tlsDisableHostVerification {
		t := tlsOf()
		t.Disabled = false
		if g.caPath != "" {
			t.ServerCACertPath = g.caPath
		}
		if g.certPath != "" {
			t.ClientCertPath = g.certPath
		}
		if g.keyPath != "" {
			t.ClientKeyPath = g.keyPath
		}
		if g.serverName != "" {
			t.ServerName = g.serverName
		}
		if g.tlsDisableHostVerification {
			t.DisableHostVerification = true
		}
	}
	return prof, nil
}

// json reports whether the output is for programs (json or jsonl).
func (g *globals) json() bool { return g.output == "json" || g.output == "jsonl" }

// context bounds the command by --command-timeout.
func (g *globals) context() (context.Context, context.CancelFunc) {
	if g.commandTimeout > 0 {
		return context.WithTimeout(context.Background(), g.commandTimeout)
	}
	return context.WithCancel(context.Background())
}

// dial connects to Temporal with the resolved client settings, through
// package temporalclient as the agent does.
func (c *command) dial(ctx context.Context) (client.Client, error) {
	dialCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	opts := c.clientOptions
	// The SDK's own logging is noise to an operator; errors come back as values.
	opts.Logger = slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelError + 4}))
	return temporalclient.DialOptions(dialCtx, opts)
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

// jsonLines is stdout under --output jsonl: writeJSON writes each value on
// one line there.
type jsonLines struct{ io.Writer }

// writeJSON writes v indented (--output json), or on one line when w is
// stdout under --output jsonl.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	if _, ok := w.(jsonLines); !ok {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}

// writeList writes items as {"key": [...]} for --output json, and one item
// per line for jsonl.
func writeList[T any](c *command, key string, items []T) error {
	if _, ok := c.stdout.(jsonLines); !ok {
		return writeJSON(c.stdout, map[string][]T{key: items})
	}
	for _, it := range items {
		if err := writeJSON(c.stdout, it); err != nil {
			return err
		}
	}
	return nil
}
