package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dev keeps the host-local stores of a simulated host in its data
// directory, and uses the configuration's stores and keys for a real
// Proxmox, as run does.
func TestDevConfigStores(t *testing.T) {
	const ops = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops"
	real := `
host_id: pve1
proxmox:
  url: https://pve1.example:8006/api2/json
  token_id: felhom@pve!agent
  token_secret: x
signers:
  operational: ["` + ops + `"]
`
	stores := `
nonce_store: /srv/felhom/nonces.log
pinned_signers: /srv/felhom/signers.json
provenance_ledger: /srv/felhom/provenance.log
`
	tests := []struct {
		name       string
		config     string // "" means no --config
		wantStores [3]string
		wantKey    bool
		wantErr    string
	}{
		{name: "simulator", wantStores: [3]string{"DATA/nonces.log", "DATA/signers.json", "DATA/provenance.log"}, wantKey: true},
		{name: "simulator, the file's stores are not the simulated host's", config: "host_id: pve1\n" + stores,
			wantStores: [3]string{"DATA/nonces.log", "DATA/signers.json", "DATA/provenance.log"}, wantKey: true},
		{name: "real proxmox, the file's stores", config: real + stores,
			wantStores: [3]string{"/srv/felhom/nonces.log", "/srv/felhom/signers.json", "/srv/felhom/provenance.log"}},
		{name: "real proxmox, run's default stores", config: real,
			wantStores: [3]string{"/var/lib/felhom-agent/nonces.log", "/var/lib/felhom-agent/signers.json", "/var/lib/felhom-agent/provenance.log"}},
		{name: "real proxmox without signers", config: strings.Replace(real, `operational: ["`+ops+`"]`, "operational: []", 1),
			wantErr: "signers.operational: must be set when dev drives a real Proxmox (proxmox.url https://pve1.example:8006/api2/json); dev makes its own operator key only for the simulator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			f := devFlags{dataDir: filepath.Join(dir, "data"), hostID: "dev", metricsAddr: "off", logLevel: "info"}
			if tt.config != "" {
				f.configPath = filepath.Join(dir, "agent.yaml")
				if err := os.WriteFile(f.configPath, []byte(tt.config), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg, key, err := devConfig(f)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("devConfig error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := [3]string{cfg.NonceStore, cfg.PinnedSigners, cfg.ProvenanceLedger}
			for i := range got {
				got[i] = strings.Replace(got[i], f.dataDir, "DATA", 1)
			}
			if got != tt.wantStores {
				t.Errorf("stores = %q, want %q", got, tt.wantStores)
			}
			if (key != "") != tt.wantKey {
				t.Errorf("operator key %q, want one: %v", key, tt.wantKey)
			}
			if !tt.wantKey {
				if _, err := os.Stat(filepath.Join(f.dataDir, "operator_ed25519")); err == nil {
					t.Error("dev made an operator key for a real Proxmox")
				}
			}
		})
	}
}
