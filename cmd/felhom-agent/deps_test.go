package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The per-host binary stays lean: the embedded Temporal server, the Web UI
// and SQLite belong to felhom-dev only.
func TestBinaryLinksNoServerUIOrSQLite(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	banned := []string{
		"go.temporal.io/server/",
		"github.com/temporalio/ui-server/",
		"modernc.org/sqlite",
		"github.com/felhom/felhom-agent/internal/devserver",
		"github.com/felhom/felhom-agent/internal/webui",
		"github.com/felhom/felhom-agent/internal/pvesim",
	}
	var n int
	for pkg := range strings.Lines(string(out)) {
		pkg = strings.TrimSpace(pkg)
		n++
		for _, b := range banned {
			if strings.HasPrefix(pkg, b) {
				t.Errorf("felhom-agent links %s", pkg)
			}
		}
	}
	if n == 0 {
		t.Fatal("go list -deps listed nothing")
	}
}
