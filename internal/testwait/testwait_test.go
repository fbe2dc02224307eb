package testwait

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// fakeT records a failure and ends the goroutine that calls For, as
// testing.T's Fatalf does.
type fakeT struct {
	testing.TB
	failed string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestFor(t *testing.T) {
	for _, tc := range []struct {
		name     string
		holdsAt  int // the check that first returns true; 0: never
		wantFail bool
	}{
		{"holds at once", 1, false},
		{"holds at the third check", 3, false},
		{"never holds", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeT{TB: t}
			checks := 0
			start := time.Now()
			done := make(chan struct{})
			go func() {
				defer close(done)
				For(f, "the thing", 50*time.Millisecond, time.Millisecond, func() bool {
					checks++
					return tc.holdsAt > 0 && checks >= tc.holdsAt
				})
			}()
			<-done
			switch {
			case tc.wantFail && f.failed != "timed out waiting for the thing":
				t.Errorf("failure %q, want it to name what it waited for", f.failed)
			case tc.wantFail && time.Since(start) < 50*time.Millisecond:
				t.Errorf("gave up after %s, before its deadline", time.Since(start))
			case !tc.wantFail && f.failed != "":
				t.Errorf("failed: %s", f.failed)
			case !tc.wantFail && checks != tc.holdsAt:
				t.Errorf("%d checks, want %d", checks, tc.holdsAt)
			}
		})
	}
}
