package main

import (
	"bytes"
	"fmt"
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/felhom/felhom-agent/internal/sshkeys/sshkeystest"
	"github.com/felhom/felhom-agent/internal/testtool"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"felhom-sign": main})
}

// TestScripts runs testdata/*.txtar against the real felhom-sign binary,
// ssh-keygen, ssh-agent and ssh-add.
func TestScripts(t *testing.T) {
	testtool.Need(t, "ssh-keygen")
	testscript.Run(t, testscript.Params{
		Dir:       "testdata",
		Condition: testtool.Condition,
		Setup: func(e *testscript.Env) error {
			e.Setenv("HOME", e.WorkDir)
			e.Setenv("SSH_AUTH_SOCK", "")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// ssh-agent SOCK: run a real ssh-agent on SOCK until the script
			// ends, once it listens.
			"ssh-agent": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 1 {
					ts.Fatalf("usage: ssh-agent SOCK")
				}
				stop, err := sshkeystest.Run(ts.MkAbs(args[0]))
				ts.Check(err)
				ts.Defer(stop)
			},
			// chomp FILE: drop the final newline a txtar section always has,
			// to make an exact golden blob.
			"chomp": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 1 {
					ts.Fatalf("usage: chomp FILE")
				}
				path := ts.MkAbs(args[0])
				data, err := os.ReadFile(path)
				ts.Check(err)
				ts.Check(os.WriteFile(path, bytes.TrimSuffix(data, []byte("\n")), 0o644))
			},
			// flip-byte FILE OFFSET: corrupt one byte of FILE.
			"flip-byte": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 2 {
					ts.Fatalf("usage: flip-byte FILE OFFSET")
				}
				path := ts.MkAbs(args[0])
				data, err := os.ReadFile(path)
				ts.Check(err)
				var off int
				_, err = fmt.Sscan(args[1], &off)
				ts.Check(err)
				data[off] ^= 0x20
				ts.Check(os.WriteFile(path, data, 0o644))
			},
		},
	})
}
