// Package temporalclient dials a Temporal frontend from address, namespace,
// TLS and API key settings, the same way for the agent and for felhomctl.
//
// The address is one frontend (host:port), or every frontend of a cluster
// of several server nodes: a DNS name that resolves to each of them
// (dns:///temporal.internal:7233), or a comma-separated list of host:port.
// The client then balances its calls round-robin over the frontends it can
// reach, so losing a node loses none of the client's work.
package temporalclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"go.temporal.io/sdk/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Config says how to reach a Temporal frontend. Errors name the agent's
// config keys (temporal.tls.ca_file, ...), which is also what felhomctl's
// flags set.
type Config struct {
	// Address is host:port, dns:///host:port, or host:port,host:port,...
	Address   string
	Namespace string
	TLS       TLS
	// APIKeyFile holds an API key sent as a bearer token; it wins over APIKey.
	APIKeyFile string
	APIKey     string
}

// TLS is a client TLS setup: a CA to trust and, for mTLS, a client
// certificate and key. Any setting turns TLS on; a ServerName alone means
// TLS with the system's roots.
type TLS struct {
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string
}

// Enabled reports whether any TLS setting was given.
func (t TLS) Enabled() bool {
	return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != ""
}

// Dial connects to the configured Temporal frontend and checks that it
// answers, so that a wrong address, certificate or key fails at start-up
// with a message that says which. metrics may be nil.
func Dial(ctx context.Context, cfg Config, log *slog.Logger, metrics client.MetricsHandler) (client.Client, error) {
	opts, err := options(cfg)
	if err != nil {
		return nil, err
	}
	opts.Logger = log
	opts.MetricsHandler = metrics
	return DialOptions(ctx, opts)
}

// DialOptions dials with SDK client options (HostPort may name several
// frontends, as Config.Address does) and checks that the frontend answers.
func DialOptions(ctx context.Context, opts client.Options) (client.Client, error) {
	address := opts.HostPort
	if err := balance(&opts); err != nil {
		return nil, err
	}
	c, err := client.DialContext(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("temporal: connect to %s (namespace %s): %w", address, opts.Namespace, err)
	}
	if _, err := c.CheckHealth(ctx, &client.CheckHealthRequest{}); err != nil {
		c.Close()
		return nil, fmt.Errorf("temporal: %s is not healthy: %w", address, err)
	}
	return c, nil
}

// Frontends returns the host:port of each frontend the address names, with
// an error that says which part is not host:port.
func Frontends(address string) ([]string, error) {
	if rest, ok := strings.CutPrefix(address, dnsScheme); ok {
		if _, _, err := net.SplitHostPort(rest); err != nil {
			return nil, fmt.Errorf("%q is not dns:///host:port", address)
		}
		return []string{rest}, nil
	}
	parts := strings.Split(address, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if _, _, err := net.SplitHostPort(p); err != nil || p == "" {
			return nil, fmt.Errorf("%q is not host:port (or host:port,host:port,... or dns:///host:port)", address)
		}
		parts[i] = p
	}
	return parts, nil
}

const dnsScheme = "dns:///"

// balance points opts at every frontend its HostPort lists, when it lists
// more than one: a resolver of this client's own names them all, and the
// SDK's round-robin balancing skips the ones that are down.
func balance(opts *client.Options) error {
	frontends, err := Frontends(opts.HostPort)
	if err != nil {
		return fmt.Errorf("temporal: address %w", err)
	}
	if len(frontends) < 2 {
		return nil
	}
	r := manual.NewBuilderWithScheme("felhom-frontends")
	addrs := make([]resolver.Address, len(frontends))
	for i, f := range frontends {
		addrs[i] = resolver.Address{Addr: f}
	}
	r.InitialState(resolver.State{Addresses: addrs})
	opts.HostPort = r.Scheme() + ":///cluster"
	opts.ConnectionOptions.DialOptions = append(opts.ConnectionOptions.DialOptions, grpc.WithResolvers(r))
	if opts.ConnectionOptions.Authority == "" {
		// TLS verifies the first frontend's name unless a server name says otherwise.
		host, _, _ := net.SplitHostPort(frontends[0])
		opts.ConnectionOptions.Authority = host
	}
	return nil
}

// options turns cfg into SDK client options, reading the files it names.
func options(cfg Config) (client.Options, error) {
	opts := client.Options{HostPort: cfg.Address, Namespace: cfg.Namespace}
	if cfg.TLS.Enabled() {
		tlsCfg, err := clientTLS(cfg.TLS)
		if err != nil {
			return client.Options{}, err
		}
		opts.ConnectionOptions.TLS = tlsCfg
	}
	key, err := apiKey(cfg)
	if err != nil {
		return client.Options{}, err
	}
	if key != "" {
		opts.Credentials = client.NewAPIKeyStaticCredentials(key)
	}
	return opts, nil
}

func clientTLS(cfg TLS) (*tls.Config, error) {
	out := &tls.Config{ServerName: cfg.ServerName, MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("temporal.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("temporal.tls.ca_file: %s holds no PEM certificate", cfg.CAFile)
		}
		out.RootCAs = pool
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("temporal.tls.cert_file/key_file: %w", err)
		}
		out.Certificates = []tls.Certificate{cert}
	}
	return out, nil
}

func apiKey(cfg Config) (string, error) {
	if cfg.APIKeyFile == "" {
		return cfg.APIKey, nil
	}
	b, err := os.ReadFile(cfg.APIKeyFile)
	if err != nil {
		return "", fmt.Errorf("temporal.api_key_file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return "", fmt.Errorf("temporal.api_key_file: %s is empty", cfg.APIKeyFile)
	}
	return key, nil
}
