package gate

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseArmor: any input either fails with ErrArmor or parses to an
// envelope that survives re-armoring unchanged.
func FuzzParseArmor(f *testing.F) {
	f.Add([]byte(armorBegin + "\n" + armorEnd + "\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		sig, err := ParseArmor(in)
		if err != nil {
			if !errors.Is(err, ErrArmor) {
				t.Fatalf("error %v does not wrap ErrArmor", err)
			}
			return
		}
		again, err := ParseArmor(Armor(sig.Marshal()))
		if err != nil {
			t.Fatalf("re-armored envelope does not parse: %v", err)
		}
		if !bytes.Equal(again.Marshal(), sig.Marshal()) {
			t.Fatal("re-armoring changed the envelope")
		}
	})
}

// FuzzParseOp: any input either fails with ErrBlob or is exactly the
// canonical encoding of the op it parses to.
func FuzzParseOp(f *testing.F) {
	f.Add([]byte(baseCanon + `{}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		op, err := ParseOp(in)
		if err != nil {
			if !errors.Is(err, ErrBlob) {
				t.Fatalf("error %v does not wrap ErrBlob", err)
			}
			return
		}
		canon, err := Canonicalize(op)
		if err != nil {
			t.Fatalf("parsed op does not canonicalise: %v", err)
		}
		if !bytes.Equal(canon, in) {
			t.Fatalf("accepted a non-canonical blob:\n%q\n%q", in, canon)
		}
	})
}
