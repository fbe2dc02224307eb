package cmdline

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

func TestParseFlagsAndExit(t *testing.T) {
	var stderr bytes.Buffer
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{nil, 0, ""},
		{[]string{"-h"}, 0, "the help"},
		{[]string{"-nope"}, ExitUsage, "prog: flag provided but not defined: -nope"},
		{[]string{"extra"}, ExitUsage, `prog: x: unexpected argument "extra"`},
	}
	for _, tt := range tests {
		stderr.Reset()
		fs := NewFlagSet("x", "the help\n", &stderr)
		if got := Exit("prog", ParseFlags(fs, tt.args), &stderr); got != tt.code || !strings.Contains(stderr.String(), tt.out) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tt.args, got, stderr.String(), tt.code, tt.out)
		}
	}
	stderr.Reset()
	if got := Exit("prog", errors.New("boom"), &stderr); got != 1 || stderr.String() != "prog: boom\n" {
		t.Errorf("runtime failure: exit %d, stderr %q", got, stderr.String())
	}
	if got := Exit("prog", UsageError{flag.ErrHelp}, &stderr); got != 0 {
		t.Errorf("help wrapped as usage: exit %d", got)
	}
}
