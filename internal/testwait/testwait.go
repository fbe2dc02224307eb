// Package testwait waits in tests for something another goroutine, process
// or server brings about: it checks a condition until it holds, and fails
// the test, naming what it waited for, once a deadline passes.
package testwait

import (
	"testing"
	"time"
)

// For checks cond every interval until it returns true, and fails t with
// "timed out waiting for <what>" when it still does not after within.
// cond runs at once, so a condition that already holds costs no wait.
func For(t testing.TB, what string, within, every time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(every)
	}
}
