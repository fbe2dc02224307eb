package gate

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestLimitsAtTheirBoundaries: every size and range limit of the op and its
// armor accepts the value at the limit and refuses the one past it, so a
// limit that moves by one is noticed.
func TestLimitsAtTheirBoundaries(t *testing.T) {
	op := func(edit func(*Op)) Op {
		o := baseOp()
		o.Params = map[string]any{}
		edit(&o)
		return o
	}
	tests := []struct {
		name string
		op   Op
		ok   bool
	}{
		{"op name of every allowed kind of byte", op(func(o *Op) { o.Op = "az09.-_" }), true},
		{"op name of 64 bytes", op(func(o *Op) { o.Op = strings.Repeat("z", 64) }), true},
		{"op name of 65 bytes", op(func(o *Op) { o.Op = strings.Repeat("a", 65) }), false},
		{"op name with a byte just outside a-z", op(func(o *Op) { o.Op = "a{" }), false},
		{"op name with a byte just outside 0-9", op(func(o *Op) { o.Op = "a:" }), false},
		{"op name with an upper-case letter", op(func(o *Op) { o.Op = "A" }), false},
		{"host id at its length", op(func(o *Op) { o.HostID = strings.Repeat("h", maxIDLen) }), true},
		{"host id past its length", op(func(o *Op) { o.HostID = strings.Repeat("h", maxIDLen+1) }), false},
		{"nonce at its length", op(func(o *Op) { o.Nonce = strings.Repeat("n", MaxNonceLen) }), true},
		{"nonce past its length", op(func(o *Op) { o.Nonce = strings.Repeat("n", MaxNonceLen+1) }), false},
		{"nonce with DEL", op(func(o *Op) { o.Nonce = "a\x7f" }), false},
		{"nonce with a unit separator", op(func(o *Op) { o.Nonce = "a\x1f" }), false},
		{"nonce with a space", op(func(o *Op) { o.Nonce = "a b" }), true},
		{"VMID of ten digits", op(func(o *Op) { o.GuestID = "9999999999" }), true},
		{"VMID of eleven digits", op(func(o *Op) { o.GuestID = "10000000000" }), false},
		{"VMID with a leading zero", op(func(o *Op) { o.GuestID = "0101" }), false},
		{"VMID 0-9 only", op(func(o *Op) { o.GuestID = "109" }), true},
		{"VMID with a colon", op(func(o *Op) { o.GuestID = "10:" }), false},
		{"VMID with a slash", op(func(o *Op) { o.GuestID = "10/" }), false},
		{"year 9999", op(func(o *Op) { o.ExpiresAt = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC) }), true},
		{"year 1", op(func(o *Op) { o.NotBefore = time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC) }), true},
		{"expires a second after not_before", op(func(o *Op) { o.ExpiresAt = o.NotBefore.Add(time.Second) }), true},
		{"expires at not_before", op(func(o *Op) { o.ExpiresAt = o.NotBefore }), false},
		{"largest safe integer", op(func(o *Op) { o.Params = map[string]any{"n": int64(maxSafeInt)} }), true},
		{"past the largest safe integer", op(func(o *Op) { o.Params = map[string]any{"n": int64(maxSafeInt + 1)} }), false},
		{"smallest safe integer", op(func(o *Op) { o.Params = map[string]any{"n": -int64(maxSafeInt)} }), true},
		{"past the smallest safe integer", op(func(o *Op) { o.Params = map[string]any{"n": -int64(maxSafeInt) - 1} }), false},
		{"largest safe unsigned", op(func(o *Op) { o.Params = map[string]any{"n": uint64(maxSafeInt)} }), true},
		{"past the largest safe unsigned", op(func(o *Op) { o.Params = map[string]any{"n": uint64(maxSafeInt + 1)} }), false},
		{"largest safe float", op(func(o *Op) { o.Params = map[string]any{"n": float64(maxSafeInt)} }), true},
		{"past the largest safe float", op(func(o *Op) { o.Params = map[string]any{"n": float64(maxSafeInt + 1)} }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blob, err := Canonicalize(tt.op)
			if (err == nil) != tt.ok {
				t.Fatalf("Canonicalize = %v, want ok %v", err, tt.ok)
			}
			if err != nil {
				return
			}
			if _, err := ParseOp(blob); err != nil {
				t.Fatalf("ParseOp of the canonical form: %v", err)
			}
		})
	}
}

func TestParseLimitsAtTheirBoundaries(t *testing.T) {
	nested := func(depth int) map[string]any {
		v := map[string]any{}
		for i := 1; i < depth; i++ {
			v = map[string]any{"a": v}
		}
		return v
	}
	// The op object is one level; params add the rest.
	for _, tt := range []struct {
		depth int
		ok    bool
	}{{maxDepth - 1, true}, {maxDepth, false}} {
		o := baseOp()
		o.Params = nested(tt.depth)
		blob, err := Canonicalize(o)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ParseOp(blob)
		if deep := err != nil && strings.Contains(err.Error(), "nested deeper"); deep == tt.ok {
			t.Errorf("params nested %d deep: ParseOp = %v, want ok %v", tt.depth, err, tt.ok)
		}
	}

	// Depth is counted down again after each value: many siblings at one
	// level are no deeper than one.
	o := baseOp()
	wide := map[string]any{}
	for i := range 2 * maxDepth {
		wide[fmt.Sprintf("k%03d", i)] = map[string]any{"list": []any{map[string]any{}}}
	}
	o.Params = wide
	if blob, err := Canonicalize(o); err != nil {
		t.Fatal(err)
	} else if _, err := ParseOp(blob); err != nil {
		t.Errorf("params with %d nested siblings: %v", len(wide), err)
	}

	sizeErr := func(err error) bool { return err != nil && strings.Contains(err.Error(), "larger than") }
	pad := func(n int) []byte { return bytes.Repeat([]byte{' '}, n) }
	if _, err := ParseOp(pad(MaxBlobLen)); sizeErr(err) || !errors.Is(err, ErrBlob) {
		t.Errorf("blob of MaxBlobLen bytes: %v, want refused for its content, not its size", err)
	}
	if _, err := ParseOp(pad(MaxBlobLen + 1)); !sizeErr(err) {
		t.Errorf("blob of MaxBlobLen+1 bytes: %v, want refused for its size", err)
	}
	if _, err := ParseArmor(pad(maxArmorLen)); sizeErr(err) || !errors.Is(err, ErrArmor) {
		t.Errorf("armor of maxArmorLen bytes: %v, want refused for its content, not its size", err)
	}
	if _, err := ParseArmor(pad(maxArmorLen + 1)); !sizeErr(err) {
		t.Errorf("armor of maxArmorLen+1 bytes: %v, want refused for its size", err)
	}
}

func TestArmorWrapsLikeSSHKeygen(t *testing.T) {
	// 70 base64 columns a line; 105 bytes are exactly two full lines, with
	// no empty line after them, and one byte more starts a third.
	for _, tt := range []struct {
		raw   int
		lines int
	}{{51, 1}, {53, 2}, {105, 2}, {106, 3}} {
		armored := Armor(bytes.Repeat([]byte{0xab}, tt.raw))
		body := strings.Split(strings.TrimSpace(string(armored)), "\n")
		body = body[1 : len(body)-1]
		if len(body) != tt.lines {
			t.Errorf("%d bytes: %d lines %q, want %d", tt.raw, len(body), body, tt.lines)
		}
		for _, l := range body {
			if l == "" || len(l) > armorColumns {
				t.Errorf("%d bytes: line %q", tt.raw, l)
			}
		}
	}
}

// TestKeysSortByUTF16 pins the order of keys around the end of the Basic
// Multilingual Plane, where UTF-16 and code-point order disagree: U+10000
// is a surrogate pair (0xD800 0xDC00) and sorts before U+E000.
func TestKeysSortByUTF16(t *testing.T) {
	got, err := CanonicalJSON(map[string]any{"\uE000": 1, "\U00010000": 2, "\uFFFF": 3})
	if err != nil {
		t.Fatal(err)
	}
	if want := "{\"\U00010000\":2,\"\uE000\":1,\"\uFFFF\":3}"; string(got) != want {
		t.Fatalf("CanonicalJSON = %s, want %s", got, want)
	}
}
