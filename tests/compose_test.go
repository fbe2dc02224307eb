package tests

// The checks of docker-compose.yml, the Dockerfile and .dockerignore. There is
// no Docker engine where these tests run, so the files are parsed and held
// against what the code really reads: the agent's configuration loader, the
// search attributes the workflows upsert, and the Temporal server's own
// configuration template, dynamic config loader and embedded SQL schemas
// (the same go.temporal.io/server version the images run).

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	serverconfig "go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	dbschema "go.temporal.io/server/schema"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pgcluster"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/worker"
)

// The services of docker-compose.yml, by role.
const (
	composeDB     = "postgresql"
	composeSchema = "temporal-schema"
	composeServer = "temporal"
	composeSetup  = "temporal-setup"
	composeUI     = "temporal-ui"
	composeAgent  = "felhom-agent"
)

// composeHostEnv is an operator's .env: the per-host settings the compose
// file requires, and nothing else, so every other default applies.
func composeHostEnv(t *testing.T) map[string]string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " ops@example"
	return map[string]string{
		"FELHOM_HOST_ID":             "pve1",
		"FELHOM_PROXMOX_URL":         "https://pve1.example.net:8006/api2/json",
		"FELHOM_PROXMOX_TOKEN_ID":    "felhom@pve!agent",
		"FELHOM_SIGNERS_OPERATIONAL": key,
	}
}

func TestComposeHasNoVersionKeyAndPinnedImages(t *testing.T) {
	f := loadCompose(t, composeHostEnv(t))
	if f.Version != nil {
		t.Errorf("docker-compose.yml: top-level version: %q is obsolete in the Compose spec; remove it", *f.Version)
	}
	serverVersion := goModVersion(t, "go.temporal.io/server")
	uiVersion := goModVersion(t, "github.com/temporalio/ui-server/v2")
	pinned := map[string]*regexp.Regexp{
		"postgres":               regexp.MustCompile(`^\d+$`), // a major, as the official image tags it
		"temporalio/server":      regexp.MustCompile(`^` + regexp.QuoteMeta(serverVersion) + `$`),
		"temporalio/admin-tools": regexp.MustCompile(`^` + regexp.QuoteMeta(serverVersion) + `$`),
		"temporalio/ui":          regexp.MustCompile(`^` + regexp.QuoteMeta(uiVersion) + `$`),
	}
	seen := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(f.Services)) {
		svc := f.Services[name]
		if svc.Build != nil {
			continue
		}
		repo, tag, ok := strings.Cut(svc.Image, ":")
		if !ok {
			t.Errorf("service %s: image %q has no tag; pin it", name, svc.Image)
			continue
		}
		want, known := pinned[repo]
		if !known {
			t.Errorf("service %s: image %q is not one of the official images this stack uses (%v)", name, svc.Image, slices.Sorted(maps.Keys(pinned)))
			continue
		}
		if !want.MatchString(tag) {
			t.Errorf("service %s: image %q: tag %q does not match %s (go.mod has server %s, ui-server %s)", name, svc.Image, tag, want, serverVersion, uiVersion)
		}
		seen[repo] = true
	}
	for _, repo := range slices.Sorted(maps.Keys(pinned)) {
		if !seen[repo] {
			t.Errorf("no service runs %s", repo)
		}
	}
}

func TestComposeRequiresThePerHostSettings(t *testing.T) {
	// A default here would let two hosts share a host_id (and so a task
	// queue and each other's signed ops) or start with no operator key.
	for _, key := range []string{"FELHOM_HOST_ID", "FELHOM_PROXMOX_URL", "FELHOM_PROXMOX_TOKEN_ID", "FELHOM_SIGNERS_OPERATIONAL"} {
		t.Run(key, func(t *testing.T) {
			env := composeHostEnv(t)
			delete(env, key)
			_, err := parseCompose(t, env)
			if err == nil || !strings.Contains(err.Error(), key) {
				t.Fatalf("docker-compose.yml without %s in .env: got %v, want an interpolation error naming it (${%s:?...})", key, err, key)
			}
		})
	}
}

func TestComposeAgentEnvironmentUsesOnlyKnownKeys(t *testing.T) {
	f := loadCompose(t, composeHostEnv(t))
	agent := f.service(t, composeAgent)
	known := map[string]bool{"FELHOM_CONFIG": true}
	for _, k := range worker.EnvKeys() {
		known[k] = true
	}
	if len(agent.Environment) == 0 {
		t.Fatalf("service %s: sets no environment", composeAgent)
	}
	// A .env variable named like a setting must be that setting.
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\$\{(`+worker.EnvPrefix+`\w+)`).FindAllSubmatch(raw, -1) {
		if name := string(m[1]); !known[name] {
			t.Errorf("docker-compose.yml: variable ${%s} looks like an agent setting but is none; name it without %s", name, worker.EnvPrefix)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(agent.Environment)) {
		switch {
		case !strings.HasPrefix(key, worker.EnvPrefix):
			t.Errorf("service %s: environment %s is not read by felhom-agent (only %s* keys are)", composeAgent, key, worker.EnvPrefix)
		case !known[key]:
			t.Errorf("service %s: environment %s is not a setting of the agent's configuration (see worker.EnvKeys)", composeAgent, key)
		case key == "FELHOM_PROXMOX_TOKEN_SECRET" || key == "FELHOM_TEMPORAL_API_KEY":
			t.Errorf("service %s: environment %s puts a secret inline; mount it as a secret and use the *_FILE setting", composeAgent, key)
		}
	}
}

func TestComposeAgentConfigLoads(t *testing.T) {
	root := repoRoot(t)
	hostEnv := composeHostEnv(t)
	f := loadCompose(t, hostEnv)
	agent := f.service(t, composeAgent)

	cfgPath := agent.Environment["FELHOM_CONFIG"]
	if cfgPath == "" {
		t.Fatalf("service %s: environment FELHOM_CONFIG is not set", composeAgent)
	}
	file := agent.bindSource(t, root, cfgPath)
	environ := agent.environ("FELHOM_CONFIG")
	cfg, err := worker.LoadConfigUnvalidated(file, environ)
	if err != nil {
		t.Fatalf("service %s: FELHOM_CONFIG %s (%s): %v", composeAgent, cfgPath, file, err)
	}

	// Outside the container only the files that Compose mounts are missing.
	inContainer := map[string]string{
		"proxmox.token_secret_file": cfg.Proxmox.TokenSecretFile,
		"proxmox.ca_file":           cfg.Proxmox.CAFile,
	}
	if got, want := configErrorFields(cfg.Validate()), slices.Sorted(maps.Keys(inContainer)); !slices.Equal(got, want) {
		t.Errorf("service %s: %s as configured fails Validate on %v, want only the files mounted into the container %v:\n%v",
			composeAgent, cfgPath, got, want, cfg.Validate())
	}
	if !slices.Contains(agent.secretTargets(t, f), cfg.Proxmox.TokenSecretFile) {
		t.Errorf("service %s: proxmox.token_secret_file %q is not where any of its secrets is mounted (%v)", composeAgent, cfg.Proxmox.TokenSecretFile, agent.secretTargets(t, f))
	}
	if !slices.Contains(agent.configTargets(t, f), cfg.Proxmox.CAFile) {
		t.Errorf("service %s: proxmox.ca_file %q is not where any of its configs is mounted (%v)", composeAgent, cfg.Proxmox.CAFile, agent.configTargets(t, f))
	}

	// With those files present, the configuration is complete.
	dir := t.TempDir()
	token, ca := filepath.Join(dir, "pve-token"), filepath.Join(dir, "pve-root-ca.pem")
	for _, p := range []string{token, ca} {
		if err := os.WriteFile(p, []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	full, err := worker.LoadConfigUnvalidated(file, append(environ,
		"FELHOM_PROXMOX_TOKEN_SECRET_FILE="+token, "FELHOM_PROXMOX_CA_FILE="+ca))
	if err != nil {
		t.Fatal(err)
	}
	if err := full.Validate(); err != nil {
		t.Errorf("service %s: with the mounted files present the configuration still fails:\n%v", composeAgent, err)
	}
	if _, err := gate.ParseSigners(full.Signers.Operational, full.Signers.Recovery); err != nil {
		t.Errorf("service %s: signers from FELHOM_SIGNERS_OPERATIONAL: %v", composeAgent, err)
	}
	if full.HostID != hostEnv["FELHOM_HOST_ID"] || full.Proxmox.Node != hostEnv["FELHOM_HOST_ID"] {
		t.Errorf("service %s: host_id %q, proxmox.node %q; want both from FELHOM_HOST_ID %q", composeAgent, full.HostID, full.Proxmox.Node, hostEnv["FELHOM_HOST_ID"])
	}

	// The host-local state must outlive the container: on a named volume,
	// which the image declares too.
	volumes := agent.namedVolumeTargets(t, f)
	for _, field := range agentStateKeys {
		p, ok := configValue(cfg, field)
		if !ok {
			continue
		}
		if !slices.ContainsFunc(volumes, func(v string) bool { return isUnder(p, v) }) {
			t.Errorf("service %s: %s %q is on no named volume (named volumes at %v): it would be lost with the container", composeAgent, field, p, volumes)
		}
		if d := readDockerfile(t, root); !slices.ContainsFunc(d.volumes(), func(v string) bool { return isUnder(p, v) }) {
			t.Errorf("Dockerfile: %s %q is under no VOLUME (%v)", field, p, d.volumes())
		}
	}

	grace := 10 * time.Second // Docker's default
	if agent.StopGracePeriod != "" {
		if grace, err = time.ParseDuration(agent.StopGracePeriod); err != nil {
			t.Fatalf("service %s: stop_grace_period: %v", composeAgent, err)
		}
	}
	if grace <= cfg.ShutdownTimeout {
		t.Errorf("service %s: stop_grace_period %s is not longer than shutdown_timeout %s: SIGKILL would cut the graceful stop short", composeAgent, grace, cfg.ShutdownTimeout)
	}

	if cfg.Metrics.Address != "off" {
		host, port, err := net.SplitHostPort(cfg.Metrics.Address)
		if err != nil {
			t.Fatalf("service %s: metrics.address: %v", composeAgent, err)
		}
		if host != "0.0.0.0" && host != "" && host != "::" {
			t.Errorf("service %s: metrics.address %q listens only inside the container; its published port cannot reach it", composeAgent, cfg.Metrics.Address)
		}
		if !slices.ContainsFunc(agent.Ports, func(p composePort) bool { return p.Target == port }) {
			t.Errorf("service %s: metrics.address port %s is not published", composeAgent, port)
		}
	}
}

func TestComposeAgentReachesTheServerAndNamespace(t *testing.T) {
	f := loadCompose(t, composeHostEnv(t))
	agent := f.service(t, composeAgent)
	cfg, err := worker.LoadConfigUnvalidated(agent.bindSource(t, repoRoot(t), agent.Environment["FELHOM_CONFIG"]), agent.environ("FELHOM_CONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	frontend := serverFrontend(t, f)
	ns, _ := setupCommands(t, f)
	cases := []struct{ service, key, got, want string }{
		{composeAgent, "temporal.address", cfg.Temporal.Address, frontend},
		{composeAgent, "temporal.namespace", cfg.Temporal.Namespace, ns},
		{composeSetup, "TEMPORAL_ADDRESS", f.service(t, composeSetup).Environment["TEMPORAL_ADDRESS"], frontend},
		{composeUI, "TEMPORAL_ADDRESS", f.service(t, composeUI).Environment["TEMPORAL_ADDRESS"], frontend},
		{composeUI, "TEMPORAL_DEFAULT_NAMESPACE", f.service(t, composeUI).Environment["TEMPORAL_DEFAULT_NAMESPACE"], ns},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("service %s: %s is %q, want %q", c.service, c.key, c.got, c.want)
		}
	}
}

func TestComposeRegistersExactlyTheSearchAttributes(t *testing.T) {
	f := loadCompose(t, composeHostEnv(t))
	_, registered := setupCommands(t, f)
	want := visibility.SearchAttributes()
	for _, name := range slices.Sorted(maps.Keys(want)) {
		got, ok := registered[name]
		switch {
		case !ok:
			t.Errorf("service %s: does not register search attribute %s (%s)", composeSetup, name, want[name])
		case got != want[name]:
			t.Errorf("service %s: registers search attribute %s as %s, the code upserts it as %s", composeSetup, name, got, want[name])
		}
	}
	for _, name := range slices.Sorted(maps.Keys(registered)) {
		if _, ok := want[name]; !ok {
			t.Errorf("service %s: registers search attribute %s, which internal/visibility does not use", composeSetup, name)
		}
	}
}

func TestComposePublishesPortsOnLoopbackOnly(t *testing.T) {
	f := loadCompose(t, composeHostEnv(t))
	for _, name := range slices.Sorted(maps.Keys(f.Services)) {
		for _, p := range f.Services[name].Ports {
			if p.HostIP != "127.0.0.1" {
				t.Errorf("service %s: port %q binds %q on the host, want 127.0.0.1", name, p.Raw, p.HostIP)
			}
			if p.Published == "" {
				t.Errorf("service %s: port %q has no fixed host port", name, p.Raw)
			}
		}
	}
}

func TestComposeStartsInOrder(t *testing.T) {
	f := loadCompose(t, composeHostEnv(t))
	cases := []struct{ service, dependsOn, condition string }{
		{composeSchema, composeDB, "service_healthy"},
		{composeServer, composeSchema, "service_completed_successfully"},
		{composeSetup, composeServer, "service_healthy"},
		{composeUI, composeServer, "service_healthy"},
		{composeAgent, composeSetup, "service_completed_successfully"},
	}
	for _, c := range cases {
		if got := f.service(t, c.service).DependsOn[c.dependsOn]; got != c.condition {
			t.Errorf("service %s: depends_on %s: condition %q, want %q", c.service, c.dependsOn, got, c.condition)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(f.Services)) {
		for dep, cond := range f.Services[name].DependsOn {
			target, ok := f.Services[dep]
			switch {
			case !ok:
				t.Errorf("service %s: depends_on %s, which is not a service", name, dep)
			case cond == "service_healthy" && target.Healthcheck == nil:
				t.Errorf("service %s: waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
			}
		}
	}
	if db := f.service(t, composeDB); len(db.namedVolumeTargets(t, f)) == 0 {
		t.Errorf("service %s: its data is on no named volume", composeDB)
	}
}

func TestComposeTemporalServerConfiguration(t *testing.T) {
	root := repoRoot(t)
	f := loadCompose(t, composeHostEnv(t))
	cfg := serverConfig(t, f)

	schemaSvc := f.service(t, composeSchema)
	dbs, schemaNames := sqlToolTargets(t, schemaSvc)
	stores := map[string]string{"default": cfg.Persistence.DefaultStore, "visibility": cfg.Persistence.VisibilityStore}
	var wantDBs []string
	for role, store := range stores {
		ds, ok := cfg.Persistence.DataStores[store]
		if !ok || ds.SQL == nil {
			t.Fatalf("service %s: the %s store %q is not a SQL store", composeServer, role, store)
		}
		wantDBs = append(wantDBs, ds.SQL.DatabaseName)
		host, port, err := net.SplitHostPort(ds.SQL.ConnectAddr)
		if err != nil {
			t.Fatalf("service %s: %s store: connectAddr %q: %v", composeServer, role, ds.SQL.ConnectAddr, err)
		}
		if host != composeDB || port != "5432" {
			t.Errorf("service %s: %s store connects to %s, want service %s on 5432", composeServer, role, ds.SQL.ConnectAddr, composeDB)
		}
		if got := schemaSvc.Environment["SQL_PLUGIN"]; got != ds.SQL.PluginName {
			t.Errorf("service %s: SQL_PLUGIN %q, but the server uses plugin %q", composeSchema, got, ds.SQL.PluginName)
		}
	}
	if !strings.HasPrefix(f.service(t, composeDB).Image, "postgres:") || cfg.Persistence.DataStores[cfg.Persistence.DefaultStore].SQL.PluginName != "postgres12" {
		t.Errorf("service %s: does not run on PostgreSQL", composeServer)
	}
	slices.Sort(wantDBs)
	if !slices.Equal(dbs, wantDBs) {
		t.Errorf("service %s: sets up databases %v, the server uses %v", composeSchema, dbs, wantDBs)
	}
	if env := schemaSvc.Environment; env["SQL_HOST"] != composeDB || env["SQL_PORT"] != "5432" {
		t.Errorf("service %s: SQL_HOST %q SQL_PORT %q, want %s 5432", composeSchema, env["SQL_HOST"], env["SQL_PORT"], composeDB)
	}
	for _, name := range schemaNames {
		if st, err := fs.Stat(dbschema.Assets(), name+"/versioned"); err != nil || !st.IsDir() {
			t.Errorf("service %s: --schema-name %s is not a schema of this server version: %v", composeSchema, name, err)
		}
	}
	if len(schemaNames) != len(dbs) {
		t.Errorf("service %s: %d databases but %d update-schema runs", composeSchema, len(dbs), len(schemaNames))
	}

	if cfg.DynamicConfigClient == nil {
		t.Fatalf("service %s: no dynamic config file", composeServer)
	}
	dc := f.service(t, composeServer).bindSource(t, root, cfg.DynamicConfigClient.Filepath)
	data, err := os.ReadFile(dc)
	if err != nil {
		t.Fatal(err)
	}
	loaded := dynamicconfig.LoadYamlFile(data)
	for _, e := range loaded.Errors {
		t.Errorf("%s: %v", dc, e)
	}
	for _, w := range loaded.Warnings {
		t.Errorf("%s: %v", dc, w)
	}
	// A setting scoped to another namespace would silently not apply.
	ns, _ := setupCommands(t, f)
	for key, values := range loaded.Map {
		for _, v := range values {
			if v.Constraints.Namespace != "" && v.Constraints.Namespace != ns {
				t.Errorf("%s: %s is constrained to namespace %q, the stack's namespace is %q", dc, key, v.Constraints.Namespace, ns)
			}
		}
	}
}

func TestComposeAgentBuildsFromTheDockerfile(t *testing.T) {
	root := repoRoot(t)
	f := loadCompose(t, composeHostEnv(t))
	agent := f.service(t, composeAgent)
	if agent.Build == nil {
		t.Fatalf("service %s: has no build section", composeAgent)
	}
	if ctx := filepath.Clean(filepath.Join(root, agent.Build.Context)); ctx != root {
		t.Errorf("service %s: build context %q is not the repository root", composeAgent, agent.Build.Context)
	}
	dockerfile := agent.Build.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	if filepath.Clean(filepath.Join(root, agent.Build.Context, dockerfile)) != filepath.Join(root, "Dockerfile") {
		t.Errorf("service %s: builds from %q, not the repository's Dockerfile", composeAgent, dockerfile)
	}

	d := readDockerfile(t, root)
	froms := d.args("FROM")
	if len(froms) < 2 {
		t.Fatalf("Dockerfile: %d stages, want a builder and a runtime stage", len(froms))
	}
	// The exact release of go.mod's go line: a floating tag lets a cached
	// older image refuse the build under GOTOOLCHAIN=local.
	if want := "golang:" + goModGoVersion(t) + " "; !strings.HasPrefix(froms[0], want) {
		t.Errorf("Dockerfile: builder stage is FROM %s, want %s(go.mod's go line)", froms[0], want)
	}
	var goBuild string
	for _, run := range d.args("RUN") {
		if strings.Contains(run, "go build") {
			goBuild = run
		}
	}
	buildCmd := regexp.MustCompile(`CGO_ENABLED=0 go build .*(\./cmd/[\w-]+)\s*$`).FindStringSubmatch(goBuild)
	if buildCmd == nil {
		t.Fatalf("Dockerfile: no RUN with `CGO_ENABLED=0 go build ... ./cmd/...`; got %q", goBuild)
	}
	if !strings.Contains(goBuild, "--mount=type=cache,target=/go/pkg/mod") {
		t.Errorf("Dockerfile: the go build does not use a module cache mount: %q", goBuild)
	}
	if pkg, err := build.ImportDir(filepath.Join(root, buildCmd[1]), 0); err != nil || pkg.Name != "main" {
		t.Errorf("Dockerfile: builds %s, which is not a main package here: %v", buildCmd[1], err)
	}
	users := d.args("USER")
	if len(users) == 0 || d.lastIndex("USER") < d.lastIndex("FROM") {
		t.Errorf("Dockerfile: the runtime stage sets no USER")
	} else if u, _, _ := strings.Cut(users[len(users)-1], ":"); u == "root" || u == "0" {
		t.Errorf("Dockerfile: runtime USER %q is root", users[len(users)-1])
	}
	for _, c := range []struct{ instruction, want string }{
		{"ENTRYPOINT", `["felhom-agent"]`},
		{"CMD", `["run"]`},
	} {
		got := d.args(c.instruction)
		if len(got) == 0 || !jsonEqual(got[len(got)-1], c.want) {
			t.Errorf("Dockerfile: %s is %v, want %s", c.instruction, got, c.want)
		}
	}
}

func TestComposeDockerignoreKeepsLocalStateOut(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	patterns := map[string]bool{}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "!") {
			continue
		}
		patterns[strings.Trim(line, "/")] = true
	}
	for _, want := range []string{".git", ".felhom-dev", "deploy/secrets"} {
		if !patterns[want] {
			t.Errorf(".dockerignore: does not exclude %s", want)
		}
	}
	// What `go build ./cmd/felhom-agent` reads must stay in the context.
	for _, need := range []string{"go.mod", "go.sum", "cmd", "cmd/felhom-agent", "gate", "worker", "workflows", "activities", "internal"} {
		for p := range patterns {
			if ok, _ := filepath.Match(p, need); ok {
				t.Errorf(".dockerignore: pattern %q excludes %s, which the build needs", p, need)
			}
		}
	}
}

// --- reading docker-compose.yml ---

type composeFile struct {
	Version  *string                   `yaml:"version"`
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]*composeVolume `yaml:"volumes"`
	Secrets  map[string]composeSource  `yaml:"secrets"`
	Configs  map[string]composeSource  `yaml:"configs"`
}

type composeVolume struct {
	Name     string `yaml:"name"`
	External bool   `yaml:"external"`
	Driver   string `yaml:"driver"`
}

type composeHealth struct {
	Test        composeArgs `yaml:"test"`
	Interval    string      `yaml:"interval"`
	Timeout     string      `yaml:"timeout"`
	Retries     int         `yaml:"retries"`
	StartPeriod string      `yaml:"start_period"`
}

type composeSource struct {
	File string `yaml:"file"`
}

// composeService has the keys this stack uses; an unknown key fails the
// parse, so a typo that Compose would reject is caught here too.
type composeService struct {
	Image           string             `yaml:"image"`
	Build           *composeBuild      `yaml:"build"`
	Command         composeArgs        `yaml:"command"`
	Entrypoint      composeArgs        `yaml:"entrypoint"`
	Environment     composeEnv         `yaml:"environment"`
	Volumes         []composeMount     `yaml:"volumes"`
	Secrets         []composeFileMount `yaml:"secrets"`
	Configs         []composeFileMount `yaml:"configs"`
	Ports           []composePort      `yaml:"ports"`
	DependsOn       composeDeps        `yaml:"depends_on"`
	Healthcheck     *composeHealth     `yaml:"healthcheck"`
	Restart         string             `yaml:"restart"`
	StopGracePeriod string             `yaml:"stop_grace_period"`
	GroupAdd        []string           `yaml:"group_add"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

func (b *composeBuild) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		b.Context = n.Value
		return nil
	}
	type plain composeBuild
	return n.Decode((*plain)(b))
}

// composeArgs is a command or entrypoint; the string form is one element.
type composeArgs []string

func (a *composeArgs) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*a = composeArgs{n.Value}
		return nil
	}
	return n.Decode((*[]string)(a))
}

// composeEnv is an environment in map or list form.
type composeEnv map[string]string

func (e *composeEnv) UnmarshalYAML(n *yaml.Node) error {
	*e = composeEnv{}
	switch n.Kind {
	case yaml.MappingNode:
		var m map[string]*string
		if err := n.Decode(&m); err != nil {
			return err
		}
		for k, v := range m {
			if v != nil {
				(*e)[k] = *v
			} else {
				(*e)[k] = ""
			}
		}
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		for _, kv := range l {
			k, v, _ := strings.Cut(kv, "=")
			(*e)[k] = v
		}
	default:
		return fmt.Errorf("line %d: environment is neither a map nor a list", n.Line)
	}
	return nil
}

// composeMount is a service volume in short ("SRC:DST[:MODE]") or long form.
type composeMount struct {
	Type     string `yaml:"type"`
	Source   string `yaml:"source"`
	Target   string `yaml:"target"`
	ReadOnly bool   `yaml:"read_only"`
}

func (m *composeMount) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		type plain composeMount
		return n.Decode((*plain)(m))
	}
	parts := strings.Split(n.Value, ":")
	switch len(parts) {
	case 1:
		*m = composeMount{Type: "volume", Target: parts[0]}
		return nil
	case 2, 3:
		*m = composeMount{Type: "volume", Source: parts[0], Target: parts[1], ReadOnly: len(parts) == 3 && strings.Contains(parts[2], "ro")}
		if strings.HasPrefix(m.Source, ".") || strings.HasPrefix(m.Source, "/") || strings.HasPrefix(m.Source, "~") {
			m.Type = "bind"
		}
		return nil
	}
	return fmt.Errorf("line %d: volume %q is not SRC:DST[:MODE]", n.Line, n.Value)
}

// composeFileMount is a secret or config reference.
type composeFileMount struct {
	Source string `yaml:"source"`
	Target string `yaml:"target"`
}

func (m *composeFileMount) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		m.Source = n.Value
		return nil
	}
	type plain composeFileMount
	return n.Decode((*plain)(m))
}

// composePort is a published port in short ("[IP:]PUBLISHED:TARGET") or long form.
type composePort struct {
	Raw       string
	HostIP    string
	Published string
	Target    string
}

func (p *composePort) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		var long struct {
			Target    string `yaml:"target"`
			Published string `yaml:"published"`
			HostIP    string `yaml:"host_ip"`
			Protocol  string `yaml:"protocol"`
			Mode      string `yaml:"mode"`
		}
		if err := n.Decode(&long); err != nil {
			return err
		}
		*p = composePort{Raw: fmt.Sprintf("%+v", long), HostIP: long.HostIP, Published: long.Published, Target: long.Target}
		return nil
	}
	p.Raw = n.Value
	spec, _, _ := strings.Cut(n.Value, "/")
	if strings.HasPrefix(spec, "[") {
		ip, rest, ok := strings.Cut(spec[1:], "]:")
		if !ok {
			return fmt.Errorf("line %d: port %q", n.Line, n.Value)
		}
		p.HostIP, spec = ip, rest
	}
	parts := strings.Split(spec, ":")
	switch len(parts) {
	case 1:
		p.Target = parts[0]
	case 2:
		p.Published, p.Target = parts[0], parts[1]
	case 3:
		if p.HostIP != "" {
			return fmt.Errorf("line %d: port %q", n.Line, n.Value)
		}
		p.HostIP, p.Published, p.Target = parts[0], parts[1], parts[2]
	default:
		return fmt.Errorf("line %d: port %q is not [IP:]PUBLISHED:TARGET", n.Line, n.Value)
	}
	return nil
}

// composeDeps maps each dependency to its condition.
type composeDeps map[string]string

func (d *composeDeps) UnmarshalYAML(n *yaml.Node) error {
	*d = composeDeps{}
	if n.Kind == yaml.SequenceNode {
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		for _, s := range l {
			(*d)[s] = "service_started"
		}
		return nil
	}
	var m map[string]struct {
		Condition string `yaml:"condition"`
		Restart   bool   `yaml:"restart"`
		Required  *bool  `yaml:"required"`
	}
	if err := n.Decode(&m); err != nil {
		return err
	}
	for k, v := range m {
		(*d)[k] = cmpOr(v.Condition, "service_started")
	}
	return nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func loadCompose(t *testing.T, env map[string]string) *composeFile {
	t.Helper()
	f, err := parseCompose(t, env)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return f
}

// parseCompose reads docker-compose.yml with variables interpolated from env
// (the operator's .env) the way Compose does it.
func parseCompose(t *testing.T, env map[string]string) (*composeFile, error) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.yml"))
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if err := interpolateNode(&doc, env); err != nil {
		return nil, err
	}
	// Re-encode, so that the typed decode can refuse unknown keys.
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(&buf)
	dec.KnownFields(true)
	var f composeFile
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	return &f, nil
}

func interpolateNode(n *yaml.Node, env map[string]string) error {
	var errs []error
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			errs = append(errs, interpolateNode(c, env))
		}
	case yaml.MappingNode:
		for i := 1; i < len(n.Content); i += 2 { // values only, as Compose does
			errs = append(errs, interpolateNode(n.Content[i], env))
		}
	case yaml.ScalarNode:
		v, err := interpolate(n.Value, env)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n.Line, err))
		}
		n.Value = v
	}
	return errors.Join(errs...)
}

var composeVarName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*`)

// interpolate expands $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
// ${NAME:?error} and ${NAME?error}.
func interpolate(s string, env map[string]string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch rest := s[i+1:]; {
		case rest[0] == '$':
			b.WriteByte('$')
			i++
		case rest[0] == '{':
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				return "", fmt.Errorf("unclosed ${ in %q", s)
			}
			v, err := expandVar(rest[1:end], env)
			if err != nil {
				return "", err
			}
			b.WriteString(v)
			i += 1 + end
		default:
			name := composeVarName.FindString(rest)
			if name == "" {
				b.WriteByte('$')
				continue
			}
			b.WriteString(env[name])
			i += len(name)
		}
	}
	return b.String(), nil
}

func expandVar(expr string, env map[string]string) (string, error) {
	name := composeVarName.FindString(expr)
	if name == "" {
		return "", fmt.Errorf("bad variable ${%s}", expr)
	}
	v, set := env[name]
	op := expr[len(name):]
	switch {
	case op == "":
		return v, nil
	case strings.HasPrefix(op, ":-"):
		if set && v != "" {
			return v, nil
		}
		return op[2:], nil
	case strings.HasPrefix(op, "-"):
		if set {
			return v, nil
		}
		return op[1:], nil
	case strings.HasPrefix(op, ":?"):
		if set && v != "" {
			return v, nil
		}
		return "", fmt.Errorf("required variable %s is missing a value: %s", name, op[2:])
	case strings.HasPrefix(op, "?"):
		if set {
			return v, nil
		}
		return "", fmt.Errorf("required variable %s is missing a value: %s", name, op[1:])
	}
	return "", fmt.Errorf("${%s}: this test does not know the operator %q", expr, op)
}

func (f *composeFile) service(t *testing.T, name string) composeService {
	t.Helper()
	s, ok := f.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml: no service %s (services: %v)", name, slices.Sorted(maps.Keys(f.Services)))
	}
	return s
}

// environ is the service's environment in os.Environ form, without skip.
func (s composeService) environ(skip ...string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(s.Environment)) {
		if !slices.Contains(skip, k) {
			out = append(out, k+"="+s.Environment[k])
		}
	}
	return out
}

// bindSource is the file in the repository that a bind mount of the
// service puts at path inside the container.
func (s composeService) bindSource(t *testing.T, root, path string) string {
	t.Helper()
	for _, m := range s.Volumes {
		if m.Type != "bind" || !isUnder(path, m.Target) {
			continue
		}
		src := filepath.Join(root, m.Source, strings.TrimPrefix(path, m.Target))
		if rel, err := filepath.Rel(root, src); err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("%s is mounted from %s, outside the repository", path, m.Source)
		}
		if _, err := os.Stat(src); err != nil {
			t.Fatalf("%s is mounted from %s: %v", path, m.Source, err)
		}
		return src
	}
	t.Fatalf("%s is not bind-mounted from the repository (volumes: %+v)", path, s.Volumes)
	return ""
}

func (s composeService) namedVolumeTargets(t *testing.T, f *composeFile) []string {
	t.Helper()
	var out []string
	for _, m := range s.Volumes {
		if m.Type != "volume" || m.Source == "" {
			continue
		}
		if _, ok := f.Volumes[m.Source]; !ok {
			t.Errorf("volume %s (at %s) is not declared under the top-level volumes", m.Source, m.Target)
		}
		out = append(out, m.Target)
	}
	return out
}

func (s composeService) secretTargets(t *testing.T, f *composeFile) []string {
	t.Helper()
	return fileMountTargets(t, "secret", s.Secrets, f.Secrets, func(src string) string { return "/run/secrets/" + src })
}

func (s composeService) configTargets(t *testing.T, f *composeFile) []string {
	t.Helper()
	return fileMountTargets(t, "config", s.Configs, f.Configs, func(src string) string { return "/" + src })
}

func fileMountTargets(t *testing.T, kind string, mounts []composeFileMount, declared map[string]composeSource, defaultTarget func(string) string) []string {
	t.Helper()
	var out []string
	for _, m := range mounts {
		if d, ok := declared[m.Source]; !ok || d.File == "" {
			t.Errorf("%s %s is not declared with a file under the top-level %ss", kind, m.Source, kind)
		}
		target := m.Target
		if target == "" {
			target = defaultTarget(m.Source)
		} else if !filepath.IsAbs(target) && kind == "secret" {
			target = "/run/secrets/" + target
		}
		out = append(out, target)
	}
	return out
}

func isUnder(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// agentStateKeys are the configuration keys of the agent's host-local
// files: losing one loses replay protection (nonce_store), the provenance
// that makes a rollback benign (provenance_ledger) or a signer rotation,
// bringing back the keys it retired (pinned_signers).
var agentStateKeys = []string{"nonce_store", "provenance_ledger", "pinned_signers"}

// configValue is the string field of cfg with the top-level YAML key.
func configValue(cfg worker.Config, key string) (string, bool) {
	v := reflect.ValueOf(cfg)
	for i := range v.NumField() {
		if v.Type().Field(i).Tag.Get("yaml") == key && v.Field(i).Kind() == reflect.String {
			return v.Field(i).String(), true
		}
	}
	return "", false
}

// configErrorFields lists the fields a worker.Config.Validate error names.
func configErrorFields(err error) []string {
	if err == nil {
		return nil
	}
	var fields []string
	for line := range strings.Lines(err.Error()) {
		field, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "config: "), ": ")
		fields = append(fields, field)
	}
	slices.Sort(fields)
	return slices.Compact(fields)
}

// setupCommands reads the setup service's script: the namespace it creates
// (with an explicit retention) and the search attributes it registers there.
func setupCommands(t *testing.T, f *composeFile) (string, map[string]enumspb.IndexedValueType) {
	t.Helper()
	var namespace string
	attrs := map[string]enumspb.IndexedValueType{}
	for _, line := range scriptLines(f.service(t, composeSetup).Command) {
		words := strings.Fields(line)
		switch {
		case containsSeq(words, "namespace", "create"):
			flags := flagValues(words)
			namespace = lastOf(flags["--namespace"])
			retention := lastOf(flags["--retention"])
			if d, err := time.ParseDuration(retention); err != nil || d <= 0 {
				t.Errorf("service %s: namespace create has no explicit --retention (got %q): %s", composeSetup, retention, line)
			}
		case containsSeq(words, "search-attribute", "create"):
			if ns := lastOf(flagValues(words)["--namespace"]); ns != namespace || ns == "" {
				t.Errorf("service %s: search attributes go to namespace %q, the namespace created is %q", composeSetup, ns, namespace)
			}
			var pending string
			for i := 0; i+1 < len(words); i++ {
				switch words[i] {
				case "--name":
					if pending != "" {
						t.Errorf("service %s: --name %s has no --type", composeSetup, pending)
					}
					pending = words[i+1]
				case "--type":
					if pending == "" {
						t.Errorf("service %s: --type %s follows no --name", composeSetup, words[i+1])
						continue
					}
					typ, err := cliSearchAttributeType(words[i+1])
					if err != nil {
						t.Errorf("service %s: search attribute %s: %v", composeSetup, pending, err)
					}
					if _, dup := attrs[pending]; dup {
						t.Errorf("service %s: search attribute %s registered twice", composeSetup, pending)
					}
					attrs[pending] = typ
					pending = ""
				}
			}
			if pending != "" {
				t.Errorf("service %s: --name %s has no --type", composeSetup, pending)
			}
		}
	}
	if namespace == "" {
		t.Fatalf("service %s: creates no namespace (`temporal operator namespace create --namespace N --retention D`)", composeSetup)
	}
	return namespace, attrs
}

// cliSearchAttributeType parses a --type value as the temporal CLI does:
// the short names (Keyword, Bool, ...), in any case.
func cliSearchAttributeType(s string) (enumspb.IndexedValueType, error) {
	for name, v := range enumspb.IndexedValueType_shorthandValue {
		if strings.EqualFold(s, name) {
			return enumspb.IndexedValueType(v), nil
		}
	}
	return enumspb.INDEXED_VALUE_TYPE_UNSPECIFIED, fmt.Errorf("--type %q is not a type the temporal CLI knows", s)
}

// sqlToolTargets reads the schema service's script: the databases it
// creates and the embedded schemas it migrates them to.
func sqlToolTargets(t *testing.T, s composeService) (dbs, schemaNames []string) {
	t.Helper()
	for _, line := range scriptLines(s.Command) {
		words := strings.Fields(line)
		if len(words) == 0 || words[0] != "temporal-sql-tool" {
			continue
		}
		flags := flagValues(words)
		db := lastOf(flags["--db"])
		switch {
		case slices.Contains(words, "create"):
			dbs = append(dbs, db)
		case slices.Contains(words, "update-schema"):
			schemaNames = append(schemaNames, lastOf(flags["--schema-name"]))
		}
	}
	slices.Sort(dbs)
	if len(dbs) == 0 {
		t.Fatalf("service %s: runs no `temporal-sql-tool --db NAME create`", composeSchema)
	}
	return dbs, schemaNames
}

// scriptLines splits a `sh -c` script (the last argument) into logical
// lines, joining backslash and trailing-|| continuations.
func scriptLines(args composeArgs) []string {
	if len(args) == 0 {
		return nil
	}
	var lines []string
	var cur string
	sc := bufio.NewScanner(strings.NewReader(args[len(args)-1]))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		cur += " " + strings.TrimSuffix(line, "\\")
		if strings.HasSuffix(line, "\\") || strings.HasSuffix(line, "||") || strings.HasSuffix(line, "&&") {
			continue
		}
		lines = append(lines, strings.TrimSpace(cur))
		cur = ""
	}
	if strings.TrimSpace(cur) != "" {
		lines = append(lines, strings.TrimSpace(cur))
	}
	return lines
}

func flagValues(words []string) map[string][]string {
	out := map[string][]string{}
	for i := 0; i+1 < len(words); i++ {
		if strings.HasPrefix(words[i], "-") {
			out[words[i]] = append(out[words[i]], words[i+1])
		}
	}
	return out
}

func lastOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

func containsSeq(words []string, seq ...string) bool {
	for i := 0; i+len(seq) <= len(words); i++ {
		if slices.Equal(words[i:i+len(seq)], seq) {
			return true
		}
	}
	return false
}

// serverConfig renders the Temporal server's configuration the way the
// temporalio/server image does (its embedded template over the environment),
// with the compose service's environment.
func serverConfig(t *testing.T, f *composeFile) *serverconfig.Config {
	t.Helper()
	svc := f.service(t, composeServer)
	// The entrypoint exports POSTGRES_PWD from the secret file.
	script := strings.Join(svc.Entrypoint, "\n")
	secret := lastOf(svc.secretTargets(t, f))
	if secret == "" || !strings.Contains(script, "POSTGRES_PWD=") || !strings.Contains(script, "cat "+secret) || !strings.Contains(script, "exec /etc/temporal/entrypoint.sh") {
		t.Errorf("service %s: entrypoint does not export POSTGRES_PWD from its secret %q and exec the image's entrypoint:\n%s", composeServer, secret, script)
	}
	for k, v := range svc.Environment {
		t.Setenv(k, v)
	}
	t.Setenv("POSTGRES_PWD", "from-the-secret")
	cfg, err := serverconfig.Load(serverconfig.WithEmbedded())
	if err != nil {
		t.Fatalf("service %s: the server's configuration does not load from its environment: %v", composeServer, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("service %s: the server's configuration is invalid: %v", composeServer, err)
	}
	return cfg
}

// serverFrontend is the address other services reach the frontend at.
func serverFrontend(t *testing.T, f *composeFile) string {
	t.Helper()
	cfg := serverConfig(t, f)
	fe, ok := cfg.Services["frontend"]
	if !ok {
		t.Fatalf("service %s: runs no frontend", composeServer)
	}
	if fe.RPC.BindOnIP != "0.0.0.0" {
		t.Errorf("service %s: the frontend binds %q, so other containers cannot reach it (BIND_ON_IP)", composeServer, fe.RPC.BindOnIP)
	}
	port := strconv.Itoa(fe.RPC.GRPCPort)
	if !slices.ContainsFunc(f.service(t, composeServer).Ports, func(p composePort) bool { return p.Target == port }) {
		t.Errorf("service %s: frontend port %s is not published (felhomctl and the temporal CLI use it)", composeServer, port)
	}
	return net.JoinHostPort(composeServer, port)
}

// goModGoVersion is go.mod's go line.
func goModGoVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go\s+(\S+)$`).FindSubmatch(data)
	if m == nil {
		t.Fatal("go.mod: no go line")
	}
	return string(m[1])
}

// goModVersion is the version go.mod requires of module, without the "v".
func goModVersion(t *testing.T, module string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(module) + `\s+v(\S+)`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("go.mod: does not require %s", module)
	}
	return string(m[1])
}

// --- reading the Dockerfile ---

type dockerfile []struct{ instruction, args string }

func readDockerfile(t *testing.T, root string) dockerfile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var d dockerfile
	var cur string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") || (line == "" && cur == "") {
			continue
		}
		if rest, ok := strings.CutSuffix(line, "\\"); ok {
			cur += rest + " "
			continue
		}
		cur += line
		instr, args, _ := strings.Cut(cur, " ")
		d = append(d, struct{ instruction, args string }{strings.ToUpper(instr), strings.Join(strings.Fields(args), " ")})
		cur = ""
	}
	return d
}

func (d dockerfile) args(instruction string) []string {
	var out []string
	for _, in := range d {
		if in.instruction == instruction {
			out = append(out, in.args)
		}
	}
	return out
}

func (d dockerfile) lastIndex(instruction string) int {
	last := -1
	for i, in := range d {
		if in.instruction == instruction {
			last = i
		}
	}
	return last
}

// volumes are the paths the runtime stage declares as VOLUME.
func (d dockerfile) volumes() []string {
	var out []string
	for i, in := range d {
		if in.instruction != "VOLUME" || i < d.lastIndex("FROM") {
			continue
		}
		var list []string
		if json.Unmarshal([]byte(in.args), &list) != nil {
			list = strings.Fields(in.args)
		}
		out = append(out, list...)
	}
	return out
}

func jsonEqual(got, want string) bool {
	var g, w []string
	return json.Unmarshal([]byte(got), &g) == nil && json.Unmarshal([]byte(want), &w) == nil && slices.Equal(g, w)
}

// The schema service runs exactly the steps the PostgreSQL tests run
// (pgcluster.SchemaSteps), so what CI proves on PostgreSQL is what compose
// does.
func TestComposeSchemaStepsAreTheTestedOnes(t *testing.T) {
	f := loadCompose(t, composeHostEnv(t))
	svc := f.service(t, composeSchema)
	var got [][]string
	for _, line := range scriptLines(svc.Command) {
		words := strings.Fields(line)
		if len(words) > 0 && words[0] == "temporal-sql-tool" {
			got = append(got, words[1:])
		}
	}
	if !slices.EqualFunc(got, pgcluster.SchemaSteps, slices.Equal[[]string]) {
		t.Errorf("service %s: temporal-sql-tool steps\n  %q\nwant the steps the PostgreSQL tests run (pgcluster.SchemaSteps)\n  %q", composeSchema, got, pgcluster.SchemaSteps)
	}
	if env := svc.Environment; env["SQL_PLUGIN"] != pgcluster.Plugin {
		t.Errorf("service %s: SQL_PLUGIN %q, the tests use %q", composeSchema, env["SQL_PLUGIN"], pgcluster.Plugin)
	}
}

// The history shard count is fixed at the first start for the life of the
// database, so it is set explicitly, not left to the image's default.
func TestComposeSetsTheHistoryShardCount(t *testing.T) {
	f := loadCompose(t, composeHostEnv(t))
	raw, ok := f.service(t, composeServer).Environment["NUM_HISTORY_SHARDS"]
	if !ok {
		t.Fatalf("service %s: NUM_HISTORY_SHARDS is not set; the image's default would be fixed for good", composeServer)
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 {
		t.Fatalf("service %s: NUM_HISTORY_SHARDS %q is not a positive number", composeServer, raw)
	}
	if got := serverConfig(t, f).Persistence.NumHistoryShards; int(got) != n {
		t.Errorf("service %s: the server renders %d history shards, NUM_HISTORY_SHARDS says %d", composeServer, got, n)
	}
}

// The agent reads /etc/pve/pve-root-ca.pem, which Proxmox keeps root:www-data
// mode 0640 (pmxcfs refuses a change), through the www-data group.
func TestComposeAgentCanReadTheProxmoxCA(t *testing.T) {
	f := loadCompose(t, composeHostEnv(t))
	agent := f.service(t, composeAgent)
	src := f.Configs["pve_root_ca"].File
	if !strings.HasPrefix(src, "/etc/pve/") {
		t.Fatalf("config pve_root_ca comes from %q, want /etc/pve/pve-root-ca.pem by default", src)
	}
	const wwwData = "33" // Debian's fixed gid of www-data, and so Proxmox VE's
	if !slices.Contains(agent.GroupAdd, wwwData) {
		t.Errorf("service %s: group_add %v lacks www-data (%s): the container's user cannot read %s (root:www-data 0640)", composeAgent, agent.GroupAdd, wwwData, src)
	}
	env := composeHostEnv(t)
	env["PVE_WWW_DATA_GID"] = "1033"
	if g := loadCompose(t, env).service(t, composeAgent).GroupAdd; !slices.Contains(g, "1033") {
		t.Errorf("service %s: group_add %v does not follow PVE_WWW_DATA_GID", composeAgent, g)
	}
}
