// Package devservertest starts one embedded Temporal server per test package,
// on a free port, with the project's search attributes registered.
//
// The server keeps its state in SQLite in memory, or, with
// FELHOM_TEST_TEMPORAL_DB=postgresql in the environment, in a PostgreSQL
// cluster of its own (package pgcluster), set up with the schema steps of
// docker-compose.yml: the production path. Outside CI a missing PostgreSQL
// skips the tests that need the server; under CI=true it fails them.
package devservertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/pgcluster"
	"github.com/felhom/felhom-agent/internal/testtool"
	"github.com/felhom/felhom-agent/internal/visibility"
)

// DBEnv selects the server's database: "sqlite" (the default) or "postgresql".
const DBEnv = "FELHOM_TEST_TEMPORAL_DB"

var (
	mu       sync.Mutex
	shared   *devserver.Server
	sharedPG *pgcluster.Cluster
	inMain   bool
)

// Main runs a package's tests with a shared server started lazily by Start
// and stopped after the last test, then calls each of after. Use it from
// TestMain:
//
//	func TestMain(m *testing.M) { devservertest.Main(m) }
func Main(m *testing.M, after ...func()) {
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
	if sharedPG != nil {
		if err := sharedPG.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "devservertest:", err)
		}
		sharedPG = nil
	}
	mu.Unlock()
	for _, f := range after {
		f()
	}
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
	cfg := Config()
	var pg *pgcluster.Cluster
	switch db := os.Getenv(DBEnv); db {
	case "", "sqlite":
	case "postgresql":
		pg = StartPostgres(t)
		cfg.Postgres = PostgresOf(pg)
	default:
		t.Fatalf("%s=%q: want sqlite or postgresql", DBEnv, db)
	}
	s, err := devserver.Start(context.Background(), cfg)
	if err != nil {
		if pg != nil {
			_ = pg.Stop()
		}
		t.Fatalf("start embedded Temporal server: %v", err)
	}
	if !inMain {
		t.Cleanup(func() {
			mu.Lock()
			defer mu.Unlock()
			_ = s.Stop()
			if pg != nil {
				_ = pg.Stop()
			}
			shared, sharedPG = nil, nil
		})
	}
	shared, sharedPG = s, pg
	return s
}

// OnPostgres reports whether the shared server runs on PostgreSQL.
func OnPostgres() bool { return os.Getenv(DBEnv) == "postgresql" }

// StartPostgres starts a PostgreSQL cluster with Temporal's databases set up
// by the schema steps of docker-compose.yml. The caller stops it. A missing
// PostgreSQL skips t, or fails it under CI.
func StartPostgres(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgcluster.Start(ctx)
	if errors.Is(err, pgcluster.ErrNotInstalled) {
		testtool.NeedPostgres(t, err)
	}
	if err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}
	if err := pg.SetupTemporal(ctx); err != nil {
		_ = pg.Stop()
		t.Fatalf("set up Temporal's databases: %v", err)
	}
	return pg
}

// PostgresOf is the server's persistence on pg's two Temporal databases.
func PostgresOf(pg *pgcluster.Cluster) *devserver.Postgres {
	return &devserver.Postgres{Default: pg.SQL(pgcluster.DB), Visibility: pg.SQL(pgcluster.VisibilityDB)}
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
