package pvesim_test

import (
	"context"
	"errors"
	"testing"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestAPITokenAuthentication(t *testing.T) {
	srv, _ := newSim(t, pvesim.Config{TokenID: "felhom@pve!agent", TokenSecret: "0b5c3f7e-1111-4222-8333-944455556666"})
	tests := []struct {
		name       string
		id, secret string
		wantErr    error
	}{
		{"valid token", "felhom@pve!agent", "0b5c3f7e-1111-4222-8333-944455556666", nil},
		{"wrong secret", "felhom@pve!agent", "0b5c3f7e-0000-4222-8333-944455556666", proxmox.ErrNotAuthorized},
		{"wrong token id", "felhom@pve!other", "0b5c3f7e-1111-4222-8333-944455556666", proxmox.ErrNotAuthorized},
		{"wrong user", "root@pam!agent", "0b5c3f7e-1111-4222-8333-944455556666", proxmox.ErrNotAuthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := newClient(srv, tt.id, tt.secret)
			_, err := client.Version(context.Background())
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Version() error = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestAuthenticationFailureStatusLine(t *testing.T) {
	srv, _ := newSim(t, pvesim.Config{})
	tests := []struct {
		name, auth, wantStatus string
	}{
		{"no header", "-", "401 No ticket"},
		{"bad secret", "PVEAPIToken=" + srv.TokenID() + "=nope", "401 invalid token value!"},
		{"not a token", "Bearer abc", "401 No ticket"},
		{"space form accepted", "PVEAPIToken " + srv.TokenID() + "=" + srv.TokenSecret(), "200 OK"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := raw(t, srv, "GET", "/version", nil, tt.auth)
			if got.Status != tt.wantStatus {
				t.Fatalf("status line %q, want %q", got.Status, tt.wantStatus)
			}
		})
	}
}
