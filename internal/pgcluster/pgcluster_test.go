package pgcluster_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/freeport"
	"github.com/felhom/felhom-agent/internal/pgcluster"
	"github.com/felhom/felhom-agent/internal/testtool"
)

func start(t *testing.T) *pgcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx)
	if errors.Is(err, pgcluster.ErrNotInstalled) {
		testtool.NeedPostgres(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return c
}

// The schema steps create both databases at the version this server
// embeds, and running them again (every `docker compose up` does) changes
// nothing and fails nothing.
func TestSetupTemporalIsCompleteAndRepeatable(t *testing.T) {
	c := start(t)
	if c.Host != "127.0.0.1" || c.Port > freeport.SmallintMax {
		t.Errorf("cluster at %s, want 127.0.0.1 below port %d", c.Addr(), freeport.SmallintMax)
	}
	ctx := context.Background()
	for run := 1; run <= 2; run++ {
		if err := c.SetupTemporal(ctx); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
	}
}

// A wrong password is refused: the cluster asks TCP clients for one, as the
// compose stack's PostgreSQL does.
func TestSetupTemporalNeedsThePassword(t *testing.T) {
	c := start(t)
	c.Password = "wrong"
	if err := c.SetupTemporal(context.Background()); err == nil {
		t.Fatal("SetupTemporal with a wrong password succeeded")
	}
}
