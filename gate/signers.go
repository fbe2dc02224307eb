package gate

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// SignerLineError names the configured key line that could not be used.
type SignerLineError struct {
	Role Role
	Line int // 1-based position in the role's list (or file)
	Text string
	Err  error
}

func (e *SignerLineError) Error() string {
	return fmt.Sprintf("%s signer line %d (%.40q): %v", e.Role, e.Line, e.Text, e.Err)
}
func (e *SignerLineError) Unwrap() error { return e.Err }

// ParseSigners parses the pinned operational and recovery public keys. Each
// line is in OpenSSH authorized_keys form ("[options] TYPE BASE64 [comment]")
// or allowed_signers form ("PRINCIPALS [options] TYPE BASE64 [comment]").
// Blank lines and lines starting with '#' are skipped. An allowed_signers
// namespaces="..." option must include Namespace; cert-authority lines are
// refused. At least one operational key is required, and a key may not hold
// both roles.
func ParseSigners(operational, recovery []string) ([]Signer, error) {
	ops, err := parseRoleLines(RoleOperational, operational)
	if err != nil {
		return nil, err
	}
	if len(ops) == 0 {
		return nil, errors.New("gate: no operational signer key configured")
	}
	recs, err := parseRoleLines(RoleRecovery, recovery)
	if err != nil {
		return nil, err
	}
	all := append(ops, recs...)
	if _, err := NewAllowList(all); err != nil {
		return nil, err
	}
	return all, nil
}

// ParseSignersFile parses an authorized_keys or allowed_signers file, giving
// every key role.
func ParseSignersFile(data []byte, role Role) ([]Signer, error) {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return parseRoleLines(role, lines)
}

func parseRoleLines(role Role, lines []string) ([]Signer, error) {
	var out []Signer
	for i, line := range lines {
		text := strings.TrimSpace(line)
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		pub, comment, err := ParseSignerLine(text)
		if err != nil {
			return nil, &SignerLineError{Role: role, Line: i + 1, Text: text, Err: err}
		}
		out = append(out, Signer{Key: pub, Role: role, Comment: comment})
	}
	return out, nil
}

var keyTypes = map[string]bool{
	ssh.KeyAlgoED25519: true, ssh.KeyAlgoSKED25519: true, ssh.KeyAlgoRSA: true,
	ssh.KeyAlgoECDSA256: true, ssh.KeyAlgoECDSA384: true, ssh.KeyAlgoECDSA521: true,
	ssh.KeyAlgoSKECDSA256: true, ssh.KeyAlgoDSA: true,
	ssh.CertAlgoED25519v01: true, ssh.CertAlgoRSAv01: true, ssh.CertAlgoECDSA256v01: true,
	ssh.CertAlgoECDSA384v01: true, ssh.CertAlgoECDSA521v01: true,
	ssh.CertAlgoSKED25519v01: true, ssh.CertAlgoSKECDSA256v01: true,
}

// ParseSignerLine parses one authorized_keys or allowed_signers line and
// returns its key and comment.
func ParseSignerLine(line string) (ssh.PublicKey, string, error) {
	fields := splitFields(line)
	for i, f := range fields {
		if !keyTypes[f] {
			continue
		}
		if err := checkOptions(fields[:i]); err != nil {
			return nil, "", err
		}
		if i+1 >= len(fields) {
			return nil, "", fmt.Errorf("%s without key data", f)
		}
		wire, err := base64.StdEncoding.DecodeString(fields[i+1])
		if err != nil {
			return nil, "", fmt.Errorf("key data is not base64: %v", err)
		}
		pub, err := parseSignerKey(wire)
		if err != nil {
			return nil, "", err
		}
		if pub.Type() != f {
			return nil, "", fmt.Errorf("line says %s but the key is %s", f, pub.Type())
		}
		return pub, strings.Join(fields[i+2:], " "), nil
	}
	return nil, "", errors.New("no public key found (want [principals] [options] TYPE BASE64 [comment])")
}

// checkOptions refuses options that would change what the key is trusted
// for.
func checkOptions(fields []string) error {
	for _, f := range fields {
		for _, opt := range splitOptions(f) {
			name, value, _ := strings.Cut(opt, "=")
			switch strings.ToLower(name) {
			case "cert-authority":
				return errors.New("cert-authority keys are not supported; pin the signer key itself")
			case "namespaces":
				ok := false
				for _, ns := range strings.Split(strings.Trim(value, `"`), ",") {
					if ns == Namespace {
						ok = true
					}
				}
				if !ok {
					return fmt.Errorf("key is restricted to namespaces %s, which do not include %s", value, Namespace)
				}
			}
		}
	}
	return nil
}

// splitFields splits on spaces and tabs outside double quotes.
func splitFields(s string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			cur.WriteRune(r)
		case (r == ' ' || r == '\t') && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// splitOptions splits an option list on commas outside double quotes.
func splitOptions(s string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}
