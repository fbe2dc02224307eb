package gate

import (
	"bytes"
	"fmt"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxBlobLen bounds what ParseOp will read.
const MaxBlobLen = 64 << 10

const maxDepth = 32

// ParseOp parses a received op blob. The blob must be exactly the canonical
// encoding of the op it carries: a different key order, spacing, escape,
// number form or time form, a duplicate or unknown key, or a missing field
// is rejected with ErrBlob. So one op has one byte string, and every parser
// reads the same op out of a signed blob. Numbers in params come out as
// int64.
func ParseOp(blob []byte) (Op, error) {
	if len(blob) > MaxBlobLen {
		return Op{}, fmt.Errorf("%w: larger than %d bytes", ErrBlob, MaxBlobLen)
	}
	r := jsonReader{b: blob}
	top, err := r.object()
	if err == nil && r.i != len(blob) {
		err = r.errorf("data after the op object")
	}
	if err != nil {
		return Op{}, fmt.Errorf("%w: %v", ErrBlob, err)
	}
	var op Op
	var notBefore, expiresAt string
	fields := []struct {
		name string
		dst  *string
	}{
		{"op", &op.Op}, {"host_id", &op.HostID}, {"guest_id", &op.GuestID}, {"nonce", &op.Nonce},
		{"key_id", &op.KeyID}, {"not_before", &notBefore}, {"expires_at", &expiresAt},
	}
	for _, f := range fields {
		v, ok := top[f.name]
		if !ok {
			return Op{}, fieldErr(f.name, "missing")
		}
		if *f.dst, ok = v.(string); !ok {
			return Op{}, fieldErr(f.name, "not a string")
		}
	}
	params, ok := top["params"]
	if !ok {
		return Op{}, fieldErr("params", "missing")
	}
	if op.Params, ok = params.(map[string]any); !ok {
		return Op{}, fieldErr("params", "not an object")
	}
	if len(top) != len(fields)+1 {
		return Op{}, fmt.Errorf("%w: unknown keys in op", ErrBlob)
	}
	if op.NotBefore, err = parseTime("not_before", notBefore); err != nil {
		return Op{}, err
	}
	if op.ExpiresAt, err = parseTime("expires_at", expiresAt); err != nil {
		return Op{}, err
	}
	canon, err := Canonicalize(op)
	if err != nil {
		return Op{}, err
	}
	if !bytes.Equal(canon, blob) {
		i := 0
		for i < len(canon) && i < len(blob) && canon[i] == blob[i] {
			i++
		}
		return Op{}, fmt.Errorf("%w: not in canonical form (first difference at byte %d)", ErrBlob, i)
	}
	return op, nil
}

func parseTime(field, s string) (time.Time, error) {
	t, err := time.Parse(TimeLayout, s)
	if err != nil {
		return time.Time{}, fieldErr(field, "%q is not of the form 2006-01-02T15:04:05Z", s)
	}
	return t, nil
}

// jsonReader reads the JSON of an op blob into plain values (map[string]any,
// []any, string, int64, bool, nil). It takes no whitespace and no
// non-integer numbers, since a canonical blob has neither. It need not be a
// complete JSON parser: ParseOp accepts only a blob that is byte for byte
// the canonical encoding of what was read, so anything misread is refused.
type jsonReader struct {
	b     []byte
	i     int
	depth int
}

func (r *jsonReader) errorf(format string, args ...any) error {
	return fmt.Errorf("at byte %d: %s", r.i, fmt.Sprintf(format, args...))
}

func (r *jsonReader) value() (any, error) {
	if r.i >= len(r.b) {
		return nil, r.errorf("unexpected end")
	}
	switch c := r.b[r.i]; {
	case c == '{':
		return r.object()
	case c == '[':
		return r.array()
	case c == '"':
		return r.str()
	case c == '-' || c >= '0' && c <= '9':
		return r.number()
	}
	for _, lit := range []struct {
		text string
		v    any
	}{{"true", true}, {"false", false}, {"null", nil}} {
		if bytes.HasPrefix(r.b[r.i:], []byte(lit.text)) {
			r.i += len(lit.text)
			return lit.v, nil
		}
	}
	return nil, r.errorf("unexpected %q", r.b[r.i])
}

func (r *jsonReader) enter() error {
	if r.depth++; r.depth > maxDepth {
		return r.errorf("nested deeper than %d", maxDepth)
	}
	return nil
}

func (r *jsonReader) object() (map[string]any, error) {
	if err := r.expect('{'); err != nil {
		return nil, err
	}
	if err := r.enter(); err != nil {
		return nil, err
	}
	defer func() { r.depth-- }()
	m := map[string]any{}
	if r.peek('}') {
		r.i++
		return m, nil
	}
	for {
		if !r.peek('"') {
			return nil, r.errorf("expected a key")
		}
		k, err := r.str()
		if err != nil {
			return nil, err
		}
		if _, dup := m[k]; dup {
			return nil, r.errorf("duplicate key %q", k)
		}
		if err := r.expect(':'); err != nil {
			return nil, err
		}
		if m[k], err = r.value(); err != nil {
			return nil, err
		}
		if r.peek('}') {
			r.i++
			return m, nil
		}
		if err := r.expect(','); err != nil {
			return nil, err
		}
	}
}

func (r *jsonReader) array() ([]any, error) {
	if err := r.expect('['); err != nil {
		return nil, err
	}
	if err := r.enter(); err != nil {
		return nil, err
	}
	defer func() { r.depth-- }()
	a := []any{}
	if r.peek(']') {
		r.i++
		return a, nil
	}
	for {
		v, err := r.value()
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		if r.peek(']') {
			r.i++
			return a, nil
		}
		if err := r.expect(','); err != nil {
			return nil, err
		}
	}
}

func (r *jsonReader) str() (string, error) {
	if err := r.expect('"'); err != nil {
		return "", err
	}
	start := r.i
	for r.i < len(r.b) && r.b[r.i] != '"' && r.b[r.i] != '\\' && r.b[r.i] >= 0x20 {
		r.i++
	}
	if r.peek('"') {
		r.i++
		return string(r.b[start : r.i-1]), nil
	}
	buf := append([]byte(nil), r.b[start:r.i]...)
	for {
		if r.i >= len(r.b) {
			return "", r.errorf("unterminated string")
		}
		c := r.b[r.i]
		switch {
		case c == '"':
			r.i++
			return string(buf), nil
		case c < 0x20:
			return "", r.errorf("control character in string")
		case c != '\\':
			buf = append(buf, c)
			r.i++
			continue
		}
		if r.i+1 >= len(r.b) {
			return "", r.errorf("unterminated escape")
		}
		e := r.b[r.i+1]
		r.i += 2
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			c1, err := r.hex4()
			if err != nil {
				return "", err
			}
			ch := rune(c1)
			if utf16.IsSurrogate(ch) && bytes.HasPrefix(r.b[r.i:], []byte(`\u`)) {
				r.i += 2
				c2, err := r.hex4()
				if err != nil {
					return "", err
				}
				ch = utf16.DecodeRune(ch, rune(c2))
			}
			buf = utf8.AppendRune(buf, ch)
		default:
			return "", r.errorf("invalid escape \\%c", e)
		}
	}
}

func (r *jsonReader) hex4() (uint16, error) {
	if r.i+4 > len(r.b) {
		return 0, r.errorf("short \\u escape")
	}
	v, err := strconv.ParseUint(string(r.b[r.i:r.i+4]), 16, 16)
	if err != nil {
		return 0, r.errorf("invalid \\u escape")
	}
	r.i += 4
	return uint16(v), nil
}

func (r *jsonReader) number() (int64, error) {
	start := r.i
	if r.peek('-') {
		r.i++
	}
	for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
		r.i++
	}
	if r.i < len(r.b) && (r.b[r.i] == '.' || r.b[r.i] == 'e' || r.b[r.i] == 'E') {
		return 0, r.errorf("number is not an integer")
	}
	n, err := strconv.ParseInt(string(r.b[start:r.i]), 10, 64)
	if err != nil {
		return 0, r.errorf("invalid integer %q", r.b[start:r.i])
	}
	return n, nil
}

func (r *jsonReader) peek(c byte) bool { return r.i < len(r.b) && r.b[r.i] == c }

func (r *jsonReader) expect(c byte) error {
	if !r.peek(c) {
		if r.i >= len(r.b) {
			return r.errorf("unexpected end, want %q", c)
		}
		return r.errorf("unexpected %q, want %q", r.b[r.i], c)
	}
	r.i++
	return nil
}
