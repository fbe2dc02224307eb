package appendlog_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/appendlog"
)

// OnSync hears about every append's fsync, and only about those.
func TestOnSyncIsToldEveryAppendsSync(t *testing.T) {
	var syncs []time.Duration
	l, err := appendlog.Open(filepath.Join(t.TempDir(), "log"), "TEST1", appendlog.Options{
		OnSync: func(d time.Duration) { syncs = append(syncs, d) },
	}, func([]byte) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	opened := len(syncs)
	for _, rec := range []string{"a", "bb", "ccc"} {
		if err := l.Append([]byte(rec)); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(syncs) - opened; got != 3 {
		t.Fatalf("OnSync called %d times for 3 appends, want 3", got)
	}
	for _, d := range syncs {
		if d < 0 {
			t.Errorf("negative sync duration %s", d)
		}
	}
}
