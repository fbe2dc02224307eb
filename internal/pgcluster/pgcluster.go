// Package pgcluster runs a private PostgreSQL cluster on 127.0.0.1 and sets
// up Temporal's databases on it, for the tests that run the production path.
//
// Start runs the Debian package's own initdb and pg_ctl into a fresh
// directory, as the postgres user when the caller is root (PostgreSQL refuses
// to run as root), listening on 127.0.0.1 only, on a port below 32768 (see
// package freeport). SetupTemporal creates and migrates the temporal and
// temporal_visibility databases with the Temporal server's schema tool
// (go.temporal.io/server/tools/sql, the code of temporal-sql-tool), running
// exactly SchemaSteps, the steps of docker-compose.yml's temporal-schema
// service, and then checks the schema versions they left.
//
// The cluster is for tests: durability settings that only matter when the
// machine loses power (fsync, full_page_writes) are off to spare the disk.
package pgcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/log"
	// The postgres12 plugin, registered as the server binary and temporal-sql-tool register it.
	_ "go.temporal.io/server/common/persistence/sql/sqlplugin/postgresql"
	pgschema "go.temporal.io/server/schema/postgresql/v12"
	sqltool "go.temporal.io/server/tools/sql"

	"github.com/felhom/felhom-agent/internal/freeport"
)

// Plugin is the Temporal SQL plugin for PostgreSQL, as SQL_PLUGIN and the
// server's DB setting name it.
const Plugin = "postgres12"

// Databases are the two databases Temporal uses, as docker-compose.yml names them.
const (
	DB           = "temporal"
	VisibilityDB = "temporal_visibility"
)

// SchemaSteps are the temporal-sql-tool commands of docker-compose.yml's
// temporal-schema service, in order, without the connection settings (which
// come from SQL_HOST, SQL_PORT, SQL_USER, SQL_PASSWORD and SQL_PLUGIN there).
// tests/compose_test.go holds the compose file to exactly these.
var SchemaSteps = [][]string{
	{"--db", DB, "create"},
	{"--db", DB, "setup-schema", "-v", "0.0"},
	{"--db", DB, "update-schema", "--schema-name", "postgresql/v12/temporal"},
	{"--db", VisibilityDB, "create"},
	{"--db", VisibilityDB, "setup-schema", "-v", "0.0"},
	{"--db", VisibilityDB, "update-schema", "--schema-name", "postgresql/v12/visibility"},
}

// ErrNotInstalled is returned by Start when initdb or pg_ctl cannot be found.
var ErrNotInstalled = errors.New("pgcluster: PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql-15)")

// Cluster is a running PostgreSQL cluster.
type Cluster struct {
	Host     string // always 127.0.0.1
	Port     int
	User     string
	Password string

	dir    string // owns data/, the socket and the server log
	pgCtl  string
	runAs  []string // prefix that runs a command as the cluster's owner
	logger log.Logger
}

// Addr is host:port of the cluster.
func (c *Cluster) Addr() string { return c.Host + ":" + strconv.Itoa(c.Port) }

// SQL returns the Temporal persistence settings of database db.
func (c *Cluster) SQL(db string) *config.SQL {
	return &config.SQL{
		PluginName:      Plugin,
		DatabaseName:    db,
		ConnectAddr:     c.Addr(),
		ConnectProtocol: "tcp",
		User:            c.User,
		Password:        c.Password,
	}
}

// Find returns the directory of initdb and pg_ctl: PATH first, then the
// Debian package's /usr/lib/postgresql/VERSION/bin, newest first.
func Find() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("pg_ctl"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return versionOf(b) - versionOf(a) })
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	return "", ErrNotInstalled
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// Start creates a cluster in a new directory under os.TempDir() and starts
// it. The superuser is "temporal" with a random password, which TCP
// connections must give (scram-sha-256), as in docker-compose.yml.
func Start(ctx context.Context) (*Cluster, error) {
	bin, err := Find()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Host: "127.0.0.1", User: "temporal", Password: randomHex(12), pgCtl: filepath.Join(bin, "pg_ctl"), logger: log.NewNoopLogger()}
	c.dir, err = os.MkdirTemp("", "felhom-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.ownDir(); err != nil {
		os.RemoveAll(c.dir)
		return nil, err
	}
	pwFile := filepath.Join(c.dir, "pwfile")
	if err := c.writeOwned(pwFile, c.Password+"\n"); err != nil {
		os.RemoveAll(c.dir)
		return nil, err
	}
	data := filepath.Join(c.dir, "data")
	if out, err := c.run(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", c.User, "--pwfile="+pwFile,
		"--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		os.RemoveAll(c.dir)
		return nil, fmt.Errorf("pgcluster: initdb: %w\n%s", err, out)
	}
	// A port taken between the check and the server's bind fails the start;
	// another port is tried then.
	var startErr error
	for range 5 {
		ports, err := freeport.Below(freeport.SmallintMax, 1)
		if err != nil {
			startErr = err
			break
		}
		c.Port = ports[0]
		opts := strings.Join([]string{
			"-c listen_addresses=127.0.0.1", "-p " + strconv.Itoa(c.Port), "-c unix_socket_directories=" + c.dir,
			"-c fsync=off", "-c full_page_writes=off", "-c max_connections=300",
		}, " ")
		out, err := c.run(ctx, c.pgCtl, "-D", data, "-l", filepath.Join(c.dir, "server.log"), "-w", "-t", "60", "-o", opts, "start")
		if err == nil {
			return c, nil
		}
		startErr = fmt.Errorf("pg_ctl start on port %d: %w\n%s\n%s", c.Port, err, out, c.serverLog())
	}
	os.RemoveAll(c.dir)
	return nil, fmt.Errorf("pgcluster: %w", startErr)
}

// Stop stops the server at once and removes its directory.
func (c *Cluster) Stop() error {
	_, err := c.run(context.Background(), c.pgCtl, "-D", filepath.Join(c.dir, "data"), "-m", "immediate", "-w", "stop")
	return errors.Join(err, os.RemoveAll(c.dir))
}

// SetupTemporal runs SchemaSteps against the cluster with the server's
// schema tool, then checks that both databases are at the schema version
// this server version embeds.
func (c *Cluster) SetupTemporal(ctx context.Context) error {
	conn := []string{"temporal-sql-tool", "--quiet",
		"--endpoint", c.Host, "--port", strconv.Itoa(c.Port), "--user", c.User, "--password", c.Password, "--plugin", Plugin}
	for _, step := range SchemaSteps {
		if err := ctx.Err(); err != nil {
			return err
		}
		// --quiet: the tool would otherwise exit the process on a failed
		// step. A failure shows in the versions checked below.
		if err := sqltool.RunTool(append(slices.Clone(conn), step...)); err != nil {
			return fmt.Errorf("pgcluster: temporal-sql-tool %s: %w", strings.Join(step, " "), err)
		}
	}
	for db, want := range map[string]string{DB: pgschema.Version, VisibilityDB: pgschema.VisibilityVersion} {
		got, err := c.schemaVersion(db)
		if err != nil {
			return fmt.Errorf("pgcluster: database %s after the schema steps: %w", db, err)
		}
		if got != want {
			return fmt.Errorf("pgcluster: database %s is at schema version %q after the schema steps, want %q", db, got, want)
		}
	}
	return nil
}

func (c *Cluster) schemaVersion(db string) (string, error) {
	conn, err := sqltool.NewConnection(c.SQL(db), c.logger)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.ReadSchemaVersion()
}

// ownDir gives the cluster's directory to the user that runs PostgreSQL:
// postgres when the caller is root.
func (c *Cluster) ownDir() error {
	if os.Geteuid() != 0 {
		return nil
	}
	runuser, err := exec.LookPath("runuser")
	if err != nil {
		return fmt.Errorf("pgcluster: running as root needs runuser to start PostgreSQL as its own user: %w", err)
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("pgcluster: running as root needs the postgres user (apt-get install postgresql-15 makes it): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(c.dir, uid, gid); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	c.runAs = []string{runuser, "-u", "postgres", "--"}
	return nil
}

func (c *Cluster) writeOwned(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if len(c.runAs) > 0 {
		st, err := os.Stat(c.dir)
		if err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		uid, gid := ownerOf(st)
		if err := os.Chown(path, uid, gid); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
	}
	return nil
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append(slices.Clone(c.runAs), name)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = c.dir
	return cmd.CombinedOutput()
}

func (c *Cluster) serverLog() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "server.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
