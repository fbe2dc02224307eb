package pveclient

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func startSim(t *testing.T) *pvesim.Server {
	t.Helper()
	srv, err := pvesim.Start(pvesim.Config{Node: "pve1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// caFile writes the simulator's self-signed certificate, as fetched over TLS,
// to a PEM file: what an operator does with /etc/pve/pve-root-ca.pem.
func caFile(t *testing.T, srv *pvesim.Server) string {
	t.Helper()
	conn, err := tls.Dial("tcp", srv.Addr(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	certs := conn.ConnectionState().PeerCertificates
	path := filepath.Join(t.TempDir(), "pve-root-ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certs[len(certs)-1].Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func closedPortURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "https://" + addr + "/api2/json"
}

func TestCheck(t *testing.T) {
	srv := startSim(t)
	ca := caFile(t, srv)
	secretFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(secretFile, []byte(srv.TokenSecret()+"\n"), 0o600)
	t.Setenv("TEST_PVE_SECRET", srv.TokenSecret())
	good := Config{URL: srv.URL(), TokenID: srv.TokenID(), TokenSecretFile: secretFile, CAFile: ca, Timeout: 5 * time.Second}

	tests := []struct {
		name    string
		mutate  func(*Config)
		node    string
		wantErr string // substring of the error a user sees; "" = success
	}{
		{name: "good token, CA file", node: "pve1"},
		{name: "secret from env", mutate: func(c *Config) { c.TokenSecretFile, c.TokenSecretEnv = "", "TEST_PVE_SECRET" }},
		{name: "URL without path", mutate: func(c *Config) { c.URL = strings.TrimSuffix(c.URL, "/api2/json") }},
		{name: "insecure", mutate: func(c *Config) { c.CAFile, c.InsecureSkipVerify = "", true }},
		{name: "bad token secret", mutate: func(c *Config) { c.TokenSecretFile, c.TokenSecret = "", "wrong" },
			wantErr: "the API token was rejected (401"},
		{name: "unknown token id", mutate: func(c *Config) { c.TokenID = "someone@pve!other" },
			wantErr: "the API token was rejected (401"},
		{name: "untrusted certificate", mutate: func(c *Config) { c.CAFile = "" },
			wantErr: "TLS certificate is not trusted"},
		{name: "nothing listening", mutate: func(c *Config) { c.URL = closedPortURL(t) },
			wantErr: "cannot connect to the URL's host and port"},
		{name: "unresolvable host", mutate: func(c *Config) { c.URL = "https://pve.invalid:8006/api2/json" },
			wantErr: "cannot resolve the host name"},
		{name: "not the API path", mutate: func(c *Config) { c.URL = strings.TrimSuffix(c.URL, "/api2/json") + "/api3/xml" },
			wantErr: "is the URL the Proxmox VE API"},
		{name: "wrong node", node: "pve9", wantErr: `check node "pve9"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			if tt.mutate != nil {
				tt.mutate(&cfg)
			}
			c, err := New(cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = Check(ctx, c, tt.node)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatal("Check succeeded, want an error")
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("Check error = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	base := Config{URL: "https://pve1:8006/api2/json", TokenID: "felhom@pve!agent", TokenSecret: "s"}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"no URL", func(c *Config) { c.URL = "" }, "URL is required"},
		{"ftp URL", func(c *Config) { c.URL = "ftp://pve1/api2/json" }, "scheme must be https"},
		{"no host", func(c *Config) { c.URL = "https:///api2/json" }, "has no host"},
		{"unparsable", func(c *Config) { c.URL = "https://pve1:port/" }, "URL"},
		{"token id without realm", func(c *Config) { c.TokenID = "felhom!agent" }, "not of the form user@realm!tokenname"},
		{"token id without name", func(c *Config) { c.TokenID = "felhom@pve" }, "not of the form user@realm!tokenname"},
		{"no secret", func(c *Config) { c.TokenSecret = "" }, "token secret is required"},
		{"missing secret file", func(c *Config) { c.TokenSecret, c.TokenSecretFile = "", filepath.Join(dir, "nope") }, "read token secret file"},
		{"empty secret file", func(c *Config) { c.TokenSecret, c.TokenSecretFile = "", empty }, "is empty"},
		{"unset secret env", func(c *Config) { c.TokenSecret, c.TokenSecretEnv = "", "FELHOM_TEST_UNSET_VAR" }, "is empty or unset"},
		{"CA not PEM", func(c *Config) { c.CAFile = notPEM }, "holds no PEM certificate"},
		{"CA and insecure", func(c *Config) { c.CAFile, c.InsecureSkipVerify = notPEM, true }, "mutually exclusive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.mutate(&cfg)
			_, err := New(cfg)
			if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want ErrConfig containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestErrorsKeepProxmoxStatus shows why the client wraps its transport: the
// reason phrase of a 500 and the status of an empty-bodied 596 reach the
// caller, also for calls without a result target (where go-proxmox alone
// returns nil for a 596).
func TestErrorsKeepProxmoxStatus(t *testing.T) {
	srv := startSim(t)
	c, err := New(Config{URL: srv.URL(), TokenID: srv.TokenID(), TokenSecret: srv.TokenSecret(), InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddVM(pvesim.Guest{VMID: 101, Name: "web", MemoryMiB: 1024}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/101/status/start", Kind: pvesim.FaultHTTPError, Status: 596, Message: "Broken pipe"})
	err = c.Post(ctx, "/nodes/pve1/qemu/101/status/start", nil, nil)
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != 596 {
		t.Fatalf("596 without result target: err = %v, want *HTTPError 596", err)
	}

	err = c.Get(ctx, "/nodes/pve1/qemu/999/status/current", &map[string]any{})
	if !errors.As(err, &he) || he.StatusCode != 500 || !strings.Contains(he.Message, "does not exist") {
		t.Fatalf("missing guest: err = %v, want 500 with Proxmox's message", err)
	}

	err = c.Post(ctx, "/nodes/pve1/qemu/101/config", map[string]any{"memory": "lots"}, nil)
	if !errors.As(err, &he) || he.StatusCode != 400 || !strings.Contains(he.Message, "memory:") {
		t.Fatalf("bad parameter: err = %v, want 400 naming the parameter", err)
	}

	bad, _ := New(Config{URL: srv.URL(), TokenID: srv.TokenID(), TokenSecret: "wrong", InsecureSkipVerify: true})
	if err := bad.Get(ctx, "/version", &map[string]any{}); !errors.Is(err, proxmox.ErrNotAuthorized) {
		t.Fatalf("bad token: err = %v, want errors.Is ErrNotAuthorized", err)
	}
}

// TestNoRetryInsideClient proves a dropped connection after the side effect
// is reported, not silently re-sent.
func TestNoRetryInsideClient(t *testing.T) {
	srv := startSim(t)
	c, _ := New(Config{URL: srv.URL(), TokenID: srv.TokenID(), TokenSecret: srv.TokenSecret(), InsecureSkipVerify: true})
	srv.AddVM(pvesim.Guest{VMID: 101, Name: "web", MemoryMiB: 1024})
	srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/101/status/start", Kind: pvesim.FaultDropAfter})
	if err := c.Post(context.Background(), "/nodes/pve1/qemu/101/status/start", nil, nil); err == nil {
		t.Fatal("dropped connection not reported")
	}
	if n := len(srv.RequestsMatching("POST", "/nodes/*/qemu/101/status/start")); n != 1 {
		t.Fatalf("start POSTed %d times, want 1", n)
	}
}

// TestCheckNotProxmox: a URL that answers, but not as Proxmox does (a web
// page), is named as such.
func TestCheckNotProxmox(t *testing.T) {
	web := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<html><body>It works!</body></html>"))
	}))
	defer web.Close()
	c, err := New(Config{URL: web.URL + "/api2/json", TokenID: "felhom@pve!agent", TokenSecret: "s", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	err = Check(context.Background(), c, "")
	if err == nil || !strings.Contains(err.Error(), "not Proxmox API JSON") {
		t.Fatalf("Check = %v, want it to say the answer is not Proxmox's", err)
	}
}
