package worker

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const validYAML = `
host_id: pve1
temporal:
  address: temporal.example:7233
  namespace: fleet
  tls:
    server_name: temporal.example
proxmox:
  url: https://127.0.0.1:8006/api2/json
  token_id: felhom@pve!agent
  token_secret: s3cret
signers:
  operational:
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops
nonce_store: /var/lib/felhom-agent/nonces.log
provenance_ledger: /var/lib/felhom-agent/provenance.log
`

func TestLoadConfigFileThenEnvironment(t *testing.T) {
	path := writeFile(t, "agent.yaml", validYAML)
	cfg, err := LoadConfig(path, []string{
		"FELHOM_TEMPORAL_NAMESPACE=override",
		"FELHOM_PROXMOX_TIMEOUT=5s",
		"FELHOM_PROXMOX_INSECURE_SKIP_VERIFY=true",
		"FELHOM_SIGNERS_RECOVERY=ssh-ed25519 AAAA one\n\nssh-ed25519 BBBB two\n",
		"PATH=/usr/bin",
	})
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if cfg.HostID != "pve1" || cfg.Temporal.Address != "temporal.example:7233" {
		t.Errorf("file values lost: %+v", cfg)
	}
	if cfg.Temporal.Namespace != "override" {
		t.Errorf("namespace = %q, want the environment's", cfg.Temporal.Namespace)
	}
	if cfg.Proxmox.Timeout != 5*time.Second || !cfg.Proxmox.Insecure {
		t.Errorf("proxmox = %+v, want timeout 5s and insecure from the environment", cfg.Proxmox)
	}
	if cfg.Proxmox.Node != "pve1" {
		t.Errorf("proxmox.node = %q, want it to default to host_id", cfg.Proxmox.Node)
	}
	if want := []string{"ssh-ed25519 AAAA one", "ssh-ed25519 BBBB two"}; !slices.Equal(cfg.Signers.Recovery, want) {
		t.Errorf("recovery signers = %q, want %q", cfg.Signers.Recovery, want)
	}
	if cfg.Signers.MaxValidity != 24*time.Hour {
		t.Errorf("signers.max_validity = %s, want the 24h default", cfg.Signers.MaxValidity)
	}
	if cfg.Metrics.Address != "127.0.0.1:9464" || cfg.ShutdownTimeout != 30*time.Second {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if cfg.MaxConcurrentActivities != 16 || cfg.Proxmox.MaxConcurrentRequests != 4 {
		t.Errorf("load bounds %d activities, %d requests; want the defaults 16 and 4", cfg.MaxConcurrentActivities, cfg.Proxmox.MaxConcurrentRequests)
	}
}

func TestLoadBoundsFromFileAndEnvironment(t *testing.T) {
	cfg, err := LoadConfig(writeFile(t, "agent.yaml", validYAML+"max_concurrent_activities: 8\n"), []string{"FELHOM_PROXMOX_MAX_CONCURRENT_REQUESTS=2"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConcurrentActivities != 8 || cfg.Proxmox.MaxConcurrentRequests != 2 {
		t.Errorf("load bounds %d activities, %d requests; want 8 and 2", cfg.MaxConcurrentActivities, cfg.Proxmox.MaxConcurrentRequests)
	}
}

func TestLoadConfigRejects(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		env     []string
		wantErr string
	}{
		{"unknown yaml field", validYAML + "colour: blue\n", nil, "agent.yaml:17: colour: not a known setting"},
		{"unknown env key", validYAML, []string{"FELHOM_TEMPORAL_ADRESS=x:1"}, "FELHOM_TEMPORAL_ADRESS: not a known setting"},
		{"missing host id", strings.Replace(validYAML, "host_id: pve1", "", 1), nil, "host_id"},
		{"upper-case host id", validYAML, []string{"FELHOM_HOST_ID=PVE1"}, `host_id: "PVE1" must be`},
		{"address without port", validYAML, []string{"FELHOM_TEMPORAL_ADDRESS=temporal"}, `temporal.address: "temporal" is not host:port (or host:port,host:port,... or dns:///host:port)`},
		{"cert without key", validYAML, []string{"FELHOM_TEMPORAL_TLS_CERT_FILE=/etc/hostname"}, "temporal.tls: cert_file and key_file must be given together"},
		{"missing ca file", validYAML, []string{"FELHOM_TEMPORAL_TLS_CA_FILE=/nonexistent/ca.pem"}, "temporal.tls.ca_file"},
		{"proxmox url without api path", validYAML, []string{"FELHOM_PROXMOX_URL=https://pve:8006"}, "proxmox.url: \"https://pve:8006\" must end in /api2/json"},
		{"proxmox url other scheme", validYAML, []string{"FELHOM_PROXMOX_URL=ftp://pve/api2/json"}, "must start with https://"},
		{"token id without token name", validYAML, []string{"FELHOM_PROXMOX_TOKEN_ID=root@pam"}, "proxmox.token_id"},
		{"two token secrets", validYAML, []string{"FELHOM_PROXMOX_TOKEN_SECRET_FILE=/etc/hostname"}, "exactly one of token_secret_file"},
		{"insecure with ca", validYAML, []string{"FELHOM_PROXMOX_INSECURE_SKIP_VERIFY=1", "FELHOM_PROXMOX_CA_FILE=/etc/hostname"}, "conflicts with proxmox.ca_file"},
		{"bad bool", validYAML, []string{"FELHOM_PROXMOX_INSECURE_SKIP_VERIFY=maybe"}, `FELHOM_PROXMOX_INSECURE_SKIP_VERIFY: "maybe" is not a boolean`},
		{"bad duration", validYAML, []string{"FELHOM_SHUTDOWN_TIMEOUT=soon"}, "FELHOM_SHUTDOWN_TIMEOUT"},
		{"bad metrics address", validYAML, []string{"FELHOM_METRICS_ADDRESS=9464"}, "metrics.address"},
		{"bad log level", validYAML, []string{"FELHOM_LOG_LEVEL=loud"}, "log.level"},
		{"no nonce store", validYAML, []string{"FELHOM_NONCE_STORE="}, "nonce_store"},
		{"max validity over seven days", validYAML, []string{"FELHOM_SIGNERS_MAX_VALIDITY=169h"}, "signers.max_validity: 169h0m0s is outside (0, 168h0m0s]"},
		{"max validity zero", validYAML, []string{"FELHOM_SIGNERS_MAX_VALIDITY=0s"}, "signers.max_validity: 0s is outside"},
		{"max validity negative", validYAML, []string{"FELHOM_SIGNERS_MAX_VALIDITY=-1h"}, "signers.max_validity: -1h0m0s is outside"},
		{"proxmox timeout over half the heartbeat timeout", validYAML, []string{"FELHOM_PROXMOX_TIMEOUT=31s"}, "proxmox.timeout: 31s is more than 30s, half of the activities' heartbeat timeout (1m0s)"},
		{"no proxmox request slot", validYAML, []string{"FELHOM_PROXMOX_MAX_CONCURRENT_REQUESTS=0"}, "proxmox.max_concurrent_requests: must be at least 1, got 0"},
		{"no activity slot", validYAML + "max_concurrent_activities: 0\n", nil, "max_concurrent_activities: must be at least 1, got 0"},
		{"bad number", validYAML, []string{"FELHOM_MAX_CONCURRENT_ACTIVITIES=many"}, `FELHOM_MAX_CONCURRENT_ACTIVITIES: "many" is not a whole number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig(writeFile(t, "agent.yaml", tt.yaml), tt.env)
			if err == nil {
				t.Fatalf("LoadConfig succeeded, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %v\nwant it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// Plaintext to Temporal or Proxmox is accepted on loopback, and elsewhere
// only when the configuration says so explicitly.
func TestPlaintextNeedsLoopbackOrAnExplicitSetting(t *testing.T) {
	const noTLS = "FELHOM_TEMPORAL_TLS_SERVER_NAME="
	tests := []struct {
		name    string
		env     []string
		wantErr []string // empty: accepted
	}{
		{"temporal with tls", nil, nil},
		{"temporal plaintext to another host", []string{noTLS},
			[]string{`temporal.address: "temporal.example:7233" is not a loopback address and temporal.tls is not configured`, "set temporal.insecure: true"}},
		{"temporal plaintext to an ip", []string{noTLS, "FELHOM_TEMPORAL_ADDRESS=10.0.0.5:7233"}, []string{`temporal.address: "10.0.0.5:7233" is not a loopback address`}},
		{"temporal plaintext to a name, never resolved", []string{noTLS, "FELHOM_TEMPORAL_ADDRESS=localhost.example:7233"}, []string{"temporal.address"}},
		{"temporal plaintext, insecure", []string{noTLS, "FELHOM_TEMPORAL_INSECURE=true"}, nil},
		{"temporal plaintext to 127.0.0.1", []string{noTLS, "FELHOM_TEMPORAL_ADDRESS=127.0.0.1:7233"}, nil},
		{"temporal plaintext to 127.0.0.2", []string{noTLS, "FELHOM_TEMPORAL_ADDRESS=127.0.0.2:7233"}, nil},
		{"temporal plaintext to localhost", []string{noTLS, "FELHOM_TEMPORAL_ADDRESS=localhost:7233"}, nil},
		{"temporal plaintext to ::1", []string{noTLS, "FELHOM_TEMPORAL_ADDRESS=[::1]:7233"}, nil},
		{"temporal plaintext to several loopback frontends", []string{noTLS, "FELHOM_TEMPORAL_ADDRESS=127.0.0.1:7233,127.0.0.1:7234"}, nil},
		{"temporal plaintext to several frontends, one remote", []string{noTLS, "FELHOM_TEMPORAL_ADDRESS=127.0.0.1:7233,10.0.0.5:7233"},
			[]string{`temporal.address: "127.0.0.1:7233,10.0.0.5:7233" is not a loopback address`}},
		{"temporal plaintext to a dns name", []string{noTLS, "FELHOM_TEMPORAL_ADDRESS=dns:///temporal.example:7233"}, []string{"temporal.address"}},
		{"temporal dns name with tls", []string{"FELHOM_TEMPORAL_ADDRESS=dns:///temporal.example:7233"}, nil},
		{"temporal list with an empty part", []string{"FELHOM_TEMPORAL_ADDRESS=temporal.example:7233,"}, []string{`temporal.address: "temporal.example:7233," is not host:port`}},
		{"temporal mtls with the system's CAs", []string{noTLS, "FELHOM_TEMPORAL_TLS_CERT_FILE=/etc/hostname", "FELHOM_TEMPORAL_TLS_KEY_FILE=/etc/hostname"}, nil},
		{"temporal insecure and tls", []string{"FELHOM_TEMPORAL_INSECURE=true"}, []string{"temporal.insecure: conflicts with temporal.tls"}},
		{"proxmox http to another host", []string{"FELHOM_PROXMOX_URL=http://pve1.example:8006/api2/json"},
			[]string{`proxmox.url: "http://pve1.example:8006/api2/json" is plain http to a host that is not loopback`, "use https://, or set proxmox.insecure_http: true"}},
		{"proxmox http, insecure_http", []string{"FELHOM_PROXMOX_URL=http://pve1.example:8006/api2/json", "FELHOM_PROXMOX_INSECURE_HTTP=true"}, nil},
		{"proxmox http to loopback", []string{"FELHOM_PROXMOX_URL=http://127.0.0.1:8006/api2/json"}, nil},
		{"proxmox http to localhost", []string{"FELHOM_PROXMOX_URL=http://localhost:8006/api2/json"}, nil},
		{"proxmox insecure_http with https", []string{"FELHOM_PROXMOX_INSECURE_HTTP=true"}, []string{`proxmox.insecure_http: applies only to an http:// proxmox.url, and "https://127.0.0.1:8006/api2/json" is not one`}},
		{"both at once", []string{noTLS, "FELHOM_PROXMOX_URL=http://pve1.example:8006/api2/json"}, []string{"temporal.address", "proxmox.url"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig(writeFile(t, "agent.yaml", validYAML), tt.env)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("LoadConfig: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadConfig succeeded, want %q", tt.wantErr)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error = %v\nwant it to contain %q", err, want)
				}
			}
		})
	}
}

func TestMaxValidityUpToSevenDays(t *testing.T) {
	for _, v := range []string{"1m", "24h", "168h"} {
		cfg, err := LoadConfig(writeFile(t, "agent.yaml", validYAML), []string{"FELHOM_SIGNERS_MAX_VALIDITY=" + v})
		if err != nil {
			t.Errorf("max_validity %s: %v", v, err)
			continue
		}
		if want, _ := time.ParseDuration(v); cfg.Signers.MaxValidity != want {
			t.Errorf("max_validity = %s, want %s", cfg.Signers.MaxValidity, want)
		}
	}
}

// Every problem of a configuration is reported in one run, whatever its
// sort: a value of the wrong type or an unknown key in the file, a bad or
// unknown variable in the environment, and what Validate finds in the
// rest. A setting whose value could not be read is reported once, not
// again by Validate for the default left in its place.
func TestLoadConfigReportsEveryKindOfProblemAtOnce(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  []string
		want []string // each problem, in order, as printed
	}{
		{
			name: "three mistakes of three sorts",
			yaml: validYAML + "max_concurrent_activities: many\ncolour: blue\n",
			env:  []string{"FELHOM_HOST_ID=PVE 1"},
			want: []string{
				`config: agent.yaml:17: max_concurrent_activities: "many" is not a whole number`,
				`config: agent.yaml:18: colour: not a known setting (see felhom-agent run --help)`,
				`config: host_id: "PVE 1" must be 1-63 lower-case letters`,
			},
		},
		{
			name: "several type errors, nested keys and the environment",
			yaml: strings.NewReplacer("  namespace: fleet", "  namespace: [a, b]\n  adress: x", "  token_secret: s3cret", "  token_secret: s3cret\n  timeout: 5").Replace(validYAML) +
				"signers:\n  max_validity: forever\n",
			env: []string{"FELHOM_PROXMOX_INSECURE_SKIP_VERIFY=maybe", "FELHOM_LOG_LEVL=debug", "FELHOM_SHUTDOWN_TIMEOUT=-1s"},
			want: []string{
				`config: agent.yaml:5: temporal.namespace: must be a single value, not a list`,
				`config: agent.yaml:6: temporal.adress: not a known setting`,
				`config: agent.yaml:13: proxmox.timeout: "5" is not a duration with a unit (30s, 5m, 1h30m)`,
				`config: agent.yaml:19: signers: given twice (first on line 14): keep one`,
				`config: FELHOM_PROXMOX_INSECURE_SKIP_VERIFY: "maybe" is not a boolean`,
				`config: FELHOM_LOG_LEVL: not a known setting`,
				`config: shutdown_timeout: must be positive, got -1s`,
			},
		},
		{
			name: "a section of the wrong shape",
			yaml: validYAML + "log: debug\nmetrics:\n  address: [1]\n",
			want: []string{
				`config: agent.yaml:17: log: must be a mapping of settings, not "debug"`,
				`config: agent.yaml:19: metrics.address: must be a single value, not a list`,
			},
		},
		{
			name: "a file that is not YAML is one problem, the environment's are still told",
			yaml: "host_id: [pve1\n",
			env:  []string{"FELHOM_NOPE=1"},
			want: []string{"not valid YAML", "config: FELHOM_NOPE: not a known setting"},
		},
		{
			name: "two documents",
			yaml: validYAML + "---\nhost_id: pve2\n",
			want: []string{"holds more than one YAML document"},
		},
		{
			name: "only the validation",
			env:  []string{"FELHOM_TEMPORAL_ADDRESS=nope"},
			want: []string{"config: host_id:", "config: temporal.address:", "config: proxmox.url:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.yaml != "" {
				path = filepath.Join(t.TempDir(), "agent.yaml")
				if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := LoadConfig(path, tt.env)
			if err == nil {
				t.Fatal("LoadConfig accepted it")
			}
			msg := err.Error()
			if path != "" {
				msg = strings.ReplaceAll(msg, path, "agent.yaml")
			}
			lines := strings.Split(msg, "\n")
			if len(lines) != len(tt.want) {
				t.Errorf("%d problems, want %d:\n%s", len(lines), len(tt.want), strings.Join(lines, "\n"))
			}
			for i, want := range tt.want {
				if i < len(lines) && !strings.Contains(lines[i], want) {
					t.Errorf("problem %d = %q\nwant it to contain %q", i+1, lines[i], want)
				}
			}
		})
	}
}

// The settings a file gets right are kept beside the ones it gets wrong,
// and a wrong one keeps its default.
func TestLoadConfigUnvalidatedKeepsWhatItCouldRead(t *testing.T) {
	path := writeFile(t, "agent.yaml", validYAML+"shutdown_timeout: soon\ndrift_check_interval: 5m\n")
	cfg, err := LoadConfigUnvalidated(path, nil)
	var fe *FieldError
	if !errors.As(err, &fe) || !strings.Contains(fe.Field, "shutdown_timeout") {
		t.Fatalf("error = %v, want a *FieldError naming shutdown_timeout", err)
	}
	if cfg.HostID != "pve1" || cfg.DriftCheckInterval != 5*time.Minute || cfg.ShutdownTimeout != 30*time.Second {
		t.Errorf("host_id %q, drift %s, shutdown %s; want the file's pve1 and 5m, and the default 30s", cfg.HostID, cfg.DriftCheckInterval, cfg.ShutdownTimeout)
	}
}

func TestLoadConfigRefusesAHugeFile(t *testing.T) {
	path := writeFile(t, "agent.yaml", "# "+strings.Repeat("x", MaxConfigSize)+"\n")
	if _, err := LoadConfig(path, nil); err == nil || !strings.Contains(err.Error(), "larger than 1024 KiB") {
		t.Errorf("error = %v, want the size refused", err)
	}
}

func TestLoadConfigReportsAllProblemsAtOnce(t *testing.T) {
	_, err := LoadConfig("", []string{"FELHOM_TEMPORAL_ADDRESS=nope"})
	if err == nil {
		t.Fatal("empty configuration accepted")
	}
	for _, field := range []string{"host_id", "temporal.address", "proxmox.url"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not mention %s:\n%v", field, err)
		}
	}
}

func TestEnvKeysNameEveryLeafField(t *testing.T) {
	keys := EnvKeys()
	for _, want := range []string{
		"FELHOM_HOST_ID", "FELHOM_TEMPORAL_ADDRESS", "FELHOM_TEMPORAL_TLS_CA_FILE",
		"FELHOM_TEMPORAL_API_KEY_FILE", "FELHOM_PROXMOX_TOKEN_SECRET_FILE",
		"FELHOM_SIGNERS_OPERATIONAL", "FELHOM_NONCE_STORE", "FELHOM_PROVENANCE_LEDGER",
		"FELHOM_METRICS_ADDRESS", "FELHOM_LOG_LEVEL", "FELHOM_SHUTDOWN_TIMEOUT",
		"FELHOM_MAX_CONCURRENT_ACTIVITIES", "FELHOM_PROXMOX_MAX_CONCURRENT_REQUESTS",
	} {
		if !slices.Contains(keys, want) {
			t.Errorf("EnvKeys lacks %s", want)
		}
	}
}

// Environ hands every setting over: each leaf set to something other than
// its default comes back from ApplyEnv on the defaults, and the defaults
// need no variable at all.
func TestEnvironRoundTripsThroughApplyEnv(t *testing.T) {
	if env := Defaults().Environ(); len(env) != 0 {
		t.Fatalf("the defaults as variables: %q, want none", env)
	}
	c := Defaults()
	walkFields(reflect.ValueOf(&c).Elem(), EnvPrefix, func(key string, f reflect.Value) {
		switch {
		case f.Type() == reflect.TypeFor[time.Duration]():
			f.SetInt(f.Int() + int64(3*time.Second))
		case f.Kind() == reflect.String:
			f.SetString("value of " + key)
		case f.Kind() == reflect.Int:
			f.SetInt(f.Int() + 7)
		case f.Kind() == reflect.Bool:
			f.SetBool(!f.Bool())
		case f.Kind() == reflect.Slice:
			f.Set(reflect.ValueOf([]string{"first of " + key, "second"}))
		default:
			t.Fatalf("%s: no test value for %s", key, f.Type())
		}
	})
	env := c.Environ()
	if len(env) != len(EnvKeys()) {
		t.Errorf("%d variables for %d settings: %q", len(env), len(EnvKeys()), env)
	}
	got := Defaults()
	if err := got.ApplyEnv(env); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("through the environment:\n got %+v\nwant %+v", got, c)
	}
}
