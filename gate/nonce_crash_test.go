package gate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	crashChildEnv   = "FELHOM_GATE_CRASH_CHILD"
	crashLogEnv     = "FELHOM_GATE_CRASH_LOG"
	crashChildCount = 40
)

// crashChild appends nonces until it is killed, printing each one only
// after Use has returned, i.e. after it was fsync'd.
func crashChild() {
	s, err := OpenFileNonceStore(os.Getenv(crashLogEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(3)
	}
	prefix := os.Getenv(crashChildEnv)
	exp := time.Now().Add(time.Hour)
	for i := 0; ; i++ {
		n := fmt.Sprintf("%s-%d", prefix, i)
		if err := s.Use(context.Background(), n, exp); err != nil {
			fmt.Fprintln(os.Stderr, "use:", err)
			os.Exit(4)
		}
		os.Stdout.WriteString(n + "\n")
	}
}

func TestFileNonceStoreSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns and kills processes")
	}
	path := filepath.Join(t.TempDir(), "nonces.log")
	var acked []string
	for round := 0; round < crashChildCount; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+fmt.Sprint("r", round), crashLogEnv+"="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan []string)
		go func() {
			var got []string
			// ReadString leaves out a last line cut short by the kill.
			r := bufio.NewReader(out)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					break
				}
				got = append(got, strings.TrimSuffix(line, "\n"))
			}
			lines <- got
		}()
		time.Sleep(time.Duration(5+rand.IntN(60)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		got := <-lines
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child ended with %v, not by SIGKILL; stderr:\n%s", round, err, stderr.String())
		}
		acked = append(acked, got...)

		s, err := OpenFileNonceStore(path)
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		for _, n := range acked {
			if err := s.Use(context.Background(), n, time.Now().Add(time.Hour)); !errors.Is(err, ErrReplay) {
				s.Close()
				t.Fatalf("round %d: acknowledged nonce %s was lost: Use = %v", round, n, err)
			}
		}
		if s.Len() < len(acked) {
			t.Fatalf("round %d: store holds %d nonces, %d were acknowledged", round, s.Len(), len(acked))
		}
		s.Close()
	}
	if len(acked) == 0 {
		t.Fatal("no child ever acknowledged a nonce; the test proved nothing")
	}
	t.Logf("%d kills, %d acknowledged nonces all still rejected", crashChildCount, len(acked))
}

// A store held open by another live process cannot be opened.
func TestFileNonceStoreLockedAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nonces.log")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"=lock", crashLogEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	// The first acknowledged nonce means the child holds the store.
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("child acknowledged nothing: %v", err)
	}
	if s, err := OpenFileNonceStore(path); !errors.Is(err, ErrNonceLogLocked) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("open while another process holds the store = %v, want ErrNonceLogLocked", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	s, err := OpenFileNonceStore(path)
	if err != nil {
		t.Fatalf("open after the holder died: %v", err)
	}
	s.Close()
}
