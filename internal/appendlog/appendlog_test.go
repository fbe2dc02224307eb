package appendlog

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const testMagic = "FLHMTST1"

// layout is one frame layout with a record codec for tests: a test record
// carries a name, and rec/name convert between the two.
type layout struct {
	name string
	opts Options
	rec  func(name string) []byte
	// maxName is the longest name whose record fits.
	maxName int
}

// nonceShaped mirrors the nonce store's record: uint8 n | n bytes | 8 bytes.
func nonceShapedLen(b []byte) (int, bool) {
	if len(b) < 1 || b[0] == 0 {
		return 0, false
	}
	return 1 + int(b[0]) + 8, true
}

var layouts = []layout{
	{
		name:    "length-prefixed",
		opts:    Options{MaxRecord: 300},
		rec:     func(name string) []byte { return []byte(name) },
		maxName: 300,
	},
	{
		name: "self-delimiting",
		opts: Options{RecordLen: nonceShapedLen, MaxRecord: 1 + 255 + 8},
		rec: func(name string) []byte {
			b := append([]byte{byte(len(name))}, name...)
			return binary.BigEndian.AppendUint64(b, 1893553445)
		},
		maxName: 255,
	},
}

func (ly layout) nameOf(rec []byte) string {
	if ly.opts.RecordLen == nil {
		return string(rec)
	}
	return string(rec[1 : 1+int(rec[0])])
}

// frames is a whole log file holding the records of names.
func (ly layout) frames(t testing.TB, names ...string) []byte {
	t.Helper()
	fr := newFraming(ly.opts)
	b := []byte(testMagic)
	for _, n := range names {
		var err error
		if b, err = fr.appendFrame(b, ly.rec(n)); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func (ly layout) frame(t testing.TB, name string) []byte {
	t.Helper()
	return ly.frames(t, name)[len(testMagic):]
}

// open opens the log at path with fsys (the OS if nil) and returns it with
// the names it replayed.
func (ly layout) open(t testing.TB, fsys FS, path string) (*Log, []string, error) {
	t.Helper()
	var names []string
	opts := ly.opts
	opts.FS = fsys
	l, err := Open(path, testMagic, opts, func(rec []byte) error {
		names = append(names, ly.nameOf(rec))
		return nil
	})
	return l, names, err
}

func (ly layout) mustOpen(t testing.TB, fsys FS, path string) (*Log, []string) {
	t.Helper()
	l, names, err := ly.open(t, fsys, path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return l, names
}

func (ly layout) mustAppend(t testing.TB, l *Log, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := l.Append(ly.rec(n)); err != nil {
			t.Fatalf("append %q: %v", n, err)
		}
	}
}

func (ly layout) records(names ...string) func(func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for _, n := range names {
			if !yield(ly.rec(n)) {
				return
			}
		}
	}
}

func TestReopenReplaysEveryRecordInOrder(t *testing.T) {
	for _, ly := range layouts {
		t.Run(ly.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "test.log")
			l, got := ly.mustOpen(t, nil, path)
			if len(got) != 0 || l.Records() != 0 || l.Size() != int64(len(testMagic)) {
				t.Fatalf("new log: replayed %q, %d records, %d bytes", got, l.Records(), l.Size())
			}
			want := []string{"a", "bb", strings.Repeat("x", ly.maxName), "a"}
			ly.mustAppend(t, l, want...)
			if l.Records() != len(want) {
				t.Fatalf("Records = %d, want %d", l.Records(), len(want))
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			file, _ := os.ReadFile(path)
			if !bytes.Equal(file, ly.frames(t, want...)) {
				t.Fatalf("file is %d bytes %.80q, want %.80q", len(file), file, ly.frames(t, want...))
			}
			l, got = ly.mustOpen(t, nil, path)
			defer l.Close()
			if !slices.Equal(got, want) || l.Records() != len(want) || l.Size() != int64(len(file)) {
				t.Fatalf("reopen: replayed %q (%d records, %d bytes), want %q", got, l.Records(), l.Size(), want)
			}
		})
	}
}

// Open keeps every intact record, truncates what one interrupted append can
// leave and refuses anything else.
func TestOpenTornTailOrCorrupt(t *testing.T) {
	for _, ly := range layouts {
		t.Run(ly.name, func(t *testing.T) {
			body := ly.frames(t, "aa", "bb")
			last := ly.frame(t, "cc")
			mid := len(testMagic) + len(ly.frame(t, "aa")) + 2 // inside "bb"'s frame
			flipped := slices.Clone(body)
			flipped[mid] ^= 0x40
			tests := []struct {
				name    string
				file    []byte
				wantErr error
				want    []string
			}{
				{"clean", cat(body, last), nil, []string{"aa", "bb", "cc"}},
				{"empty file", nil, nil, nil},
				{"part of the magic", []byte(testMagic[:3]), nil, nil},
				{"zeros where the magic should be", make([]byte, len(testMagic)), nil, nil},
				{"zeros longer than the magic", make([]byte, 64), ErrCorrupt, nil},
				{"final frame with a bad checksum", cat(body, flip(last, len(last)-1)), nil, []string{"aa", "bb"}},
				{"zero-filled space after the last frame", cat(body, make([]byte, 4096)), nil, []string{"aa", "bb"}},
				{"torn frame then zero fill", cat(body, last[:len(last)-2], make([]byte, 4096)), nil, []string{"aa", "bb"}},
				{"torn frame with a zeroed middle", cat(body, last[:2], make([]byte, 3), last[5:]), nil, []string{"aa", "bb"}},
				{"bad magic", cat([]byte("FLHMXXX1"), body[len(testMagic):]), ErrCorrupt, nil},
				{"magic of another log", cat([]byte("FLHMNCE1"), body[len(testMagic):]), ErrCorrupt, nil},
				{"short file that is not the magic", []byte("FLX"), ErrCorrupt, nil},
				{"damage before an intact frame", cat(body, []byte{9, 9, 9}, last), ErrCorrupt, nil},
				{"bit flip in a middle frame", cat(flipped, last), ErrCorrupt, nil},
				{"bit flip in the final frame, then zero fill", cat(flipped, make([]byte, 4096)), nil, []string{"aa"}},
				{"garbage past one frame", cat(body, []byte("garbage"), make([]byte, 600), []byte("x")), ErrCorrupt, nil},
			}
			// An append cut short at every byte leaves the earlier records.
			for cut := 1; cut < len(last); cut++ {
				tests = append(tests, struct {
					name    string
					file    []byte
					wantErr error
					want    []string
				}{fmt.Sprintf("frame cut after %d bytes", cut), cat(body, last[:cut]), nil, []string{"aa", "bb"}})
			}
			for _, tt := range tests {
				path := filepath.Join(t.TempDir(), "test.log")
				if err := os.WriteFile(path, tt.file, 0o600); err != nil {
					t.Fatal(err)
				}
				l, got, err := ly.open(t, nil, path)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("%s: open = %v, want %v", tt.name, err, tt.wantErr)
					}
					if file, _ := os.ReadFile(path); !bytes.Equal(file, tt.file) {
						t.Fatalf("%s: a refused open changed the file", tt.name)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: open: %v", tt.name, err)
				}
				if !slices.Equal(got, tt.want) {
					t.Fatalf("%s: replayed %q, want %q", tt.name, got, tt.want)
				}
				// The tail is gone: the next append lands right after the
				// last intact frame and survives a reopen.
				ly.mustAppend(t, l, "dd")
				l.Close()
				want := append(slices.Clone(tt.want), "dd")
				if file, _ := os.ReadFile(path); !bytes.Equal(file, ly.frames(t, want...)) {
					t.Fatalf("%s: file after append is %d bytes %.80q, want %d bytes %.80q", tt.name, len(file), file, len(ly.frames(t, want...)), ly.frames(t, want...))
				}
				l, got = ly.mustOpen(t, nil, path)
				l.Close()
				if !slices.Equal(got, want) {
					t.Fatalf("%s: after append and reopen replayed %q, want %q", tt.name, got, want)
				}
			}
		})
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func flip(b []byte, i int) []byte {
	b = slices.Clone(b)
	b[i] ^= 1
	return b
}

func TestLockAndClose(t *testing.T) {
	ly := layouts[0]
	path := filepath.Join(t.TempDir(), "test.log")
	l, _ := ly.mustOpen(t, nil, path)
	if _, _, err := ly.open(t, nil, path); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open = %v, want ErrLocked", err)
	}
	ly.mustAppend(t, l, "a")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, err := range map[string]error{
		"Append":  l.Append(ly.rec("b")),
		"Compact": l.Compact(ly.records("a")),
		"Err":     l.Err(),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	l, got := ly.mustOpen(t, nil, path)
	l.Close()
	if !slices.Equal(got, []string{"a"}) {
		t.Fatalf("replayed %q", got)
	}
}

func TestAppendRefusesUnframeableRecords(t *testing.T) {
	for _, ly := range layouts {
		t.Run(ly.name, func(t *testing.T) {
			l, _ := ly.mustOpen(t, nil, filepath.Join(t.TempDir(), "test.log"))
			defer l.Close()
			bad := [][]byte{nil, {}, make([]byte, ly.opts.MaxRecord+1)}
			if ly.opts.RecordLen != nil {
				bad = append(bad, append(ly.rec("abc"), 0), ly.rec("abc")[:5], []byte{0, 1, 2, 3, 4, 5, 6, 7, 8})
			}
			for _, rec := range bad {
				if err := l.Append(rec); !errors.Is(err, ErrRecord) {
					t.Fatalf("Append(%q) = %v, want ErrRecord", rec, err)
				}
				if err := l.Compact(func(yield func([]byte) bool) { yield(rec) }); !errors.Is(err, ErrRecord) {
					t.Fatalf("Compact with %q = %v, want ErrRecord", rec, err)
				}
			}
			if l.Err() != nil || l.Records() != 0 || l.Size() != int64(len(testMagic)) {
				t.Fatalf("a refused record changed the log: err %v, %d records, %d bytes", l.Err(), l.Records(), l.Size())
			}
			ly.mustAppend(t, l, "ok")
		})
	}
}

func TestOpenArguments(t *testing.T) {
	path := filepath.Join(t.TempDir(), "test.log")
	for _, tt := range []struct {
		magic string
		opts  Options
	}{
		{"", Options{}},
		{"\x00\x00", Options{}},
		{testMagic, Options{MaxRecord: -1}},
		{testMagic, Options{MaxRecord: maxMaxRecord + 1}},
	} {
		if l, err := Open(path, tt.magic, tt.opts, nil); err == nil {
			l.Close()
			t.Fatalf("Open(%q, %+v) succeeded", tt.magic, tt.opts)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused Open created the log: %v", err)
	}
}

// An error from the owner's replay callback aborts Open, comes back
// wrapped, and leaves the log closed and unlocked.
func TestReplayErrorAbortsOpen(t *testing.T) {
	ly := layouts[0]
	path := filepath.Join(t.TempDir(), "test.log")
	if err := os.WriteFile(path, ly.frames(t, "a", "b"), 0o600); err != nil {
		t.Fatal(err)
	}
	errOwner := errors.New("unknown record")
	_, err := Open(path, testMagic, ly.opts, func(rec []byte) error {
		if string(rec) == "b" {
			return errOwner
		}
		return nil
	})
	if !errors.Is(err, errOwner) {
		t.Fatalf("Open = %v, want the callback's error", err)
	}
	l, got := ly.mustOpen(t, nil, path)
	l.Close()
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("replayed %q", got)
	}
}

// The provenance ledger's files, written before this package existed, are
// length-prefixed logs: testdata/ledger-v1.log was written by that code.
func TestReadsLedgerFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.log")
	golden, err := os.ReadFile("testdata/ledger-v1.log")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, golden, 0o600); err != nil {
		t.Fatal(err)
	}
	var ops []string
	l, err := Open(path, "FLHMLDG1", Options{}, func(rec []byte) error {
		var r struct{ Op string }
		if err := json.Unmarshal(rec, &r); err != nil {
			return err
		}
		ops = append(ops, r.Op)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	want := []string{"create_begin", "create_confirm", "admitted", "admission_spent", "removed"}
	if !slices.Equal(ops, want) || l.Size() != int64(len(golden)) {
		t.Fatalf("replayed %q (%d bytes), want %q (%d bytes)", ops, l.Size(), want, len(golden))
	}
}
