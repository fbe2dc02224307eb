package killpoint

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

func TestMatches(t *testing.T) {
	for _, c := range []struct {
		spec, point, label string
		want               bool
	}{
		{"", BeforePost, "start", false},
		{BeforePost, BeforePost, "start", true},
		{BeforePost, BeforePost, "", true},
		{BeforePost, AfterPost, "start", false},
		{"before-post:start", BeforePost, "start", true},
		{"before-post:start", BeforePost, "stop", false},
		{"before-post:", BeforePost, "start", false},
		{"before-post:", BeforePost, "", true},
		{"gate-accepted:guest.destroy", GateAccepted, "guest.destroy", true},
		{"gate-accepted:guest.destroy", GateAccepted, "volume.wipe", false},
		{"Before-Post", BeforePost, "start", false},
	} {
		if got := matches(c.spec, c.point, c.label); got != c.want {
			t.Errorf("matches(%q, %q, %q) = %v, want %v", c.spec, c.point, c.label, got, c.want)
		}
	}
}

// childEnv makes the test binary reach a kill point instead of running the
// tests, so the parent sees what the build does with Env.
const childEnv = "KILLPOINT_TEST_CHILD"

func TestReachHonoursEnvOnlyInKillpointsBuilds(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		Reach(BeforePost, "start")
		os.Stdout.WriteString("survived\n")
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReachHonoursEnvOnlyInKillpointsBuilds$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1", Env+"=before-post:start")
	out, err := cmd.Output()
	var exit *exec.ExitError
	if !Enabled {
		// The production build: the variable is set and nothing happens.
		if err != nil || !strings.Contains(string(out), "survived") {
			t.Fatalf("default build with %s set: err %v, output %q; want it to run on", Env, err, out)
		}
		return
	}
	if !errors.As(err, &exit) {
		t.Fatalf("killpoints build: err %v, output %q; want the child killed", err, out)
	}
	ws := exit.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL || strings.Contains(string(out), "survived") {
		t.Fatalf("killpoints build: child ended with %v, output %q; want SIGKILL at the point", exit, out)
	}
	if !strings.Contains(string(exit.Stderr), "killpoint: before-post start") {
		t.Errorf("killpoints build: stderr %q does not name the point", exit.Stderr)
	}
}

// A point that Env does not name, or names with another label, is passed.
func TestReachPassesOtherPoints(t *testing.T) {
	t.Setenv(Env, "after-post:destroy")
	Reach(AfterPost, "start")
	Reach(BeforePost, "destroy")
	Reach(TaskWait, "")
}
