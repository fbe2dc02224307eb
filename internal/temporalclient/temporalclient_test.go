package temporalclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestOptions(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	certPEM, keyPEM := selfSigned(t)
	ca := write("ca.pem", certPEM)
	cert := write("client.pem", certPEM)
	key := write("client.key", keyPEM)
	notPEM := write("not.pem", "not a certificate\n")
	emptyKey := write("empty.key", " \n\t\n")
	apiKeyFile := write("api.key", "  sekrit-key\n")
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name      string
		cfg       Config
		wantErr   string // the error starts with this; "" = no error
		wantTLS   bool
		wantRoots bool   // RootCAs set from ca_file
		wantCerts int    // client certificates
		wantKey   string // the API key sent
	}{
		{name: "plain", cfg: Config{Address: "127.0.0.1:7233"}},
		{name: "server name alone turns TLS on with the system roots", cfg: Config{TLS: TLS{ServerName: "temporal.example"}}, wantTLS: true},
		{name: "CA file", cfg: Config{TLS: TLS{CAFile: ca}}, wantTLS: true, wantRoots: true},
		{name: "mTLS", cfg: Config{TLS: TLS{CAFile: ca, CertFile: cert, KeyFile: key}}, wantTLS: true, wantRoots: true, wantCerts: 1},
		{name: "missing CA file", cfg: Config{TLS: TLS{CAFile: missing}},
			wantErr: "temporal.tls.ca_file: open " + missing},
		{name: "CA file without a certificate", cfg: Config{TLS: TLS{CAFile: notPEM}},
			wantErr: "temporal.tls.ca_file: " + notPEM + " holds no PEM certificate"},
		{name: "cert without key", cfg: Config{TLS: TLS{CertFile: cert}},
			wantErr: "temporal.tls.cert_file/key_file: "},
		{name: "key that is not the cert's", cfg: Config{TLS: TLS{CertFile: cert, KeyFile: notPEM}},
			wantErr: "temporal.tls.cert_file/key_file: "},
		{name: "API key", cfg: Config{APIKey: "env-key"}, wantKey: "env-key"},
		{name: "API key file, trimmed", cfg: Config{APIKeyFile: apiKeyFile}, wantKey: "sekrit-key"},
		{name: "API key file wins", cfg: Config{APIKey: "env-key", APIKeyFile: apiKeyFile}, wantKey: "sekrit-key"},
		{name: "API key file empty", cfg: Config{APIKeyFile: emptyKey},
			wantErr: "temporal.api_key_file: " + emptyKey + " is empty"},
		{name: "API key file missing", cfg: Config{APIKeyFile: missing},
			wantErr: "temporal.api_key_file: open " + missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := options(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("options: %v, want an error starting %q", err, tt.wantErr)
				}
				// Dial refuses the same way, before any connection.
				if _, derr := Dial(context.Background(), tt.cfg, slog.New(slog.DiscardHandler), nil); derr == nil || derr.Error() != err.Error() {
					t.Fatalf("Dial: %v, want %v", derr, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("options: %v", err)
			}
			if opts.HostPort != tt.cfg.Address || opts.Namespace != tt.cfg.Namespace {
				t.Errorf("HostPort %q Namespace %q, want %q %q", opts.HostPort, opts.Namespace, tt.cfg.Address, tt.cfg.Namespace)
			}
			got := opts.ConnectionOptions.TLS
			if (got != nil) != tt.wantTLS {
				t.Fatalf("TLS %v, want on=%v", got, tt.wantTLS)
			}
			if got != nil {
				if got.ServerName != tt.cfg.TLS.ServerName {
					t.Errorf("ServerName %q, want %q", got.ServerName, tt.cfg.TLS.ServerName)
				}
				if (got.RootCAs != nil) != tt.wantRoots {
					t.Errorf("RootCAs set: %v, want %v", got.RootCAs != nil, tt.wantRoots)
				}
				if len(got.Certificates) != tt.wantCerts {
					t.Errorf("%d client certificates, want %d", len(got.Certificates), tt.wantCerts)
				}
			}
			if (opts.Credentials != nil) != (tt.wantKey != "") {
				t.Errorf("credentials set: %v, want an API key %q", opts.Credentials != nil, tt.wantKey)
			}
			if k, _ := apiKey(tt.cfg); k != tt.wantKey {
				t.Errorf("API key %q, want %q", k, tt.wantKey)
			}
		})
	}
}

// selfSigned returns a self-signed certificate and its key, PEM-encoded.
func selfSigned(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "temporal.example"},
		DNSNames:              []string{"temporal.example"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}
