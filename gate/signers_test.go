package gate

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSignerLine(t *testing.T) {
	testKeys(t)
	typ, b64, _ := strings.Cut(opKey.line, " ")
	b64, _, _ = strings.Cut(b64, " ")
	tests := []struct {
		name    string
		line    string
		wantErr string // substring; "" means the line parses to opKey
	}{
		{"authorized_keys", opKey.line, ""},
		{"authorized_keys without comment", typ + " " + b64, ""},
		{"authorized_keys with options", `from="10.0.0.0/8",no-pty ` + opKey.line, ""},
		{"allowed_signers", "ops@example " + opKey.line, ""},
		{"allowed_signers with namespaces", `ops@example,alt@example namespaces="file,felhom-op-v1" ` + opKey.line, ""},
		{"allowed_signers for another namespace", `ops@example namespaces="git" ` + opKey.line, "do not include felhom-op-v1"},
		{"cert-authority", `*@example cert-authority ` + opKey.line, "cert-authority"},
		{"no key", "ops@example", "no public key found"},
		{"key type without data", "ops@example " + typ, "without key data"},
		{"bad base64", typ + " !!!!", "not base64"},
		{"type and data disagree", "ssh-rsa " + b64, "line says ssh-rsa"},
		{"small RSA", smallRSA.line, "at least 2048 bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub, _, err := ParseSignerLine(tt.line)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if string(pub.Marshal()) != string(opKey.pub.Marshal()) {
					t.Fatal("parsed another key")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseSigners(t *testing.T) {
	testKeys(t)
	signers, err := ParseSigners([]string{opKey.line, "", "# old key removed", "ops2@x " + rsaKey.line}, []string{recKey.line})
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]Role{}
	for _, s := range signers {
		roles[string(s.Key.Marshal())] = s.Role
	}
	if roles[string(opKey.pub.Marshal())] != RoleOperational || roles[string(rsaKey.pub.Marshal())] != RoleOperational ||
		roles[string(recKey.pub.Marshal())] != RoleRecovery || len(signers) != 3 {
		t.Fatalf("roles wrong: %+v", signers)
	}
	if signers[0].Comment != "ed25519@test" {
		t.Fatalf("comment %q", signers[0].Comment)
	}

	_, err = ParseSigners([]string{opKey.line}, []string{recKey.line, "ssh-ed25519 AAAAnotakey"})
	var le *SignerLineError
	if !errors.As(err, &le) || le.Role != RoleRecovery || le.Line != 2 || !strings.Contains(err.Error(), "recovery signer line 2") {
		t.Fatalf("bad recovery line: %v", err)
	}
	if _, err := ParseSigners(nil, []string{recKey.line}); err == nil || !strings.Contains(err.Error(), "no operational signer") {
		t.Fatalf("no operational key: %v", err)
	}
	if _, err := ParseSigners([]string{opKey.line}, []string{opKey.line}); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Fatalf("key in both roles: %v", err)
	}
	file := "# allowed signers\nops@x " + opKey.line + "\n\nrec@x " + recKey.line + "\n"
	fromFile, err := ParseSignersFile([]byte(file), RoleOperational)
	if err != nil || len(fromFile) != 2 {
		t.Fatalf("ParseSignersFile = %v, %v", fromFile, err)
	}
}
