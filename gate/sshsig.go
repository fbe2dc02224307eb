package gate

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// SSHSIG framing, as OpenSSH's PROTOCOL.sshsig defines it. The cryptography
// is x/crypto/ssh's; this file only frames bytes.

// Namespace is the SSHSIG namespace of every felhom op signature. Signed data
// is always built with this constant, never with the namespace an envelope
// claims.
const Namespace = "felhom-op-v1"

const (
	sigMagic     = "SSHSIG"
	sigVersion   = 1
	armorBegin   = "-----BEGIN SSH SIGNATURE-----"
	armorEnd     = "-----END SSH SIGNATURE-----"
	armorColumns = 70 // OpenSSH wraps the base64 body at 70 columns
	maxArmorLen  = MaxSignatureLen
)

// MaxSignatureLen bounds an armored signature; a longer one is refused
// before it is decoded. Real ones are well under 2 KiB (RSA 4096 included).
const MaxSignatureLen = 64 << 10

// Signature is a parsed SSHSIG envelope:
//
//	byte[6] "SSHSIG" | uint32 version (1) | string publickey | string namespace |
//	string reserved | string hash_algorithm | string signature
//
// PublicKey and Sig stay in wire form; parsing them is a later pipeline stage.
type Signature struct {
	PublicKey     []byte
	Namespace     string
	Reserved      []byte // carried, but OpenSSH signs over an empty reserved field
	HashAlgorithm string // "sha256" or "sha512"
	Sig           []byte // an SSH signature: string format | string blob [| sk flags, counter]
}

// ParseArmor decodes an armored SSHSIG ("-----BEGIN SSH SIGNATURE-----")
// and parses its envelope. Any failure wraps ErrArmor.
func ParseArmor(armored []byte) (*Signature, error) {
	if len(armored) > maxArmorLen {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrArmor, maxArmorLen)
	}
	rest := bytes.TrimLeft(armored, " \t\r\n")
	rest, ok := bytes.CutPrefix(rest, []byte(armorBegin))
	if !ok {
		return nil, fmt.Errorf("%w: missing %s line", ErrArmor, armorBegin)
	}
	body, tail, ok := bytes.Cut(rest, []byte(armorEnd))
	if !ok {
		return nil, fmt.Errorf("%w: missing %s line", ErrArmor, armorEnd)
	}
	if len(bytes.Trim(tail, " \t\r\n")) != 0 {
		return nil, fmt.Errorf("%w: data after %s", ErrArmor, armorEnd)
	}
	if len(body) == 0 || (body[0] != '\n' && body[0] != '\r') {
		return nil, fmt.Errorf("%w: %s must end its line", ErrArmor, armorBegin)
	}
	b64 := make([]byte, 0, len(body))
	for _, c := range body {
		switch {
		case c == '\n' || c == '\r':
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/', c == '=':
			b64 = append(b64, c)
		default:
			return nil, fmt.Errorf("%w: invalid character %q in base64 body", ErrArmor, c)
		}
	}
	raw := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Strict().Decode(raw, b64)
	if err != nil {
		return nil, fmt.Errorf("%w: base64: %v", ErrArmor, err)
	}
	return ParseSignature(raw[:n])
}

// ParseSignature parses a binary SSHSIG envelope. Any failure wraps ErrArmor.
func ParseSignature(raw []byte) (*Signature, error) {
	r := wireReader{b: raw}
	if magic := r.bytes(len(sigMagic)); string(magic) != sigMagic {
		return nil, fmt.Errorf("%w: not an SSHSIG envelope", ErrArmor)
	}
	if v := r.uint32(); r.err == nil && v != sigVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrArmor, v, sigVersion)
	}
	s := &Signature{
		PublicKey:     r.string(),
		Namespace:     string(r.string()),
		Reserved:      r.string(),
		HashAlgorithm: string(r.string()),
		Sig:           r.string(),
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: truncated envelope", ErrArmor)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after envelope", ErrArmor, len(r.b))
	}
	if s.HashAlgorithm != "sha256" && s.HashAlgorithm != "sha512" {
		return nil, fmt.Errorf("%w: hash algorithm %q, want sha256 or sha512", ErrArmor, s.HashAlgorithm)
	}
	return s, nil
}

// Marshal returns the binary envelope.
func (s *Signature) Marshal() []byte {
	var b []byte
	b = append(b, sigMagic...)
	b = binary.BigEndian.AppendUint32(b, sigVersion)
	b = appendWireString(b, s.PublicKey)
	b = appendWireString(b, []byte(s.Namespace))
	b = appendWireString(b, s.Reserved)
	b = appendWireString(b, []byte(s.HashAlgorithm))
	return appendWireString(b, s.Sig)
}

// Armor wraps a binary envelope the way ssh-keygen -Y sign writes it.
func Armor(raw []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(raw)
	var b bytes.Buffer
	b.WriteString(armorBegin + "\n")
	for len(enc) > armorColumns {
		b.WriteString(enc[:armorColumns] + "\n")
		enc = enc[armorColumns:]
	}
	b.WriteString(enc + "\n")
	b.WriteString(armorEnd + "\n")
	return b.Bytes()
}

// SignedData returns the bytes the key actually signs for message:
//
//	"SSHSIG" | string namespace | string reserved (empty) | string hash_algorithm | string H(message)
func SignedData(namespace, hashAlgorithm string, message []byte) ([]byte, error) {
	var digest []byte
	switch hashAlgorithm {
	case "sha256":
		d := sha256.Sum256(message)
		digest = d[:]
	case "sha512":
		d := sha512.Sum512(message)
		digest = d[:]
	default:
		return nil, fmt.Errorf("%w: hash algorithm %q, want sha256 or sha512", ErrArmor, hashAlgorithm)
	}
	b := make([]byte, 0, len(sigMagic)+4+len(namespace)+4+4+len(hashAlgorithm)+4+len(digest))
	b = append(b, sigMagic...)
	b = appendWireString(b, []byte(namespace))
	b = appendWireString(b, nil)
	b = appendWireString(b, []byte(hashAlgorithm))
	return appendWireString(b, digest), nil
}

// Sign makes an armored SSHSIG over message in Namespace, hashing with
// sha512 as ssh-keygen does. RSA keys sign with rsa-sha2-512 unless
// rsaAlgorithm names ssh.KeyAlgoRSASHA256; a legacy ssh-rsa (SHA-1)
// signature is never produced.
func Sign(signer ssh.Signer, message []byte, rsaAlgorithm string) ([]byte, error) {
	data, err := SignedData(Namespace, "sha512", message)
	if err != nil {
		return nil, err
	}
	var sig *ssh.Signature
	if signer.PublicKey().Type() == ssh.KeyAlgoRSA {
		if rsaAlgorithm == "" {
			rsaAlgorithm = ssh.KeyAlgoRSASHA512
		}
		if rsaAlgorithm != ssh.KeyAlgoRSASHA256 && rsaAlgorithm != ssh.KeyAlgoRSASHA512 {
			return nil, fmt.Errorf("sign: RSA signature algorithm %q, want %s or %s", rsaAlgorithm, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSASHA512)
		}
		as, ok := signer.(ssh.AlgorithmSigner)
		if !ok {
			return nil, errors.New("sign: this RSA signer cannot make rsa-sha2 signatures")
		}
		sig, err = as.SignWithAlgorithm(rand.Reader, data, rsaAlgorithm)
	} else {
		sig, err = signer.Sign(rand.Reader, data)
	}
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	env := Signature{
		PublicKey:     signer.PublicKey().Marshal(),
		Namespace:     Namespace,
		HashAlgorithm: "sha512",
		Sig:           ssh.Marshal(sig),
	}
	return Armor(env.Marshal()), nil
}

func appendWireString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// wireReader reads SSH wire types; the first short read sets err and every
// later read returns zero values.
type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) bytes(n int) []byte {
	if r.err != nil || n < 0 || len(r.b) < n {
		r.err = errors.New("short")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *wireReader) uint32() uint32 {
	v := r.bytes(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (r *wireReader) string() []byte {
	n := r.uint32()
	if r.err != nil || uint64(n) > uint64(len(r.b)) {
		r.err = errors.New("short")
		return nil
	}
	return r.bytes(int(n))
}
