// Package testtool finds the external programs that tests run (ssh-keygen,
// ssh-agent, jq, the temporal CLI) on PATH. On a developer's machine a missing
// program skips the test that needs it, saying how to install it; with CI=true
// in the environment it fails the test instead, so a CI run can never pass by
// skipping what it was meant to check.
package testtool

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// install says how to get each program the tests use.
var install = map[string]string{
	"ssh-keygen": "apt-get install openssh-client",
	"ssh-agent":  "apt-get install openssh-client",
	"ssh-add":    "apt-get install openssh-client",
	"jq":         "apt-get install jq",
	"temporal":   "go install github.com/temporalio/cli/cmd/temporal@v1.5.1",
	"ip":         "apt-get install iproute2",
}

// InCI reports whether the environment says this is a CI run (CI=true, as
// .ci/run and most CI services set it).
func InCI() bool {
	ci, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && ci
}

// Need makes sure every named program is on PATH: outside CI the test is
// skipped when one is missing, under CI it fails.
func Need(t testing.TB, names ...string) {
	t.Helper()
	var missing []string
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := missingMessage(missing)
	if InCI() {
		t.Fatalf("%s; CI=%s, so this is a failure, not a skip", msg, os.Getenv("CI"))
		return
	}
	t.Skip(msg)
}

// Path returns the named program's path on PATH, as Need treats a missing one.
func Path(t testing.TB, name string) string {
	t.Helper()
	Need(t, name)
	path, _ := exec.LookPath(name)
	return path
}

// Condition serves testscript's Params.Condition for "tool:NAME": true when
// NAME is on PATH, false when it is not (so `[!tool:NAME] skip` skips the
// script), and an error, which fails the script, when it is not and CI=true.
// Any other condition is an error.
func Condition(cond string) (bool, error) {
	name, ok := strings.CutPrefix(cond, "tool:")
	if !ok || name == "" {
		return false, fmt.Errorf("unknown condition %q", cond)
	}
	if _, err := exec.LookPath(name); err == nil {
		return true, nil
	}
	if InCI() {
		return false, fmt.Errorf("%s; CI=%s, so this is a failure, not a skip", missingMessage([]string{name}), os.Getenv("CI"))
	}
	return false, nil
}

func missingMessage(missing []string) string {
	var hints []string
	seen := map[string]bool{}
	for _, name := range missing {
		if h := install[name]; h != "" && !seen[h] {
			seen[h] = true
			hints = append(hints, h)
		}
	}
	msg := fmt.Sprintf("%s not found on PATH", strings.Join(missing, ", "))
	if len(hints) > 0 {
		msg += " (" + strings.Join(hints, "; ") + ")"
	}
	return msg
}

// NeedPostgres handles PostgreSQL's initdb and pg_ctl missing (err says
// so): outside CI the test is skipped, under CI it fails.
func NeedPostgres(t testing.TB, err error) {
	t.Helper()
	Unavailable(t, err)
}

// Unavailable handles something a test needs that this machine lacks, err
// saying what and how to get it (PostgreSQL, network namespaces...):
// outside CI the test is skipped with that message, under CI it fails.
func Unavailable(t testing.TB, err error) {
	t.Helper()
	if InCI() {
		t.Fatalf("%v; CI=%s, so this is a failure, not a skip", err, os.Getenv("CI"))
		return
	}
	t.Skip("SKIPPED, this machine cannot run it: " + err.Error())
}
