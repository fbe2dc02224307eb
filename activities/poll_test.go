package activities

import (
	"testing"
	"time"
)

func TestNextPoll(t *testing.T) {
	tests := []struct {
		waited, max, want time.Duration
	}{
		{0, time.Second, MinPollInterval},
		{40 * time.Millisecond, time.Second, MinPollInterval},
		{1200 * time.Millisecond, time.Second, 100 * time.Millisecond},
		{3 * time.Second, time.Second, 250 * time.Millisecond},
		{20 * time.Second, time.Second, time.Second},
		{time.Hour, 0, DefaultPollInterval},
		{time.Second, 5 * time.Millisecond, 5 * time.Millisecond}, // a maximum below the minimum wins
	}
	for _, tt := range tests {
		if got := NextPoll(tt.waited, tt.max); got != tt.want {
			t.Errorf("NextPoll(%s, %s) = %s, want %s", tt.waited, tt.max, got, tt.want)
		}
	}
}

// A poll comes at most a twelfth of the time waited after the task's end
// (once past the minimum interval), and the gap never exceeds the maximum:
// the waits' overshoot is bounded, whatever the task's length.
func TestNextPollBoundsTheOvershoot(t *testing.T) {
	for _, length := range []time.Duration{0, 150 * time.Millisecond, 1100 * time.Millisecond, 2900 * time.Millisecond, time.Minute} {
		var at time.Duration // the simulated poll times
		polls := 1
		for at < length {
			at += NextPoll(at, time.Second)
			polls++
		}
		over := at - length
		if bound := max(MinPollInterval, min(length/12, time.Second)); over > bound {
			t.Errorf("a %s task is seen %s after its end", length, over)
		}
		t.Logf("a %s task: %d polls, seen %s after its end", length, polls, over)
	}
}
