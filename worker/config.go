package worker

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/temporalclient"
	"github.com/felhom/felhom-agent/workflows"
)

// Config is the agent's configuration: a YAML file, then FELHOM_* environment
// variables on top (see EnvKeys), then Validate.
type Config struct {
	// HostID names this Proxmox host in workflow IDs, task queues and signed
	// ops. It is pinned: a signed op for another host is refused.
	HostID     string         `yaml:"host_id"`
	Temporal   TemporalConfig `yaml:"temporal"`
	Proxmox    ProxmoxConfig  `yaml:"proxmox"`
	Signers    SignersConfig  `yaml:"signers"`
	NonceStore string         `yaml:"nonce_store"`
	// PinnedSigners is where a signed signers.rotate op stores the new keys;
	// once it exists it replaces Signers.
	PinnedSigners    string        `yaml:"pinned_signers"`
	ProvenanceLedger string        `yaml:"provenance_ledger"`
	Metrics          MetricsConfig `yaml:"metrics"`
	Log              LogConfig     `yaml:"log"`
	// DriftCheckInterval is how often the host workflow lists the node's
	// guests to find drift from the desired state.
	DriftCheckInterval time.Duration `yaml:"drift_check_interval"`
	// ShutdownTimeout is how long in-flight activities get to heartbeat and
	// stop after SIGINT/SIGTERM before the worker gives up on them; Temporal
	// then retries them elsewhere or after restart.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MaxConcurrentActivities bounds the activities this worker runs at once;
	// the rest wait in Temporal's task queue.
	MaxConcurrentActivities int `yaml:"max_concurrent_activities"`
}

// TemporalConfig says how to reach the Temporal cluster.
type TemporalConfig struct {
	Address   string    `yaml:"address"`
	Namespace string    `yaml:"namespace"`
	TLS       TLSConfig `yaml:"tls"`
	// Insecure accepts plaintext to an Address that is not loopback. Without
	// it, such an address needs TLS.
	Insecure bool `yaml:"insecure"`
	// APIKeyFile holds an API key sent as a bearer token (Temporal Cloud or
	// a cluster with an authorizer). APIKey is for the environment only.
	APIKeyFile string `yaml:"api_key_file"`
	APIKey     string `yaml:"api_key"`
}

// TLSConfig is a client TLS setup: a CA to trust and, for mTLS, a client
// certificate and key.
type TLSConfig struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// ProxmoxConfig says how to reach this host's Proxmox VE API.
type ProxmoxConfig struct {
	// URL is the API base, e.g. https://127.0.0.1:8006/api2/json. Empty in
	// `dev` means: run the simulator.
	URL  string `yaml:"url"`
	Node string `yaml:"node"`
	// TokenID is USER@REALM!TOKENNAME.
	TokenID         string `yaml:"token_id"`
	TokenSecretFile string `yaml:"token_secret_file"`
	TokenSecret     string `yaml:"token_secret"`
	CAFile          string `yaml:"ca_file"`
	Insecure        bool   `yaml:"insecure_skip_verify"`
	// InsecureHTTP accepts an http:// URL to a host that is not loopback.
	// Without it, only loopback (e.g. the simulator) may be plain http.
	InsecureHTTP bool `yaml:"insecure_http"`
	// Timeout bounds one request, counted once it is sent; at most half of
	// workflows.HeartbeatTimeout, since an activity heartbeats between
	// requests.
	Timeout time.Duration `yaml:"timeout"`
	// MaxConcurrentRequests bounds the requests in flight to the Proxmox API
	// at once; the others wait their turn.
	MaxConcurrentRequests int `yaml:"max_concurrent_requests"`
}

// SignersConfig pins the operators' public keys, one OpenSSH
// authorized_keys or allowed_signers line each, and caps how long a signed
// op may stay valid.
type SignersConfig struct {
	Operational []string `yaml:"operational"`
	Recovery    []string `yaml:"recovery"`
	// MaxValidity is the longest validity window (expires_at - not_before,
	// and expires_at - now) the host accepts: at most gate.MaxValidityLimit,
	// gate.DefaultMaxValidity unless set.
	MaxValidity time.Duration `yaml:"max_validity"`
}

// MetricsConfig is where the SDK's Prometheus metrics are served; "off"
// disables them.
type MetricsConfig struct {
	Address string `yaml:"address"`
}

// LogConfig selects the level and format of the structured log.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Defaults returns the configuration a file is laid over.
func Defaults() Config {
	return Config{
		Temporal:           TemporalConfig{Address: "127.0.0.1:7233", Namespace: "default"},
		Proxmox:            ProxmoxConfig{Timeout: 30 * time.Second, MaxConcurrentRequests: DefaultMaxConcurrentRequests},
		Signers:            SignersConfig{MaxValidity: gate.DefaultMaxValidity},
		NonceStore:         "/var/lib/felhom-agent/nonces.log",
		PinnedSigners:      "/var/lib/felhom-agent/signers.json",
		ProvenanceLedger:   "/var/lib/felhom-agent/provenance.log",
		Metrics:            MetricsConfig{Address: "127.0.0.1:9464"},
		Log:                LogConfig{Level: "info", Format: "json"},
		ShutdownTimeout:    30 * time.Second,
		DriftCheckInterval: time.Minute,

		MaxConcurrentActivities: DefaultMaxConcurrentActivities,
	}
}

// Defaults of the load bounds. After a day down every guest's resync is due
// at once; these keep that from reaching Proxmox as one burst.
const (
	DefaultMaxConcurrentActivities = 16
	DefaultMaxConcurrentRequests   = 4
)

// LoadConfig reads path (if not empty) over the defaults, applies the
// environment and validates the result. It reports every problem at once,
// each a *FieldError naming the setting (the file's line and YAML path, or
// the environment variable) and the reason: unknown keys and variables,
// values of the wrong type, and whatever Validate finds in the rest.
func LoadConfig(path string, environ []string) (Config, error) {
	cfg, err := LoadConfigUnvalidated(path, environ)
	if errs := JoinProblems(err, cfg.Validate()); errs != nil {
		return Config{}, errs
	}
	return cfg, nil
}

// LoadConfigUnvalidated is LoadConfig for a caller that fills in more
// fields before it calls Validate itself. Beside an error it returns the
// settings it could read, so that the caller can report its own checks in
// the same run (JoinProblems); only an unreadable file returns nothing.
func LoadConfigUnvalidated(path string, environ []string) (Config, error) {
	cfg := Defaults()
	var errs []error
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		data, err := readConfigFile(f, path)
		f.Close()
		if err != nil {
			return Config{}, err
		}
		if err := decodeYAML(data, path, &cfg); err != nil {
			errs = append(errs, err)
		}
	}
	if err := cfg.ApplyEnv(environ); err != nil {
		errs = append(errs, err)
	}
	if cfg.Proxmox.Node == "" {
		cfg.Proxmox.Node = cfg.HostID
	}
	return cfg, errors.Join(errs...)
}

// JoinProblems joins the problems of loading (LoadConfigUnvalidated) and of
// validating one configuration, leaving out what validation says of a
// setting whose value could not be read: that one is already reported, and
// the default left in its place is not the user's.
func JoinProblems(load, validate error) error {
	if load == nil {
		return validate
	}
	unread := map[string]bool{}
	for _, e := range flattenErrors(load) {
		if fe, ok := e.(*FieldError); ok && fe.path != "" {
			unread[fe.path] = true
		}
		// A file that is not YAML leaves everything at its default.
		if _, ok := e.(*FieldError); !ok {
			return load
		}
	}
	errs := []error{load}
	for _, e := range flattenErrors(validate) {
		if fe, ok := e.(*FieldError); ok && unread[fe.path] {
			continue
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

// flattenErrors undoes errors.Join.
func flattenErrors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flattenErrors(e)...)
		}
		return out
	}
	return []error{err}
}

// EnvPrefix starts every environment override.
const EnvPrefix = "FELHOM_"

// EnvKeys lists every environment variable the configuration accepts, each
// named after its YAML path: temporal.tls.ca_file is FELHOM_TEMPORAL_TLS_CA_FILE.
func EnvKeys() []string {
	var keys []string
	walkFields(reflect.ValueOf(&Config{}).Elem(), EnvPrefix, func(key string, _ reflect.Value) {
		keys = append(keys, key)
	})
	return keys
}

// ApplyEnv overrides fields from FELHOM_* variables in environ (os.Environ
// form). A list takes one item per line; a duration is Go syntax ("30s").
// An unknown FELHOM_ variable is an error, so a typo does not go unnoticed.
func (c *Config) ApplyEnv(environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, EnvPrefix) {
			env[k] = v
		}
	}
	var errs []error
	walkFields(reflect.ValueOf(c).Elem(), EnvPrefix, func(key string, f reflect.Value) {
		v, ok := env[key]
		if !ok {
			return
		}
		delete(env, key)
		if err := setField(f, v); err != nil {
			errs = append(errs, &FieldError{Field: key, Reason: err.Error(), path: envPath(key)})
		}
	})
	unknown := slices.Sorted(maps.Keys(env))
	for _, k := range unknown {
		if k == "FELHOM_CONFIG" {
			continue
		}
		errs = append(errs, &FieldError{Field: k, Reason: "not a known setting (see felhom-agent run --help)"})
	}
	return errors.Join(errs...)
}

// Environ is c as FELHOM_* variables (os.Environ form): one for each
// setting that differs from Defaults, so that ApplyEnv of the result on
// Defaults gives c again. It is how a worker's configuration is handed to
// a child process without a file.
func (c Config) Environ() []string {
	var env []string
	def := Defaults()
	defaults := map[string]reflect.Value{}
	walkFields(reflect.ValueOf(&def).Elem(), EnvPrefix, func(key string, f reflect.Value) { defaults[key] = f })
	walkFields(reflect.ValueOf(&c).Elem(), EnvPrefix, func(key string, f reflect.Value) {
		if reflect.DeepEqual(f.Interface(), defaults[key].Interface()) {
			return
		}
		env = append(env, key+"="+formatField(f))
	})
	return env
}

// formatField is setField's inverse.
func formatField(f reflect.Value) string {
	switch {
	case f.Type() == reflect.TypeFor[time.Duration]():
		return time.Duration(f.Int()).String()
	case f.Kind() == reflect.Slice:
		return strings.Join(f.Interface().([]string), "\n")
	default:
		return fmt.Sprint(f.Interface())
	}
}

// envPath is the YAML path of the setting the known variable key sets.
func envPath(key string) string {
	var path string
	walkPaths(reflect.TypeFor[Config](), EnvPrefix, "", func(k, p string) {
		if k == key {
			path = p
		}
	})
	return path
}

func walkPaths(t reflect.Type, prefix, path string, fn func(key, path string)) {
	for i := range t.NumField() {
		tag := t.Field(i).Tag.Get("yaml")
		if tag == "" || tag == "-" {
			continue
		}
		key, sub := prefix+strings.ToUpper(tag), tag
		if path != "" {
			sub = path + "." + tag
		}
		if ft := t.Field(i).Type; ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Duration]() {
			walkPaths(ft, key+"_", sub, fn)
			continue
		}
		fn(key, sub)
	}
}

func walkFields(v reflect.Value, prefix string, fn func(key string, f reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		tag := t.Field(i).Tag.Get("yaml")
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + strings.ToUpper(tag)
		f := v.Field(i)
		if f.Kind() == reflect.Struct {
			walkFields(f, key+"_", fn)
			continue
		}
		fn(key, f)
	}
}

func setField(f reflect.Value, v string) error {
	switch {
	case f.Type() == reflect.TypeFor[time.Duration]():
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(v)
	case f.Kind() == reflect.Int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", v)
		}
		f.SetInt(int64(n))
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not a boolean", v)
		}
		f.SetBool(b)
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
		var items []string
		for line := range strings.SplitSeq(v, "\n") {
			if line = strings.TrimSpace(line); line != "" {
				items = append(items, line)
			}
		}
		f.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("unsupported field type %s", f.Type())
	}
	return nil
}

var (
	hostIDPattern  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	tokenIDPattern = regexp.MustCompile(`^[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*$`)
)

// Validate checks every field and reports all problems at once, each naming
// its field and the reason.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...), path: field})
	}
	if !hostIDPattern.MatchString(c.HostID) {
		bad("host_id", "%q must be 1-63 lower-case letters, digits or '-', starting with a letter or digit", c.HostID)
	}
	tlsOn := clientConfig(c.Temporal).TLS.Enabled()
	if frontends, err := temporalclient.Frontends(c.Temporal.Address); err != nil {
		bad("temporal.address", "%v", err)
	} else if !tlsOn && !c.Temporal.Insecure && !allLoopback(frontends) {
		bad("temporal.address", "%q is not a loopback address and temporal.tls is not configured, so the worker would talk to Temporal in plaintext: "+
			"configure temporal.tls (ca_file, or server_name to use the system's CAs), or set temporal.insecure: true to accept plaintext explicitly", c.Temporal.Address)
	}
	if tlsOn && c.Temporal.Insecure {
		bad("temporal.insecure", "conflicts with temporal.tls: remove one (insecure accepts plaintext; tls is configured)")
	}
	if c.Temporal.Namespace == "" {
		bad("temporal.namespace", "must not be empty")
	}
	tls := c.Temporal.TLS
	if (tls.CertFile == "") != (tls.KeyFile == "") {
		bad("temporal.tls", "cert_file and key_file must be given together")
	}
	for field, path := range map[string]string{
		"temporal.tls.ca_file": tls.CAFile, "temporal.tls.cert_file": tls.CertFile,
		"temporal.tls.key_file": tls.KeyFile, "temporal.api_key_file": c.Temporal.APIKeyFile,
		"proxmox.ca_file": c.Proxmox.CAFile, "proxmox.token_secret_file": c.Proxmox.TokenSecretFile,
	} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			bad(field, "%v", err)
		}
	}
	if c.Temporal.APIKey != "" && c.Temporal.APIKeyFile != "" {
		bad("temporal.api_key", "give api_key or api_key_file, not both")
	}
	errs = append(errs, c.validateProxmox()...)
	if v := c.Signers.MaxValidity; v <= 0 || v > gate.MaxValidityLimit {
		bad("signers.max_validity", "%s is outside (0, %s]: a host accepts ops valid for at most 7 days (default %s)", v, gate.MaxValidityLimit, gate.DefaultMaxValidity)
	}
	if c.NonceStore == "" {
		bad("nonce_store", "must name the file of the host-local nonce store")
	}
	if c.PinnedSigners == "" {
		bad("pinned_signers", "must name the file of the host's rotated signer keys")
	}
	if c.ProvenanceLedger == "" {
		bad("provenance_ledger", "must name the file of the host-local provenance ledger")
	}
	if c.Metrics.Address != "off" {
		if _, _, err := net.SplitHostPort(c.Metrics.Address); err != nil {
			bad("metrics.address", "%q is not host:port or \"off\"", c.Metrics.Address)
		}
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		bad("log.level", "%v", err)
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		bad("log.format", "%q is not json or text", c.Log.Format)
	}
	if c.DriftCheckInterval < time.Second {
		bad("drift_check_interval", "must be at least 1s, got %s", c.DriftCheckInterval)
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown_timeout", "must be positive, got %s", c.ShutdownTimeout)
	}
	if c.MaxConcurrentActivities < 1 {
		bad("max_concurrent_activities", "must be at least 1, got %d", c.MaxConcurrentActivities)
	}
	return errors.Join(errs...)
}

// allLoopback reports whether every host:port of frontends is loopback.
func allLoopback(frontends []string) bool {
	for _, f := range frontends {
		if host, _, _ := net.SplitHostPort(f); !isLoopback(host) {
			return false
		}
	}
	return true
}

// isLoopback reports whether host (a name or an IP, from an address or a
// URL) is this machine: localhost, 127.0.0.0/8, ::1, or empty (dialing
// ":port" reaches the local system). Other names are not resolved: a name
// is loopback only when it says so.
func isLoopback(host string) bool {
	if host == "" || strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateProxmox() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...), path: field})
	}
	p := c.Proxmox
	if p.URL == "" {
		bad("proxmox.url", "must be set, e.g. https://127.0.0.1:8006/api2/json")
		return errs
	}
	u, err := url.Parse(p.URL)
	switch {
	case err != nil:
		bad("proxmox.url", "%v", err)
	case u.Scheme != "https" && u.Scheme != "http":
		bad("proxmox.url", "%q must start with https://", p.URL)
	case u.Host == "":
		bad("proxmox.url", "%q has no host", p.URL)
	case !strings.HasSuffix(strings.TrimSuffix(u.Path, "/"), "/api2/json"):
		bad("proxmox.url", "%q must end in /api2/json", p.URL)
	case u.Scheme == "http" && !p.InsecureHTTP && !isLoopback(u.Hostname()):
		bad("proxmox.url", "%q is plain http to a host that is not loopback, so the API token and every request would cross the network in clear: "+
			"use https://, or set proxmox.insecure_http: true to accept it explicitly", p.URL)
	}
	if p.InsecureHTTP && (err != nil || u.Scheme != "http") {
		bad("proxmox.insecure_http", "applies only to an http:// proxmox.url, and %q is not one", p.URL)
	}
	if !tokenIDPattern.MatchString(p.TokenID) {
		bad("proxmox.token_id", "%q is not USER@REALM!TOKENNAME", p.TokenID)
	}
	if (p.TokenSecret == "") == (p.TokenSecretFile == "") {
		bad("proxmox.token_secret_file", "give exactly one of token_secret_file or FELHOM_PROXMOX_TOKEN_SECRET")
	}
	if p.Insecure && p.CAFile != "" {
		bad("proxmox.insecure_skip_verify", "conflicts with proxmox.ca_file")
	}
	if p.Timeout <= 0 {
		bad("proxmox.timeout", "must be positive, got %s", p.Timeout)
	}
	if limit := workflows.HeartbeatTimeout / 2; p.Timeout > limit {
		bad("proxmox.timeout", "%s is more than %s, half of the activities' heartbeat timeout (%s): a request that long would leave "+
			"Temporal without a heartbeat and start the step's next attempt beside it", p.Timeout, limit, workflows.HeartbeatTimeout)
	}
	if p.MaxConcurrentRequests < 1 {
		bad("proxmox.max_concurrent_requests", "must be at least 1, got %d", p.MaxConcurrentRequests)
	}
	return errs
}
