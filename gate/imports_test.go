package gate_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The gate is the security core: it imports neither Temporal nor a metrics
// library. Its audit and its observer hook are how others hear about it.
func TestGateImportsNoTemporalOrMetrics(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for pkg := range strings.Lines(string(out)) {
		pkg = strings.TrimSpace(pkg)
		for _, banned := range []string{"go.temporal.io/", "github.com/uber-go/tally", "github.com/prometheus/", "go.opentelemetry.io/"} {
			if strings.HasPrefix(pkg, banned) {
				t.Errorf("gate depends on %s", pkg)
			}
		}
	}
}
