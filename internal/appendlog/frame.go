package appendlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// framing is one of the two frame layouts of the package doc.
type framing struct {
	recordLen func([]byte) (int, bool) // nil: length-prefixed
	max       int                      // largest record
}

const (
	prefixLen  = 8 // length-prefixed: uint32 length + uint32 CRC
	trailerLen = 4 // self-delimiting: uint32 CRC
)

func newFraming(o Options) framing {
	fr := framing{recordLen: o.RecordLen, max: o.MaxRecord}
	if fr.max == 0 {
		fr.max = DefaultMaxRecord
	}
	return fr
}

// maxFrame is the longest frame, hence the most a torn append can leave.
func (fr framing) maxFrame() int {
	if fr.recordLen == nil {
		return prefixLen + fr.max
	}
	return fr.max + trailerLen
}

// appendFrame appends the frame of rec to dst.
func (fr framing) appendFrame(dst, rec []byte) ([]byte, error) {
	if len(rec) == 0 || len(rec) > fr.max {
		return dst, fmt.Errorf("%w: %d bytes, want 1..%d", ErrRecord, len(rec), fr.max)
	}
	sum := crc32.Checksum(rec, castagnoli)
	if fr.recordLen == nil {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(rec)))
		dst = binary.BigEndian.AppendUint32(dst, sum)
		return append(dst, rec...), nil
	}
	// A record that does not read back at its own length would make the
	// frame unreadable, and everything appended after it corrupt.
	if n, ok := fr.recordLen(rec); !ok || n != len(rec) {
		return dst, fmt.Errorf("%w: %d bytes, but its own length reads as %d (ok=%v)", ErrRecord, len(rec), n, ok)
	}
	dst = append(dst, rec...)
	return binary.BigEndian.AppendUint32(dst, sum), nil
}

// parse returns the record and the length of the intact frame at the start
// of b, or ok false if no intact frame starts there.
func (fr framing) parse(b []byte) (rec []byte, n int, ok bool) {
	if fr.recordLen == nil {
		if len(b) < prefixLen {
			return nil, 0, false
		}
		l := binary.BigEndian.Uint32(b)
		if l == 0 || l > uint32(fr.max) || uint64(len(b)-prefixLen) < uint64(l) {
			return nil, 0, false
		}
		rec = b[prefixLen : prefixLen+int(l)]
		if crc32.Checksum(rec, castagnoli) != binary.BigEndian.Uint32(b[4:]) {
			return nil, 0, false
		}
		return rec, prefixLen + int(l), true
	}
	l, ok := fr.recordLen(b[:min(len(b), fr.max)])
	if !ok || l <= 0 || l > fr.max || len(b)-trailerLen < l {
		return nil, 0, false
	}
	rec = b[:l]
	if crc32.Checksum(rec, castagnoli) != binary.BigEndian.Uint32(b[l:]) {
		return nil, 0, false
	}
	return rec, l + trailerLen, true
}

// replay passes every intact record in data from off on to fn (if not nil)
// and returns the end of the last intact frame and the number of frames.
// What follows is a torn tail for the caller to truncate, or ErrCorrupt.
func (fr framing) replay(data []byte, off int, fn func([]byte) error) (int64, int, error) {
	n := 0
	for off < len(data) {
		rec, size, ok := fr.parse(data[off:])
		if !ok {
			if err := fr.tornTail(data[off:]); err != nil {
				return 0, 0, fmt.Errorf("%w: damage at offset %d: %v", ErrCorrupt, off, err)
			}
			break
		}
		if fn != nil {
			if err := fn(rec); err != nil {
				return 0, 0, fmt.Errorf("appendlog: record at offset %d: %w", off, err)
			}
		}
		off += size
		n++
	}
	return int64(off), n, nil
}

// tornTail returns nil if b, which starts where no intact frame does, is
// what one interrupted append can leave (see the package doc), and else
// says why not.
func (fr framing) tornTail(b []byte) error {
	last := len(b) - 1
	for last >= 0 && b[last] == 0 {
		last--
	}
	if last < 0 {
		return nil
	}
	if last >= fr.maxFrame() {
		return errors.New("non-zero bytes extend past the longest frame")
	}
	// Beyond last there are only zeros, and no frame of zeros is intact:
	// a length-prefixed one would have length 0, and the CRC-32C of 1 to
	// 2^20 zero bytes is never 0.
	for i := 1; i <= last; i++ {
		if _, _, ok := fr.parse(b[i:]); ok {
			return fmt.Errorf("an intact frame starts %d bytes later", i)
		}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
