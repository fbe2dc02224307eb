package main

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parseFlags([]string{"--duration", "90s", "--hosts", "2", "--guests", "10", "--seed", "7"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 90*time.Second || o.hosts != 2 || o.guests != 10 || o.seed != 7 || o.faultRate != 1 {
		t.Errorf("options %+v", o)
	}
	if o, err := parseFlags(nil, &stderr); err != nil || o.seed == 0 {
		t.Errorf("defaults: %+v, %v; want a seed from the clock", o, err)
	}
}

// Every bad flag is named at once, with its reason.
func TestParseFlagsNamesEveryBadFlag(t *testing.T) {
	var stderr bytes.Buffer
	_, err := parseFlags([]string{"--duration", "0s", "--hosts", "0", "--guests", "1000000", "--fault-rate", "-1", "--settle", "-1s"}, &stderr)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"--duration: must be positive", "--settle: must be positive", "--hosts: 0 is outside 1-20",
		"--guests: 1000000 is outside", "--fault-rate: -1 is outside 0-20"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := parseFlags([]string{"--skip-faults", "drop_after,no_such_fault"}, &stderr); err == nil ||
		!strings.Contains(err.Error(), `--skip-faults: "no_such_fault" is not a fault kind`) {
		t.Errorf("unknown fault kind: %v", err)
	}
	if o, err := parseFlags([]string{"--skip-faults", "lost_tasks_node_reboot, drop_after"}, &stderr); err != nil ||
		!o.skipFaults["lost_tasks_node_reboot"] || !o.skipFaults["drop_after"] || len(o.skipFaults) != 2 {
		t.Errorf("skip two kinds: %v, %v", o.skipFaults, err)
	}
	if _, err := parseFlags([]string{"extra"}, &stderr); err == nil || !strings.Contains(err.Error(), `unexpected argument "extra"`) {
		t.Errorf("extra argument: %v", err)
	}
}

func TestHelpExitsZeroAndExplains(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr); code != 0 {
		t.Errorf("exit %d", code)
	}
	for _, want := range []string{"Usage: go run ./tests/soak", "-duration", "-fault-rate", "Exit status"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("--help does not say %q", want)
		}
	}
	if code := run([]string{"--hosts", "x"}, &stdout, &stderr); code != 2 {
		t.Errorf("bad flag: exit %d, want 2", code)
	}
	if _, err := parseFlags([]string{"-h"}, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}
