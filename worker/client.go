package worker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"go.temporal.io/sdk/client"
)

// DialTemporal connects to the configured Temporal frontend and checks that
// it answers, so that a wrong address, certificate or key fails at start-up
// with a message that says which.
func DialTemporal(ctx context.Context, cfg TemporalConfig, log *slog.Logger, metrics client.MetricsHandler) (client.Client, error) {
	opts := client.Options{
		HostPort:       cfg.Address,
		Namespace:      cfg.Namespace,
		Logger:         log,
		MetricsHandler: metrics,
	}
	if cfg.TLS.Enabled() {
		tlsCfg, err := clientTLS(cfg.TLS)
		if err != nil {
			return nil, err
		}
		opts.ConnectionOptions.TLS = tlsCfg
	}
	key, err := apiKey(cfg)
	if err != nil {
		return nil, err
	}
	if key != "" {
		opts.Credentials = client.NewAPIKeyStaticCredentials(key)
	}
	c, err := client.DialContext(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("temporal: connect to %s (namespace %s): %w", cfg.Address, cfg.Namespace, err)
	}
	if _, err := c.CheckHealth(ctx, &client.CheckHealthRequest{}); err != nil {
		c.Close()
		return nil, fmt.Errorf("temporal: %s is not healthy: %w", cfg.Address, err)
	}
	return c, nil
}

func clientTLS(cfg TLSConfig) (*tls.Config, error) {
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

func apiKey(cfg TemporalConfig) (string, error) {
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
