package gate

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

var (
	t0 = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)
	t1 = t0.Add(time.Hour)
)

func baseOp() Op {
	return Op{Op: "guest.destroy", HostID: "pve1", GuestID: "101", Nonce: "n-1",
		NotBefore: t0, ExpiresAt: t1, KeyID: "ops"}
}

const baseCanon = `{"expires_at":"2026-11-23T09:00:00Z","guest_id":"101","host_id":"pve1","key_id":"ops","nonce":"n-1","not_before":"2026-11-23T08:00:00Z","op":"guest.destroy","params":`

func TestCanonicalize(t *testing.T) {
	tests := []struct {
		name   string
		params map[string]any
		want   string // the params part
	}{
		{"nil params", nil, `{}`},
		{"empty params", map[string]any{}, `{}`},
		{"sorted keys", map[string]any{"b": 1, "a": 2, "A": 3, "aa": 4}, `{"A":3,"a":2,"aa":4,"b":1}`},
		{"nested sorted at every level", map[string]any{
			"z": map[string]any{"y": []any{map[string]any{"d": true, "c": nil}}, "x": "s"},
			"a": []any{3, 2, 1},
		}, `{"a":[3,2,1],"z":{"x":"s","y":[{"c":null,"d":true}]}}`},
		{"integers in one form", map[string]any{"i": int64(-42), "u": uint8(7), "f": 3.0, "negzero": math.Copysign(0, -1), "n": json.Number("12")},
			`{"f":3,"i":-42,"n":12,"negzero":0,"u":7}`},
		{"largest safe integer", map[string]any{"max": int64(1<<53 - 1), "min": -(1<<53 - 1)}, `{"max":9007199254740991,"min":-9007199254740991}`},
		{"string escapes", map[string]any{"s": "q\" b\\ nl\n tab\t cr\r bs\b ff\f nul\x00 us\x1f del\x7f /<>&"},
			`{"s":"q\" b\\ nl\n tab\t cr\r bs\b ff\f nul\u0000 us\u001f del` + "\x7f" + ` /<>&"}`},
		{"non-ASCII written as itself", map[string]any{"név": "árvíztűrő \u2028 😀"}, `{"név":"árvíztűrő ` + "\u2028" + ` 😀"}`},
		{"UTF-16 key order", map[string]any{"\U0001F600": 1, "\uFB33": 2, "z": 3}, `{"z":3,"` + "\U0001F600" + `":1,"` + "\uFB33" + `":2}`},
		{"typed maps and slices", map[string]any{"m": map[string]string{"k": "v"}, "l": []string{"b", "a"}}, `{"l":["b","a"],"m":{"k":"v"}}`},
		{"struct through its JSON tags", map[string]any{"disk": struct {
			Name string `json:"name"`
			Size int    `json:"size_gib"`
		}{"scsi0", 32}}, `{"disk":{"name":"scsi0","size_gib":32}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := baseOp()
			op.Params = tt.params
			got, err := Canonicalize(op)
			if err != nil {
				t.Fatal(err)
			}
			if want := baseCanon + tt.want + "}"; string(got) != want {
				t.Fatalf("got  %s\nwant %s", got, want)
			}
			back, err := ParseOp(got)
			if err != nil {
				t.Fatalf("ParseOp of canonical output: %v", err)
			}
			again, err := Canonicalize(back)
			if err != nil || string(again) != string(got) {
				t.Fatalf("round trip changed the blob: %s, %v", again, err)
			}
		})
	}
}

func TestCanonicalizeTimesInUTC(t *testing.T) {
	op := baseOp()
	op.NotBefore = t0.In(time.FixedZone("CET", 3600))
	got, err := Canonicalize(op)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), `"not_before":"2026-11-23T08:00:00Z"`) {
		t.Fatalf("time not written as UTC: %s", got)
	}
}

func TestCanonicalizeRejects(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Op)
		field string
	}{
		{"missing op", func(o *Op) { o.Op = "" }, "op"},
		{"op with capitals", func(o *Op) { o.Op = "Guest.Destroy" }, "op"},
		{"missing host", func(o *Op) { o.HostID = "" }, "host_id"},
		{"guest not a VMID", func(o *Op) { o.GuestID = "web" }, "guest_id"},
		{"guest with leading zero", func(o *Op) { o.GuestID = "0101" }, "guest_id"},
		{"missing nonce", func(o *Op) { o.Nonce = "" }, "nonce"},
		{"nonce too long", func(o *Op) { o.Nonce = strings.Repeat("n", MaxNonceLen+1) }, "nonce"},
		{"nonce with newline", func(o *Op) { o.Nonce = "a\nb" }, "nonce"},
		{"host not UTF-8", func(o *Op) { o.HostID = "pve\xff" }, "host_id"},
		{"missing not_before", func(o *Op) { o.NotBefore = time.Time{} }, "not_before"},
		{"sub-second expires_at", func(o *Op) { o.ExpiresAt = t1.Add(time.Millisecond) }, "expires_at"},
		{"window inverted", func(o *Op) { o.ExpiresAt = t0 }, "expires_at"},
		{"fraction", func(o *Op) { o.Params = map[string]any{"size": 1.5} }, "params.size"},
		{"NaN", func(o *Op) { o.Params = map[string]any{"x": math.NaN()} }, "params.x"},
		{"infinity", func(o *Op) { o.Params = map[string]any{"x": math.Inf(1)} }, "params.x"},
		{"unsafe integer", func(o *Op) { o.Params = map[string]any{"x": int64(1 << 53)} }, "params.x"},
		{"unsafe uint", func(o *Op) { o.Params = map[string]any{"x": uint64(math.MaxUint64)} }, "params.x"},
		{"exponent number", func(o *Op) { o.Params = map[string]any{"x": json.Number("1e3")} }, "params.x"},
		{"nested fraction", func(o *Op) {
			o.Params = map[string]any{"disks": []any{map[string]any{"size": 1}, map[string]any{"size": 0.5}}}
		}, "params.disks[1].size"},
		{"string not UTF-8", func(o *Op) { o.Params = map[string]any{"s": "\xc3"} }, "params.s"},
		{"unencodable value", func(o *Op) { o.Params = map[string]any{"c": make(chan int)} }, "params.c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := baseOp()
			tt.edit(&op)
			_, err := Canonicalize(op)
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want a FieldError", err)
			}
			if fe.Field != tt.field {
				t.Fatalf("error names field %q, want %q (%v)", fe.Field, tt.field, err)
			}
			if !errors.Is(err, ErrBlob) || Code(err) != "blob" {
				t.Fatalf("error %v does not wrap ErrBlob", err)
			}
		})
	}
}

func TestParseOpRejectsNonCanonical(t *testing.T) {
	good, err := Canonicalize(baseOp())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseOp(good); err != nil {
		t.Fatalf("canonical blob refused: %v", err)
	}
	g := string(good)
	tests := map[string]string{
		"trailing newline":       g + "\n",
		"leading space":          " " + g,
		"space after colon":      strings.Replace(g, `"op":`, `"op": `, 1),
		"keys out of order":      `{"guest_id":"101","expires_at":"2026-11-23T09:00:00Z"` + g[strings.Index(g, `,"host_id"`):],
		"duplicate key":          strings.Replace(g, `"op":"guest.destroy"`, `"op":"guest.start","op":"guest.destroy"`, 1),
		"case-folded key":        strings.Replace(g, `"op":"guest.destroy"`, `"OP":"guest.destroy"`, 1),
		"unknown key":            strings.Replace(g, `"params":{}`, `"params":{},"zz":1`, 1),
		"missing key_id":         strings.Replace(g, `"key_id":"ops",`, ``, 1),
		"fractional time":        strings.Replace(g, `08:00:00Z`, `08:00:00.000Z`, 1),
		"offset time":            strings.Replace(g, `"2026-11-23T08:00:00Z"`, `"2026-11-23T09:00:00+01:00"`, 1),
		"escaped slash":          strings.Replace(g, `"pve1"`, `"pve\/1"`, 1),
		"unicode escape":         strings.Replace(g, `"pve1"`, `"pv\u00651"`, 1),
		"null params":            strings.Replace(g, `"params":{}`, `"params":null`, 1),
		"number with exponent":   strings.Replace(g, `"params":{}`, `"params":{"a":1e2}`, 1),
		"invalid UTF-8":          strings.Replace(g, `"ops"`, "\"o\xffs\"", 1),
		"two objects":            g + g,
		"not JSON":               "-----BEGIN SSH SIGNATURE-----",
		"empty":                  "",
		"numbers as JSON float":  strings.Replace(g, `"params":{}`, `"params":{"a":1.0}`, 1),
		"escaped surrogate pair": strings.Replace(g, `"ops"`, `"\ud83d\ude00"`, 1),
		"raw control character":  strings.Replace(g, `"ops"`, "\"o\x01s\"", 1),
		"deep nesting":           strings.Replace(g, `"params":{}`, `"params":{"a":`+strings.Repeat("[", 40)+strings.Repeat("]", 40)+`}`, 1),
		"params not an object":   strings.Replace(g, `"params":{}`, `"params":[]`, 1),
		"host not a string":      strings.Replace(g, `"host_id":"pve1"`, `"host_id":1`, 1),
		"too large":              strings.Replace(g, `"params":{}`, `"params":{"a":"`+strings.Repeat("x", MaxBlobLen)+`"}`, 1),
	}
	for name, blob := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseOp([]byte(blob))
			if !errors.Is(err, ErrBlob) {
				t.Fatalf("ParseOp(%q) = %v, want ErrBlob", blob, err)
			}
		})
	}
}

func TestParseOpIntegerParams(t *testing.T) {
	op := baseOp()
	op.Params = map[string]any{"size": 32, "disks": []any{map[string]any{"n": 1}}}
	blob, err := Canonicalize(op)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseOp(blob)
	if err != nil {
		t.Fatal(err)
	}
	if got.Params["size"] != int64(32) {
		t.Fatalf("size = %#v, want int64(32)", got.Params["size"])
	}
	if n := got.Params["disks"].([]any)[0].(map[string]any)["n"]; n != int64(1) {
		t.Fatalf("nested n = %#v, want int64(1)", n)
	}
}

func TestCanonicalJSONOfOpIsCanonicalize(t *testing.T) {
	a, err := CanonicalJSON(baseOp())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Canonicalize(baseOp())
	if string(a) != string(b) {
		t.Fatalf("CanonicalJSON(op) = %s, Canonicalize = %s", a, b)
	}
}
