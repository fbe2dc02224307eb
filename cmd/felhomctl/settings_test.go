package main

import (
	"flag"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mapEnv is an environment for clientProfile, "" counting as unset.
type mapEnv map[string]string

func (m mapEnv) Environ() []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}
func (m mapEnv) LookupEnv(k string) (string, bool) { v := m[k]; return v, v != "" }

// Client settings load in the temporal CLI's order: the config file's
// profile, TEMPORAL_* variables, the CLI's older TLS variables, flags.
func TestClientSettingsPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "temporal.toml")
	if err := os.WriteFile(file, []byte(`
[profile.default]
address = "file.example:7233"
namespace = "file-ns"

[profile.ops]
address = "ops.example:7233"
[profile.ops.tls]
server_ca_cert_path = "/file/ca.pem"
[profile.ops.grpc_meta]
x-team = "ops"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	type want struct {
		address, namespace, ca, serverName string
		tls, noVerify                      bool
		meta                               map[string]string
	}
	tests := []struct {
		name  string
		env   mapEnv
		flags []string
		want  want
	}{
		{"the default profile", nil, nil, want{address: "file.example:7233", namespace: "file-ns"}},
		{"a profile by flag", nil, []string{"--profile", "ops"},
			want{address: "ops.example:7233", namespace: "default", ca: "/file/ca.pem", tls: true, meta: map[string]string{"x-team": "ops"}}},
		{"a profile by TEMPORAL_PROFILE", mapEnv{"TEMPORAL_PROFILE": "ops"}, nil,
			want{address: "ops.example:7233", namespace: "default", ca: "/file/ca.pem", tls: true, meta: map[string]string{"x-team": "ops"}}},
		{"the environment over the file", mapEnv{"TEMPORAL_ADDRESS": "env.example:7233", "TEMPORAL_NAMESPACE": "env-ns"}, nil,
			want{address: "env.example:7233", namespace: "env-ns"}},
		{"flags over the environment", mapEnv{"TEMPORAL_ADDRESS": "env.example:7233"}, []string{"--address", "flag.example:7233", "-n", "flag-ns"},
			want{address: "flag.example:7233", namespace: "flag-ns"}},
		{"no environment", mapEnv{"TEMPORAL_ADDRESS": "env.example:7233"}, []string{"--disable-config-env"},
			want{address: "file.example:7233", namespace: "file-ns"}},
		{"no file", nil, []string{"--disable-config-file"}, want{address: "127.0.0.1:7233", namespace: "default"}},
		{"the CLI's TLS variables", mapEnv{"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "/env/ca.pem", "TEMPORAL_TLS_SERVER_NAME": "t.example", "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION": "true"}, nil,
			want{address: "file.example:7233", namespace: "file-ns", ca: "/env/ca.pem", serverName: "t.example", tls: true, noVerify: true}},
		{"the CLI's older TLS variables over the newer", mapEnv{"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "/env/ca.pem", "TEMPORAL_TLS_CA": "/old/ca.pem"}, nil,
			want{address: "file.example:7233", namespace: "file-ns", ca: "/old/ca.pem", tls: true}},
		{"TLS flags over the environment", mapEnv{"TEMPORAL_TLS_CA": "/old/ca.pem"}, []string{"--tls-ca-path", "/flag/ca.pem", "--tls-disable-host-verification"},
			want{address: "file.example:7233", namespace: "file-ns", ca: "/flag/ca.pem", tls: true, noVerify: true}},
		{"TEMPORAL_TLS alone", mapEnv{"TEMPORAL_TLS": "true"}, nil, want{address: "file.example:7233", namespace: "file-ns", tls: true}},
		{"gRPC metadata from the environment and flags", mapEnv{"TEMPORAL_GRPC_META_X_TOKEN": "abc"}, []string{"--profile", "ops", "--grpc-meta", "X_Team=flag", "--grpc-meta", "x-more=1"},
			want{address: "ops.example:7233", namespace: "default", ca: "/file/ca.pem", tls: true, meta: map[string]string{"x-token": "abc", "x-team": "flag", "x-more": "1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := defaultGlobals()
			env := mapEnv{"TEMPORAL_CONFIG_FILE": file}
			maps.Copy(env, tt.env)
			g.env = env
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			g.register(fs)
			if err := fs.Parse(tt.flags); err != nil {
				t.Fatal(err)
			}
			prof, err := g.clientProfile()
			if err != nil {
				t.Fatal(err)
			}
			got := want{address: prof.Address, namespace: prof.Namespace, meta: prof.GRPCMeta}
			if prof.TLS != nil && !prof.TLS.Disabled {
				got.tls, got.ca, got.serverName, got.noVerify = true, prof.TLS.ServerCACertPath, prof.TLS.ServerName, prof.TLS.DisableHostVerification
			}
			if got.address != tt.want.address || got.namespace != tt.want.namespace || got.ca != tt.want.ca ||
				got.serverName != tt.want.serverName || got.tls != tt.want.tls || got.noVerify != tt.want.noVerify ||
				!maps.Equal(got.meta, tt.want.meta) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// Variables only earlier felhomctl versions read are refused by name.
func TestRetiredVariablesAreRefused(t *testing.T) {
	for old, repl := range retiredEnv {
		g := defaultGlobals()
		g.env = mapEnv{old: "x"}
		_, err := g.clientProfile()
		if err == nil || !strings.Contains(err.Error(), old) || !strings.Contains(err.Error(), repl) {
			t.Errorf("%s set: %v, want a refusal naming %s", old, err, repl)
		}
	}
}
