package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"felhom-agent": func() { os.Exit(runMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) },
	})
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata",
		RequireExplicitExec: true,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"temporal-server": cmdTemporalServer,
			"pvesim":          cmdPVESim,
		},
	})
}

// cmdTemporalServer starts a real Temporal server (in memory) for the rest of
// the script and sets TEMPORAL_ADDR. "bare" leaves out the search attributes.
func cmdTemporalServer(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! temporal-server")
	}
	cfg := devservertest.Config()
	if len(args) == 1 && args[0] == "bare" {
		cfg.SearchAttributes = nil
	} else if len(args) > 0 {
		ts.Fatalf("usage: temporal-server [bare]")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := devserver.Start(ctx, cfg)
	ts.Check(err)
	ts.Defer(func() { _ = s.Stop() })
	ts.Setenv("TEMPORAL_ADDR", s.FrontendAddr())
}

// cmdPVESim starts the Proxmox simulator for the rest of the script, writes
// its CA to $WORK/pve-ca.pem and its token secret to $WORK/pve-token, and
// sets PVE_URL, PVE_NODE and PVE_TOKEN_ID. "privileges=A,B" gives the token
// only those privileges.
func cmdPVESim(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! pvesim")
	}
	cfg := pvesim.Config{StrictPVE: true, Node: "pve1", TokenID: "felhom@pve!agent"}
	for _, a := range args {
		privs, ok := strings.CutPrefix(a, "privileges=")
		if !ok {
			ts.Fatalf("usage: pvesim [privileges=A,B,...]")
		}
		cfg.TokenACL = []pvesim.ACL{{Path: "/", Privileges: strings.Split(privs, ","), Propagate: true}}
	}
	sim, err := pvesim.Start(cfg)
	ts.Check(err)
	ts.Defer(func() { _ = sim.Close() })
	ts.Check(os.WriteFile(filepath.Join(ts.Getenv("WORK"), "pve-ca.pem"), sim.CertificatePEM(), 0o644))
	ts.Check(os.WriteFile(filepath.Join(ts.Getenv("WORK"), "pve-token"), []byte(sim.TokenSecret()+"\n"), 0o600))
	ts.Setenv("PVE_URL", sim.URL())
	ts.Setenv("PVE_NODE", sim.Node())
	ts.Setenv("PVE_TOKEN_ID", sim.TokenID())
}
