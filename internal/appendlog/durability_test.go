package appendlog

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// These tests run the log on memFS, whose crash keeps only what was synced,
// so they fail if a sync or directory sync is missing, misplaced, or its
// failure ignored; a SIGKILL test cannot see any of that because the page
// cache outlives the process.

const memPath = "/data/test.log"

// Every acknowledged append survives a power loss at the moment Append
// returns, starting from a log that did not exist. It fails without the
// sync in Append, and without the directory sync after creating the file.
func TestAppendIsDurableWhenItReturns(t *testing.T) {
	for _, ly := range layouts {
		t.Run(ly.name, func(t *testing.T) {
			fsys := newMemFS()
			l, _ := ly.mustOpen(t, fsys, memPath)
			defer l.Close()
			var acked []string
			for i := range 20 {
				name := fmt.Sprint("r", i)
				fsys.takeCalls()
				ly.mustAppend(t, l, name)
				acked = append(acked, name)
				// One write, then the sync, both before Append returned.
				if calls := fsys.takeCalls(); !slices.Equal(calls, []string{"write test.log", "sync test.log"}) {
					t.Fatalf("append %d made calls %q, want one write then one sync", i, calls)
				}
				after := fsys.crash()
				l2, got := ly.mustOpen(t, after, memPath)
				l2.Close()
				if !slices.Equal(got, acked) {
					t.Fatalf("power loss after %d acknowledged appends: replayed %q, want %q", len(acked), got, acked)
				}
			}
		})
	}
}

// A log file that exists but whose name was never made durable (its
// creator died between writing it and syncing the directory) is made
// durable by Open before it acknowledges anything in it.
func TestOpenMakesTheFileNameDurable(t *testing.T) {
	for _, ly := range layouts {
		t.Run(ly.name, func(t *testing.T) {
			fsys := newMemFS()
			fsys.put(memPath, ly.frames(t, "a"))
			delete(fsys.durable, memPath)
			l, _ := ly.mustOpen(t, fsys, memPath)
			ly.mustAppend(t, l, "b")
			l.Close()
			l, got := ly.mustOpen(t, fsys.crash(), memPath)
			l.Close()
			if !slices.Equal(got, []string{"a", "b"}) {
				t.Fatalf("power loss after an acknowledged append: replayed %q, want [a b]", got)
			}
		})
	}
}

// A failed write or sync poisons the log: it refuses every append and
// compaction, without touching the file, until it is reopened. Reopening
// finds every acknowledged record, with or without a crash in between.
func TestFailedWriteOrSyncPoisons(t *testing.T) {
	for _, ly := range layouts {
		for _, op := range []string{"write", "sync"} {
			t.Run(ly.name+"/"+op, func(t *testing.T) {
				fsys := newMemFS()
				l, _ := ly.mustOpen(t, fsys, memPath)
				ly.mustAppend(t, l, "a", "b")
				fsys.fail = failNth(op, "test.log", 1)
				err := l.Append(ly.rec("c"))
				if !errors.Is(err, ErrPoisoned) || !errors.Is(err, errInjected) {
					t.Fatalf("Append with a failing %s = %v, want ErrPoisoned wrapping the cause", op, err)
				}
				fsys.fail = nil
				fsys.takeCalls()
				for name, err := range map[string]error{
					"Err":     l.Err(),
					"Append":  l.Append(ly.rec("d")),
					"Compact": l.Compact(ly.records("a", "b")),
				} {
					if !errors.Is(err, ErrPoisoned) {
						t.Fatalf("%s after a failed %s = %v, want ErrPoisoned", name, op, err)
					}
				}
				if calls := fsys.takeCalls(); len(calls) != 0 {
					t.Fatalf("a poisoned log still touched the file system: %q", calls)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}

				// Power loss: only the acknowledged records are there.
				after := fsys.crash()
				l2, got := ly.mustOpen(t, after, memPath)
				if !slices.Equal(got, []string{"a", "b"}) {
					t.Fatalf("after a crash replayed %q, want [a b]", got)
				}
				ly.mustAppend(t, l2, "e")
				l2.Close()

				// No power loss: the unacknowledged record may be there (a
				// failed sync left it in the page cache) or not (a failed
				// write left half a frame, which is a torn tail).
				l3, got := ly.mustOpen(t, fsys, memPath)
				defer l3.Close()
				if !slices.Equal(got, []string{"a", "b"}) && !slices.Equal(got, []string{"a", "b", "c"}) {
					t.Fatalf("reopen without a crash replayed %q, want [a b] or [a b c]", got)
				}
				ly.mustAppend(t, l3, "f")
			})
		}
	}
}

// A compaction that returned is durable, and so is every append after it.
// It fails without the sync of the temporary file (the renamed file would
// come back empty) or without the directory sync after the rename (the
// old file would come back, without the appends that followed).
func TestCompactIsDurableWhenItReturns(t *testing.T) {
	for _, ly := range layouts {
		t.Run(ly.name, func(t *testing.T) {
			fsys := newMemFS()
			l, _ := ly.mustOpen(t, fsys, memPath)
			defer l.Close()
			ly.mustAppend(t, l, "a", "b", "c", "d")
			if err := l.Compact(ly.records("b", "d")); err != nil {
				t.Fatal(err)
			}
			if l.Records() != 2 {
				t.Fatalf("Records after compaction = %d, want 2", l.Records())
			}
			l2, got := ly.mustOpen(t, fsys.crash(), memPath)
			l2.Close()
			if !slices.Equal(got, []string{"b", "d"}) {
				t.Fatalf("power loss right after compaction: replayed %q, want [b d]", got)
			}
			ly.mustAppend(t, l, "e")
			l2, got = ly.mustOpen(t, fsys.crash(), memPath)
			l2.Close()
			if !slices.Equal(got, []string{"b", "d", "e"}) {
				t.Fatalf("power loss after an append that followed compaction: replayed %q, want [b d e]", got)
			}
			if _, ok := fsys.content(memPath + ".compact"); ok {
				t.Fatal("the temporary file outlived a successful compaction")
			}
		})
	}
}

// A compaction that fails at any file operation before its rename leaves
// the old log in place, byte for byte, and the log usable. One that fails
// only at the directory sync after the rename poisons the log; then either
// file, the one a crash brings back or the one in place, holds every live
// record.
func TestCompactFailureKeepsOldLog(t *testing.T) {
	ly := layouts[0]
	live := []string{"b", "d"}
	// The operations of one compaction, in order, from a run without faults.
	fsys := newMemFS()
	l, _ := ly.mustOpen(t, fsys, memPath)
	ly.mustAppend(t, l, "a", "b", "c", "d")
	fsys.takeCalls()
	if err := l.Compact(ly.records(live...)); err != nil {
		t.Fatal(err)
	}
	steps := fsys.takeCalls()
	l.Close()
	want := []string{"open test.log.compact", "write test.log.compact", "sync test.log.compact", "rename test.log.compact", "syncdir data"}
	if !slices.Equal(steps, want) {
		t.Fatalf("compaction made calls %q, want %q", steps, want)
	}

	for i, step := range steps {
		op, name, _ := strings.Cut(step, " ")
		t.Run(step, func(t *testing.T) {
			for _, ly := range layouts {
				fsys := newMemFS()
				l, _ := ly.mustOpen(t, fsys, memPath)
				ly.mustAppend(t, l, "a", "b", "c", "d")
				old, _ := fsys.content(memPath)
				fsys.fail = failNth(op, name, 1)
				err := l.Compact(ly.records(live...))
				fsys.fail = nil
				if !errors.Is(err, errInjected) {
					t.Fatalf("%s: Compact = %v, want the injected error", ly.name, err)
				}
				if i < len(steps)-1 {
					if l.Err() != nil {
						t.Fatalf("%s: a compaction that failed before its rename poisoned the log: %v", ly.name, l.Err())
					}
					if now, _ := fsys.content(memPath); !bytes.Equal(now, old) {
						t.Fatalf("%s: the old log changed", ly.name)
					}
					if _, ok := fsys.content(memPath + ".compact"); ok {
						t.Fatalf("%s: the temporary file was left behind", ly.name)
					}
					ly.mustAppend(t, l, "e")
					l2, got := ly.mustOpen(t, fsys.crash(), memPath)
					l2.Close()
					if w := []string{"a", "b", "c", "d", "e"}; !slices.Equal(got, w) {
						t.Fatalf("%s: power loss after the failed compaction and an append: replayed %q, want %q", ly.name, got, w)
					}
					// A retry succeeds.
					if err := l.Compact(ly.records("b", "d", "e")); err != nil {
						t.Fatalf("%s: compaction retry: %v", ly.name, err)
					}
					l.Close()
					continue
				}
				if !errors.Is(err, ErrPoisoned) || !errors.Is(l.Err(), ErrPoisoned) {
					t.Fatalf("%s: failed directory sync: Compact = %v, Err = %v, want ErrPoisoned", ly.name, err, l.Err())
				}
				if err := l.Append(ly.rec("e")); !errors.Is(err, ErrPoisoned) {
					t.Fatalf("%s: Append after a failed directory sync = %v, want ErrPoisoned", ly.name, err)
				}
				l.Close()
				l2, got := ly.mustOpen(t, fsys.crash(), memPath)
				l2.Close()
				if w := []string{"a", "b", "c", "d"}; !slices.Equal(got, w) {
					t.Fatalf("%s: power loss: replayed %q, want the old log %q", ly.name, got, w)
				}
				l2, got = ly.mustOpen(t, fsys, memPath)
				l2.Close()
				if !slices.Equal(got, live) {
					t.Fatalf("%s: reopen without a crash: replayed %q, want the compacted log %q", ly.name, got, live)
				}
			}
		})
	}
}

// Open fails cleanly at every file operation it makes: it returns the
// error, releases the lock and leaves no acknowledged record behind.
func TestOpenFailureAtEveryStep(t *testing.T) {
	for _, ly := range layouts {
		t.Run(ly.name, func(t *testing.T) {
			// A log with a torn tail, so Open truncates and syncs too.
			file := cat(ly.frames(t, "a", "b"), ly.frame(t, "c")[:3])
			fsys := newMemFS()
			fsys.put(memPath, file)
			l, _ := ly.mustOpen(t, fsys, memPath)
			l.Close()
			steps := fsys.takeCalls()
			if !slices.Contains(steps, "truncate test.log") || !slices.Contains(steps, "sync test.log") {
				t.Fatalf("open of a torn log made calls %q, want a truncate and a sync", steps)
			}
			for _, step := range steps {
				op, name, _ := strings.Cut(step, " ")
				fsys := newMemFS()
				fsys.put(memPath, file)
				fsys.fail = failNth(op, name, 1)
				if l, _, err := ly.open(t, fsys, memPath); !errors.Is(err, errInjected) {
					if l != nil {
						l.Close()
					}
					t.Fatalf("open failing at %q = %v, want the injected error", step, err)
				}
				fsys.fail = nil
				l, got := ly.mustOpen(t, fsys, memPath)
				l.Close()
				if !slices.Equal(got, []string{"a", "b"}) {
					t.Fatalf("after an open that failed at %q: replayed %q", step, got)
				}
			}
		})
	}
}
