package gate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// Op is the operation an operator signs. Its canonical JSON encoding
// (Canonicalize) is the exact byte string covered by the signature.
type Op struct {
	Op        string         `json:"op"`
	HostID    string         `json:"host_id"`
	GuestID   string         `json:"guest_id"`
	Params    map[string]any `json:"params"`
	Nonce     string         `json:"nonce"`
	NotBefore time.Time      `json:"not_before"`
	ExpiresAt time.Time      `json:"expires_at"`
	KeyID     string         `json:"key_id"`
}

// TimeLayout is the one form of a time in a canonical op: RFC 3339, UTC,
// whole seconds.
const TimeLayout = "2006-01-02T15:04:05Z"

// Limits of the op fields. MaxNonceLen keeps a nonce store record small
// and bounded.
const (
	MaxNonceLen = 255
	maxIDLen    = 255
	// maxSafeInt is 2^53-1: every integer up to it has one exact IEEE 754
	// double, so JavaScript and other JSON producers agree on its digits.
	maxSafeInt = 1<<53 - 1
)

// FieldError reports a malformed op field. It wraps ErrBlob.
type FieldError struct {
	Field  string // JSON path, e.g. "params.disks[1].size"
	Reason string
}

func (e *FieldError) Error() string { return "malformed op: " + e.Field + ": " + e.Reason }
func (e *FieldError) Unwrap() error { return ErrBlob }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Canonicalize validates op and returns its canonical encoding, the bytes an
// operator signs. See the package documentation for the form.
func Canonicalize(op Op) ([]byte, error) {
	if err := validateOp(&op); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 256)
	// Keys in sorted order, written out once here rather than sorted per call.
	b = append(b, `{"expires_at":`...)
	b = appendTime(b, op.ExpiresAt)
	b = append(b, `,"guest_id":`...)
	b = appendString(b, op.GuestID)
	b = append(b, `,"host_id":`...)
	b = appendString(b, op.HostID)
	b = append(b, `,"key_id":`...)
	b = appendString(b, op.KeyID)
	b = append(b, `,"nonce":`...)
	b = appendString(b, op.Nonce)
	b = append(b, `,"not_before":`...)
	b = appendTime(b, op.NotBefore)
	b = append(b, `,"op":`...)
	b = appendString(b, op.Op)
	b = append(b, `,"params":`...)
	var err error
	if op.Params == nil {
		b = append(b, "{}"...)
	} else if b, err = appendObject(b, op.Params, "params"); err != nil {
		return nil, err
	}
	return append(b, '}'), nil
}

// CanonicalJSON returns the canonical encoding of any JSON-encodable value
// (an Op is encoded by Canonicalize). Values that are not one of the plain
// JSON kinds are first encoded with encoding/json.
func CanonicalJSON(v any) ([]byte, error) {
	switch x := v.(type) {
	case Op:
		return Canonicalize(x)
	case *Op:
		return Canonicalize(*x)
	}
	return appendValue(nil, v, "$")
}

func validateOp(op *Op) error {
	if op.Op == "" {
		return fieldErr("op", "missing")
	}
	if len(op.Op) > 64 {
		return fieldErr("op", "longer than 64 bytes")
	}
	for _, c := range []byte(op.Op) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fieldErr("op", "%q: only a-z, 0-9, '.', '_' and '-' are allowed", op.Op)
		}
	}
	if op.HostID == "" {
		return fieldErr("host_id", "missing")
	}
	if err := checkText("host_id", op.HostID, maxIDLen); err != nil {
		return err
	}
	if op.GuestID != "" && !isVMID(op.GuestID) {
		return fieldErr("guest_id", "%q is not a decimal VMID", op.GuestID)
	}
	if op.Nonce == "" {
		return fieldErr("nonce", "missing")
	}
	if err := checkText("nonce", op.Nonce, MaxNonceLen); err != nil {
		return err
	}
	if err := checkText("key_id", op.KeyID, maxIDLen); err != nil {
		return err
	}
	if err := checkTime("not_before", op.NotBefore); err != nil {
		return err
	}
	if err := checkTime("expires_at", op.ExpiresAt); err != nil {
		return err
	}
	if !op.ExpiresAt.After(op.NotBefore) {
		return fieldErr("expires_at", "must be after not_before")
	}
	return nil
}

func checkText(field, s string, max int) error {
	if len(s) > max {
		return fieldErr(field, "longer than %d bytes", max)
	}
	if !utf8.ValidString(s) {
		return fieldErr(field, "not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fieldErr(field, "contains a control character")
		}
	}
	return nil
}

func isVMID(s string) bool {
	if len(s) > 10 || s[0] == '0' {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func checkTime(field string, t time.Time) error {
	if t.IsZero() {
		return fieldErr(field, "missing")
	}
	if t.Nanosecond() != 0 {
		return fieldErr(field, "has sub-second precision; use whole seconds")
	}
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return fieldErr(field, "year %d out of range", y)
	}
	return nil
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, TimeLayout)
	return append(b, '"')
}

// appendString writes s as RFC 8785 does: only '"', '\\' and control
// characters are escaped, with the short escapes where JSON has them.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func appendValue(b []byte, v any, path string) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case bool:
		return strconv.AppendBool(b, x), nil
	case string:
		if !utf8.ValidString(x) {
			return nil, fieldErr(path, "string is not valid UTF-8")
		}
		return appendString(b, x), nil
	case json.Number:
		n, err := strconv.ParseInt(string(x), 10, 64)
		if err != nil {
			return nil, fieldErr(path, "number %s is not an integer; send fractions as strings", x)
		}
		return appendInt(b, n, path)
	case int:
		return appendInt(b, int64(x), path)
	case int8:
		return appendInt(b, int64(x), path)
	case int16:
		return appendInt(b, int64(x), path)
	case int32:
		return appendInt(b, int64(x), path)
	case int64:
		return appendInt(b, x, path)
	case uint:
		return appendUint(b, uint64(x), path)
	case uint8:
		return appendUint(b, uint64(x), path)
	case uint16:
		return appendUint(b, uint64(x), path)
	case uint32:
		return appendUint(b, uint64(x), path)
	case uint64:
		return appendUint(b, x, path)
	case float32:
		return appendFloat(b, float64(x), path)
	case float64:
		return appendFloat(b, x, path)
	case map[string]any:
		return appendObject(b, x, path)
	case map[string]string:
		m := make(map[string]any, len(x))
		for k, s := range x {
			m[k] = s
		}
		return appendObject(b, m, path)
	case []any:
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendValue(b, e, path+"["+strconv.Itoa(i)+"]"); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	case []string:
		a := make([]any, len(x))
		for i, s := range x {
			a[i] = s
		}
		return appendValue(b, a, path)
	case json.RawMessage:
		return appendJSONText(b, x, path)
	case time.Time:
		if err := checkTime(path, x); err != nil {
			return nil, err
		}
		return appendTime(b, x), nil
	default:
		// Structs, typed maps and slices: let encoding/json apply tags and
		// marshalers, then canonicalise the plain result.
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, fieldErr(path, "cannot encode %T: %v", v, err)
		}
		return appendJSONText(b, raw, path)
	}
}

func appendJSONText(b, raw []byte, path string) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var plain any
	if err := d.Decode(&plain); err != nil {
		return nil, fieldErr(path, "invalid JSON: %v", err)
	}
	return appendValue(b, plain, path)
}

func appendInt(b []byte, n int64, path string) ([]byte, error) {
	if n > maxSafeInt || n < -maxSafeInt {
		return nil, fieldErr(path, "integer %d is outside ±(2^53-1); send it as a string", n)
	}
	return strconv.AppendInt(b, n, 10), nil
}

func appendUint(b []byte, n uint64, path string) ([]byte, error) {
	if n > maxSafeInt {
		return nil, fieldErr(path, "integer %d is outside ±(2^53-1); send it as a string", n)
	}
	return strconv.AppendUint(b, n, 10), nil
}

func appendFloat(b []byte, f float64, path string) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fieldErr(path, "number is not finite")
	}
	if f != math.Trunc(f) {
		return nil, fieldErr(path, "number %v is not an integer; send fractions as strings", f)
	}
	if math.Abs(f) > maxSafeInt {
		return nil, fieldErr(path, "integer %v is outside ±(2^53-1); send it as a string", f)
	}
	return strconv.AppendInt(b, int64(f), 10), nil // also turns -0 into 0
}

func appendObject(b []byte, m map[string]any, path string) ([]byte, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		if !utf8.ValidString(k) {
			return nil, fieldErr(path, "key %q is not valid UTF-8", k)
		}
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareUTF16)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		var err error
		if b, err = appendValue(b, m[k], path+"."+k); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// compareUTF16 orders strings by their UTF-16 code units, as RFC 8785
// requires. It equals byte order except where a character above U+FFFF meets
// one in U+E000..U+FFFF.
func compareUTF16(a, b string) int {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			return utf16Key(ra) - utf16Key(rb)
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) - len(b)
}

func utf16Key(r rune) int {
	if r < 0x10000 {
		return int(r) << 16
	}
	hi, lo := utf16.EncodeRune(r)
	return int(hi)<<16 | int(lo)
}
