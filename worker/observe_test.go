package worker

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

// Two workers' metrics in one process (a worker restarted in place, the
// tests) each serve their own series, the Go runtime's and the process's
// among them; the second used to panic registering the first's series again.
func TestMetricsOfTwoWorkersInOneProcess(t *testing.T) {
	for i := range 2 {
		m, err := StartMetrics("127.0.0.1:0", slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("metrics %d: %v", i, err)
		}
		t.Cleanup(func() { m.Close() })
		m.Guests(map[string]int{"converged": i + 1}, i)
		resp, err := http.Get(m.URL())
		if err != nil {
			t.Fatalf("scrape %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"go_goroutines ", "process_resident_memory_bytes "} {
			if !strings.Contains(string(body), want) {
				t.Errorf("metrics %d serve no %s", i, strings.TrimSpace(want))
			}
		}
	}
}
