package main

import (
	"bytes"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"felhom-sign": main})
}

// TestScripts runs testdata/*.txtar against the real felhom-sign binary,
// ssh-keygen, ssh-agent and ssh-add.
func TestScripts(t *testing.T) {
	if _, err := os.Stat("/usr/bin/ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed (apt-get install openssh-client)")
	}
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Setup: func(e *testscript.Env) error {
			e.Setenv("HOME", e.WorkDir)
			e.Setenv("SSH_AUTH_SOCK", "")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// wait-file PATH: wait up to 10s for PATH to exist (a daemon's socket).
			"wait-file": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 1 {
					ts.Fatalf("usage: wait-file PATH")
				}
				path := ts.MkAbs(args[0])
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
					if _, err := os.Stat(path); err == nil {
						return
					}
				}
				ts.Fatalf("%s did not appear", path)
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
