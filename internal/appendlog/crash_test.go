package appendlog

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash test re-executes the test binary as a child that appends
// records until it is killed. The child reports each record on stdout with
// one write, only after Append returned, so the parent knows exactly which
// records were acknowledged: it reads the pipe to its end after the kill
// and nothing is inferred from timing.

const (
	crashChildEnv  = "APPENDLOG_CRASH_CHILD" // index in layouts
	crashLogEnv    = "APPENDLOG_CRASH_LOG"   // path of the log
	crashRoundEnv  = "APPENDLOG_CRASH_ROUND" // prefix of the record names
	crashRounds    = 20                      // kills per layout
	crashMaxAcks   = 300                     // the kill comes after 1..crashMaxAcks acknowledgements
	crashCompactAt = 37                      // the child compacts every this many appends
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild()
		return
	}
	os.Exit(m.Run())
}

// crashChild opens the log, appends "<round>-<i>" for i = 0, 1, ... and
// every crashCompactAt appends compacts the log to all its records, so
// kills land in compactions too.
func crashChild() {
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
		os.Exit(3)
	}
	li, err := strconv.Atoi(os.Getenv(crashChildEnv))
	if err != nil || li < 0 || li >= len(layouts) {
		fail("bad layout %q", os.Getenv(crashChildEnv))
	}
	ly, path, round := layouts[li], os.Getenv(crashLogEnv), os.Getenv(crashRoundEnv)
	var all [][]byte
	l, err := Open(path, testMagic, ly.opts, func(rec []byte) error {
		all = append(all, slices.Clone(rec))
		return nil
	})
	if err != nil {
		fail("open: %v", err)
	}
	for i := 0; ; i++ {
		if i%crashCompactAt == crashCompactAt-1 {
			if err := l.Compact(slices.Values(all)); err != nil {
				fail("compact: %v", err)
			}
		}
		name := round + "-" + strconv.Itoa(i)
		rec := ly.rec(name)
		if err := l.Append(rec); err != nil {
			fail("append: %v", err)
		}
		all = append(all, rec)
		// One write of less than PIPE_BUF bytes: the line is in the pipe
		// whole or not at all.
		if _, err := os.Stdout.WriteString(name + "\n"); err != nil {
			os.Exit(4)
		}
	}
}

// Every acknowledged record survives SIGKILL, at whatever point of an
// append or a compaction it lands, and a live child's lock keeps the log
// from being opened.
func TestSIGKILLKeepsAcknowledgedRecords(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns and kills processes")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("kill points from seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	for li, ly := range layouts {
		t.Run(ly.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "crash.log")
			var acked []string // every record the log must hold, in order
			kills, unreported := 0, 0
			for round := range crashRounds {
				r := "r" + strconv.Itoa(round)
				got, next := runAndKill(t, li, path, r, 1+rng.IntN(crashMaxAcks))
				for i, name := range got {
					if want := r + "-" + strconv.Itoa(i); name != want {
						t.Fatalf("round %d: child acknowledged %q, want %q", round, name, want)
					}
				}
				acked = append(acked, got...)

				l, replayed, err := ly.open(t, nil, path)
				if err != nil {
					t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
				}
				l.Close()
				// The child may have finished one more append without
				// reporting it: that one, and nothing else, may follow.
				extra := replayed[min(len(acked), len(replayed)):]
				if !slices.Equal(replayed[:min(len(acked), len(replayed))], acked) || len(replayed) < len(acked) ||
					len(extra) > 1 || len(extra) == 1 && extra[0] != next {
					t.Fatalf("round %d: log holds %d records (last %q), want the %d acknowledged (last %q) and at most %q after them",
						round, len(replayed), lastOf(replayed), len(acked), lastOf(acked), next)
				}
				unreported += len(extra)
				acked = replayed
				kills++
			}
			t.Logf("%d kills; all %d acknowledged records survived; %d kills fell between an append and its report", kills, len(acked), unreported)
		})
	}
}

// runAndKill starts a child on the log, checks the log is locked once the
// child acknowledged a record, SIGKILLs it after acks acknowledgements and
// returns every record it acknowledged and the one it would have appended
// next.
func runAndKill(t *testing.T, li int, path, round string, acks int) (acked []string, next string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+strconv.Itoa(li), crashLogEnv+"="+path, crashRoundEnv+"="+round)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	readLine := func() (string, bool) {
		// A line without its newline cannot happen (one write per line),
		// but would not be an acknowledgement.
		line, err := r.ReadString('\n')
		return strings.TrimSuffix(line, "\n"), err == nil
	}
	for len(acked) < acks {
		line, ok := readLine()
		if !ok {
			cmd.Wait()
			t.Fatalf("child stopped after %d acknowledgements: %s", len(acked), stderr.String())
		}
		acked = append(acked, line)
		if len(acked) == 1 {
			if l, _, err := layouts[li].open(t, nil, path); !errors.Is(err, ErrLocked) {
				if l != nil {
					l.Close()
				}
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("open while the child holds the log = %v, want ErrLocked", err)
			}
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The pipe keeps what the child wrote before it died.
	for {
		line, ok := readLine()
		if !ok {
			break
		}
		acked = append(acked, line)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, not by SIGKILL: %s", err, stderr.String())
	}
	return acked, round + "-" + strconv.Itoa(len(acked))
}

func lastOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}
