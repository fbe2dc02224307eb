// Package webui serves the Temporal Web UI (github.com/temporalio/ui-server)
// inside the agent's process, pointed at a Temporal frontend, so that
// `felhom-dev` needs nothing else installed to be operated.
package webui

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	uiserver "github.com/temporalio/ui-server/v2/server"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	"github.com/temporalio/ui-server/v2/server/server_options"
)

// Config says where the UI listens and which Temporal frontend it shows.
type Config struct {
	// Addr is the HTTP address of the UI. Empty means 127.0.0.1 on a free port.
	Addr string
	// TemporalAddr is the gRPC address of the Temporal frontend.
	TemporalAddr string
	// Namespace is the namespace the UI opens on.
	Namespace string
	Logger    *slog.Logger
}

// Server is a running Web UI.
type Server struct {
	ui   *uiserver.Server
	url  string
	done chan error
}

type staticConfig struct{ cfg *uiconfig.Config }

func (s staticConfig) GetConfig() (*uiconfig.Config, error) { return s.cfg, nil }

// Start serves the UI and returns once it answers its health check.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.TemporalAddr == "" {
		return nil, errors.New("webui: TemporalAddr is empty")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	host, port, err := reserve(cfg.Addr)
	if err != nil {
		return nil, err
	}
	uiCfg := &uiconfig.Config{
		TemporalGRPCAddress: cfg.TemporalAddr,
		Host:                host,
		Port:                port,
		EnableUI:            true,
		DefaultNamespace:    cfg.Namespace,
		// The UI would otherwise fetch release notes from the internet.
		DisableNewsFetch:   true,
		NotifyOnNewVersion: false,
		HideLogs:           true,
		CORS:               uiconfig.CORS{CookieInsecure: true},
	}
	if err := uiCfg.Validate(); err != nil {
		return nil, fmt.Errorf("webui: configuration: %w", err)
	}
	s := &Server{
		ui:   uiserver.NewServer(server_options.WithConfigProvider(staticConfig{uiCfg})),
		url:  "http://" + net.JoinHostPort(host, strconv.Itoa(port)),
		done: make(chan error, 1),
	}
	go func() { s.done <- s.ui.Start() }()
	if err := s.waitHealthy(ctx); err != nil {
		s.ui.Stop()
		return nil, err
	}
	cfg.Logger.Info("Temporal Web UI started", "url", s.url, "frontend", cfg.TemporalAddr)
	return s, nil
}

// URL is the address a browser opens.
func (s *Server) URL() string { return s.url }

// Stop closes the UI's listener and its connections.
func (s *Server) Stop() {
	s.ui.Stop()
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
	}
}

func (s *Server) waitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/healthz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-s.done:
			return fmt.Errorf("webui: server stopped during start: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("webui: %s not healthy: %w", s.url, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// reserve checks that addr can be bound, because the UI server exits the
// process when its own bind fails, and picks a free port for an empty one.
func reserve(addr string) (string, int, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", 0, fmt.Errorf("webui: address %s is not available: %w", addr, err)
	}
	defer l.Close()
	tcp := l.Addr().(*net.TCPAddr)
	return tcp.IP.String(), tcp.Port, nil
}
