package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/uber-go/tally/v4"
	tallyprom "github.com/uber-go/tally/v4/prometheus"
	"go.temporal.io/sdk/client"
)

// NewLogger returns the agent's structured logger.
func NewLogger(cfg LogConfig, w io.Writer) (*slog.Logger, error) {
	level, err := parseLevel(cfg.Level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}

// Metrics serves the Temporal SDK's metrics for Prometheus.
type Metrics struct {
	Handler client.MetricsHandler
	addr    string
	server  *http.Server
	scope   io.Closer
}

// StartMetrics listens on addr ("off" gives a handler that drops everything)
// and serves /metrics there.
func StartMetrics(addr string, log *slog.Logger) (*Metrics, error) {
	if addr == "off" {
		return &Metrics{Handler: client.MetricsNopHandler}, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: address %s is not available (set metrics.address): %w", addr, err)
	}
	reporter := tallyprom.NewReporter(tallyprom.Options{})
	sanitize := tallyprom.DefaultSanitizerOpts
	// Label values may hold any text in Prometheus; keep task queue and
	// workflow names as operators wrote them (felhom-host-pve1).
	sanitize.ValueCharacters = tally.ValidCharacters{
		Ranges:     tally.AlphanumericRange,
		Characters: append([]rune{'-', '.', '/', ':', '@'}, tally.UnderscoreCharacters...),
	}
	scope, closer := tally.NewRootScope(tally.ScopeOptions{
		CachedReporter:  reporter,
		Separator:       tallyprom.DefaultSeparator,
		SanitizeOptions: &sanitize,
	}, time.Second)
	mux := http.NewServeMux()
	mux.Handle("/metrics", reporter.HTTPHandler())
	m := &Metrics{
		Handler: tallyHandler{scope},
		addr:    l.Addr().String(),
		server:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		scope:   closer,
	}
	go func() {
		if err := m.server.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return m, nil
}

// URL is where Prometheus scrapes, or "" when metrics are off.
func (m *Metrics) URL() string {
	if m.server == nil {
		return ""
	}
	return "http://" + m.addr + "/metrics"
}

// Close stops serving and flushes the scope.
func (m *Metrics) Close() error {
	if m.server == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return errors.Join(m.server.Shutdown(ctx), m.scope.Close())
}

// tallyHandler adapts a tally scope to the SDK's metrics interface.
type tallyHandler struct{ scope tally.Scope }

func (h tallyHandler) WithTags(tags map[string]string) client.MetricsHandler {
	return tallyHandler{h.scope.Tagged(tags)}
}
func (h tallyHandler) Counter(name string) client.MetricsCounter { return h.scope.Counter(name) }
func (h tallyHandler) Gauge(name string) client.MetricsGauge     { return h.scope.Gauge(name) }
func (h tallyHandler) Timer(name string) client.MetricsTimer     { return h.scope.Timer(name) }
