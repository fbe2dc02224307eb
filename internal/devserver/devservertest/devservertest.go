// Package devservertest starts one embedded Temporal server per test package,
// on a free port, with the project's search attributes registered.
package devservertest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/visibility"
)

var (
	mu     sync.Mutex
	shared *devserver.Server
	inMain bool
)

// Main runs a package's tests with a shared server started lazily by Start
// and stopped after the last test. Use it from TestMain:
//
//	func TestMain(m *testing.M) { devservertest.Main(m) }
func Main(m *testing.M) {
	mu.Lock()
	inMain = true
	mu.Unlock()
	code := m.Run()
	mu.Lock()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "devservertest:", err)
		}
		shared = nil
	}
	mu.Unlock()
	os.Exit(code)
}

// Start returns the package's shared server, starting it on first use. Without
// Main in the package's TestMain the server is stopped when the first test that
// asked for it ends, so every later test gets a fresh one.
func Start(t testing.TB) *devserver.Server {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if shared != nil {
		return shared
	}
	s, err := devserver.Start(context.Background(), Config())
	if err != nil {
		t.Fatalf("start embedded Temporal server: %v", err)
	}
	if !inMain {
		t.Cleanup(func() {
			mu.Lock()
			defer mu.Unlock()
			_ = s.Stop()
			shared = nil
		})
	}
	shared = s
	return s
}

// Client returns a client of the shared server, closed when t ends.
func Client(t testing.TB) client.Client {
	t.Helper()
	s := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := s.Dial(ctx)
	if err != nil {
		t.Fatalf("dial embedded Temporal server: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Config is the configuration test servers start with: in memory, a random
// port, the project's search attributes, and the server's logs only when
// FELHOM_TEST_SERVER_LOGS is set.
func Config() devserver.Config {
	cfg := devserver.Config{SearchAttributes: visibility.SearchAttributes()}
	if os.Getenv("FELHOM_TEST_SERVER_LOGS") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return cfg
}
