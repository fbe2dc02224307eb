package main

import (
	"os"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name string
		line string
		want time.Duration
		ok   bool
	}{
		{"plain", "4242 (bench) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 12 0 100 0 0", 3250 * time.Millisecond, true},
		{"a name with spaces and parentheses", "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 0 0", 70 * time.Millisecond, true},
		{"no name", "7 a R 1", 0, false},
		{"too few fields", "7 (x) R 1 2 3", 0, false},
		{"not a number", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 x 4 0", 0, false},
		{"negative", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 -3 4 0", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcStat(tt.line)
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("parseProcStat = %v, %v; want %v, ok %v", got, err, tt.want, tt.ok)
			}
		})
	}
}

// The process's own /proc CPU time grows with work done, and agrees with
// getrusage to within the ticks' resolution.
func TestProcessCPUFollowsWork(t *testing.T) {
	before, err := processCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	self0 := selfCPU()
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
	}
	after, err := processCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	used, self := after-before, selfCPU()-self0
	if used <= 0 || self <= 0 {
		t.Fatalf("CPU used: /proc %v, getrusage %v; want both above zero after a busy loop", used, self)
	}
	if d := used - self; d > 50*time.Millisecond || d < -50*time.Millisecond {
		t.Errorf("/proc says %v, getrusage %v", used, self)
	}
}
