package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/testtool"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"felhomctl": func() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs testdata/*.txtar: help, usage errors and local
// validation, and (connect.txtar) connecting as the temporal CLI does.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata",
		RequireExplicitExec: true,
		Condition:           testtool.Condition,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// temporal-server starts a real Temporal server for the rest of
			// the script and sets TEMPORAL_ADDR to its frontend.
			"temporal-server": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) > 0 {
					ts.Fatalf("usage: temporal-server")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				s, err := devserver.Start(ctx, devservertest.Config())
				ts.Check(err)
				ts.Defer(func() { _ = s.Stop() })
				ts.Setenv("TEMPORAL_ADDR", s.FrontendAddr())
			},
		},
		Setup: func(e *testscript.Env) error {
			e.Setenv("HOME", e.WorkDir)
			e.Setenv("SSH_AUTH_SOCK", "")
			return nil
		},
	})
}
