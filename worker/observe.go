package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/uber-go/tally/v4"
	tallyprom "github.com/uber-go/tally/v4/prometheus"
	"go.temporal.io/sdk/client"
	sdktally "go.temporal.io/sdk/contrib/tally"

	"github.com/felhom/felhom-agent/gate"
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

// Metrics serves Prometheus metrics at /metrics: the Temporal SDK's
// (temporal_*, through go.temporal.io/sdk/contrib/tally) and the agent's own
// (felhom_*):
//
//	felhom_gate_decisions_total{code,class}             every decision the gate audited
//	felhom_pending_approvals                            guest workflows of this host waiting for a signature
//	felhom_guests{phase}                                guest workflows of this host, by phase
//	felhom_proxmox_requests_total{method,status}        requests to the Proxmox API (status 0: no answer)
//	felhom_proxmox_request_duration_seconds{method,status}
//	felhom_proxmox_task_wait_seconds{type,outcome}      waits on Proxmox tasks, by task type and how they ended
//	felhom_store_fsync_seconds{store}                   fsync of the nonce store and the provenance ledger
type Metrics struct {
	Handler client.MetricsHandler
	scope   tally.Scope // the agent's own metrics
	addr    string
	server  *http.Server
	closer  io.Closer

	mu     sync.Mutex
	phases map[string]bool // every phase reported, so one that empties drops to 0
}

// Histogram buckets of the agent's latencies.
var (
	requestBuckets  = tally.DurationBuckets{5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second, 30 * time.Second}
	taskWaitBuckets = tally.DurationBuckets{time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour}
	fsyncBuckets    = tally.DurationBuckets{100 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, time.Second}
)

// StartMetrics listens on addr ("off" records nothing and serves nothing)
// and serves /metrics there.
func StartMetrics(addr string, log *slog.Logger) (*Metrics, error) {
	if addr == "off" {
		return &Metrics{Handler: client.MetricsNopHandler, scope: tally.NoopScope, phases: map[string]bool{}}, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: address %s is not available (set metrics.address): %w", addr, err)
	}
	// A registry of its own, not Prometheus's default: a second worker in
	// the same process (a restart, a test) would otherwise register every
	// series again, which panics. It serves the Go runtime's and the
	// process's series too, as the default one does.
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reporter := tallyprom.NewReporter(tallyprom.Options{Registerer: registry})
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
		Handler: sdktally.NewMetricsHandler(sdktally.NewPrometheusNamingScope(scope)),
		scope:   scope,
		addr:    l.Addr().String(),
		server:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		closer:  closer,
		phases:  map[string]bool{},
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
	return errors.Join(m.server.Shutdown(ctx), m.closer.Close())
}

// GateDecision counts one decision of the gate (gate.WithObserver).
func (m *Metrics) GateDecision(d gate.Decision) {
	m.scope.Tagged(map[string]string{"code": d.Code, "class": string(d.Class)}).Counter("felhom_gate_decisions_total").Inc(1)
}

// ProxmoxRequest records one request to the Proxmox API (pveclient.Config.Observe).
func (m *Metrics) ProxmoxRequest(method string, status int, took time.Duration) {
	s := m.scope.Tagged(map[string]string{"method": method, "status": strconv.Itoa(status)})
	s.Counter("felhom_proxmox_requests_total").Inc(1)
	s.Histogram("felhom_proxmox_request_duration_seconds", requestBuckets).RecordDuration(took)
}

// TaskWait records one wait on a Proxmox task (activities.Proxmox.OnTaskWait).
func (m *Metrics) TaskWait(taskType, outcome string, waited time.Duration) {
	m.scope.Tagged(map[string]string{"type": taskType, "outcome": outcome}).
		Histogram("felhom_proxmox_task_wait_seconds", taskWaitBuckets).RecordDuration(waited)
}

// StoreSync returns the fsync observer of a host-local store ("nonce_store",
// "provenance_ledger").
func (m *Metrics) StoreSync(store string) func(time.Duration) {
	h := m.scope.Tagged(map[string]string{"store": store}).Histogram("felhom_store_fsync_seconds", fsyncBuckets)
	return func(d time.Duration) { h.RecordDuration(d) }
}

// Guests sets the gauges of this host's guest workflows: how many are in
// each phase, and how many wait for a signature.
func (m *Metrics) Guests(byPhase map[string]int, pending int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p := range byPhase {
		m.phases[p] = true
	}
	for p := range m.phases {
		m.scope.Tagged(map[string]string{"phase": p}).Gauge("felhom_guests").Update(float64(byPhase[p]))
	}
	m.scope.Gauge("felhom_pending_approvals").Update(float64(pending))
}
