package appendlog

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// FuzzReplay opens arbitrary file content as a log of either layout. Open
// must either refuse it as ErrCorrupt or keep exactly a prefix of it made of
// the magic and the frames of the records it replayed, cutting only a tail
// that one interrupted append can leave; a reopen must replay the same
// records, and an append must land after them.
func FuzzReplay(f *testing.F) {
	for _, ly := range layouts {
		sd := ly.opts.RecordLen != nil
		whole := ly.frames(f, "a", "bb", "ccc")
		f.Add(whole, sd)
		f.Add(whole[:len(whole)-3], sd)
		f.Add(cat(whole, make([]byte, 40)), sd)
		f.Add(flip(whole, len(testMagic)+3), sd)
		f.Add([]byte(testMagic[:5]), sd)
	}
	f.Fuzz(func(t *testing.T, data []byte, selfDelimiting bool) {
		ly := layouts[0]
		if selfDelimiting {
			ly = layouts[1]
		}
		fsys := newMemFS()
		fsys.put(memPath, data)
		var recs [][]byte
		opts := ly.opts
		opts.FS = fsys
		l, err := Open(memPath, testMagic, opts, func(rec []byte) error {
			recs = append(recs, slices.Clone(rec))
			return nil
		})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want nil or ErrCorrupt", err)
			}
			if now, _ := fsys.content(memPath); !bytes.Equal(now, data) {
				t.Fatal("a refused Open changed the file")
			}
			return
		}
		fr := newFraming(ly.opts)
		kept := []byte(testMagic)
		for _, rec := range recs {
			if kept, err = fr.appendFrame(kept, rec); err != nil {
				t.Fatalf("replayed a record that cannot be framed: %v", err)
			}
		}
		now, _ := fsys.content(memPath)
		if !bytes.Equal(now, kept) {
			t.Fatalf("after Open the file is %q, want magic and the replayed frames %q", now, kept)
		}
		if bytes.HasPrefix(data, []byte(testMagic)) {
			if !bytes.HasPrefix(data, kept) {
				t.Fatal("Open replayed records that are not a prefix of the file")
			}
			if cut := data[len(kept):]; fr.tornTail(cut) != nil {
				t.Fatalf("Open cut %d bytes that are not a torn tail", len(cut))
			}
		} else if len(recs) > 0 || !unwrittenHeader(data, testMagic) {
			t.Fatal("Open accepted a file without the magic")
		}
		if err := l.Append(ly.rec("new")); err != nil {
			t.Fatal(err)
		}
		l.Close()

		var again [][]byte
		l, err = Open(memPath, testMagic, opts, func(rec []byte) error {
			again = append(again, slices.Clone(rec))
			return nil
		})
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		l.Close()
		if want := append(recs, ly.rec("new")); !slices.EqualFunc(again, want, bytes.Equal) {
			t.Fatalf("reopen replayed %q, want %q", again, want)
		}
	})
}
