// Package devserver runs a real Temporal server (go.temporal.io/server) inside
// the current process, for `felhom-dev` and for the end-to-end tests. It is
// the same server a production cluster runs, every service on 127.0.0.1, the
// namespace registered with an explicit retention and the project's search
// attributes registered on every start.
//
// By default it is cut down to one process: static membership (the services
// know each other's addresses; no gossip ring), one history shard, SQLite in
// a file (or in memory). With Config.Postgres it keeps its state in
// PostgreSQL, as a production cluster does; with Config.Gossip as well,
// several processes sharing that database form one cluster, each a full node
// (frontend, history, matching), finding each other through the database's
// membership table (ringpop), and a node that dies hands its history shards
// and task queues to the others.
package devserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	namespacepb "go.temporal.io/api/namespace/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/membership/static"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	// The postgres12 plugin, registered as the server binary and temporal-sql-tool register it.
	_ "go.temporal.io/server/common/persistence/sql/sqlplugin/postgresql"
	"go.temporal.io/server/common/primitives"
	sqliteschema "go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/felhom/felhom-agent/internal/freeport"
)

const clusterName = "active"

// Config says where the embedded server keeps its data and listens.
type Config struct {
	// DBPath is the SQLite file that holds all state. Empty keeps everything
	// in memory, which is what tests want; the data is then gone at Stop.
	DBPath string
	// FrontendAddr is the gRPC address the frontend listens on and clients
	// and workers dial, host:port (port 0: a free one chosen at start).
	// Empty means 127.0.0.1 on a free port. The server's other services
	// listen on loopback whatever it says; with Gossip the frontend must be
	// on 127.0.0.1 too.
	FrontendAddr string
	// Namespace is registered at start. Empty means "default".
	Namespace string
	// Retention of closed workflows in Namespace. Zero means 72 hours.
	Retention time.Duration
	// SearchAttributes are registered in Namespace on every start, also on a
	// database that already holds the namespace.
	SearchAttributes map[string]enumspb.IndexedValueType
	// SystemWorkers also runs the server's worker service (schedules, batch
	// operations, namespace deletion). The agent needs none of them; tests
	// leave it off because that service's pollers outlive Stop upstream.
	SystemWorkers bool
	// Logger receives the server's own logs. Nil discards them.
	Logger *slog.Logger

	// Postgres, when set, keeps all state in PostgreSQL instead of SQLite
	// (DBPath is then ignored): Temporal's two databases, created and
	// migrated beforehand (package pgcluster, or docker-compose.yml's
	// temporal-schema service). Every port is then below 32768: the schema
	// stores membership ports as SMALLINT.
	Postgres *Postgres
	// HistoryShards is the number of history shards, fixed for the life of
	// the database. Zero means 1 on SQLite and 4 on PostgreSQL.
	HistoryShards int32
	// Gossip makes this process one node of a cluster whose members find
	// each other through the database (ringpop): every node of a cluster
	// sets it, on the same Postgres, with the same HistoryShards.
	Gossip bool
}

// Postgres names Temporal's two databases on PostgreSQL.
type Postgres struct {
	Default, Visibility *config.SQL
}

// Server is a running embedded Temporal server.
type Server struct {
	cfg          Config
	server       temporal.Server
	frontendAddr string
	historyAddr  string
}

// Start starts the server and returns once its frontend answers, the
// namespace exists with the configured retention and the search attributes
// are registered. ctx bounds only the start-up.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	if cfg.Retention == 0 {
		cfg.Retention = 72 * time.Hour
	}
	if cfg.Retention < 24*time.Hour {
		return nil, fmt.Errorf("devserver: retention %s: Temporal requires at least 24h", cfg.Retention)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	if cfg.Gossip && cfg.Postgres == nil {
		return nil, errors.New("devserver: Gossip needs Postgres: the members of a cluster share one database")
	}
	if cfg.HistoryShards == 0 {
		cfg.HistoryShards = 1
		if cfg.Postgres != nil {
			cfg.HistoryShards = 4
		}
	}
	frontend, err := reserveFrontend(cfg.FrontendAddr, cfg.Postgres != nil)
	if err != nil {
		return nil, err
	}
	if host, _, _ := net.SplitHostPort(frontend); cfg.Gossip && host != "127.0.0.1" {
		return nil, fmt.Errorf("devserver: frontend address %s: a gossip ring's members reach each other on 127.0.0.1, so its frontend listens there", frontend)
	}
	// Listening on every address (0.0.0.0), the frontend is dialled on
	// loopback: by this process, the server's own services and FrontendAddr's
	// callers, such as the embedded worker, whose configuration takes a
	// loopback address for plaintext.
	dial := dialAddr(frontend)
	// history, matching, worker; on PostgreSQL also the membership port of
	// each of the four services, all below 32768.
	var ports []int
	if cfg.Postgres != nil {
		ports, err = freeport.Below(freeport.SmallintMax, 7)
	} else {
		ports, err = freeport.Any(3)
	}
	if err != nil {
		return nil, fmt.Errorf("devserver: %w", err)
	}

	var stores persistence
	if cfg.Postgres != nil {
		stores = persistence{plugin: "postgres", main: cfg.Postgres.Default, visibility: cfg.Postgres.Visibility}
	} else {
		sqlCfg, err := sqliteConfig(cfg.DBPath)
		if err != nil {
			return nil, err
		}
		nsCfg, err := sqliteschema.NewNamespaceConfig(clusterName, cfg.Namespace, false, nil)
		if err != nil {
			return nil, fmt.Errorf("devserver: namespace %q: %w", cfg.Namespace, err)
		}
		nsCfg.Detail.Config.Retention = durationpb.New(cfg.Retention)
		if err := sqliteschema.CreateNamespaces(sqlCfg, nsCfg); err != nil {
			return nil, fmt.Errorf("devserver: create namespace %q in %s: %w", cfg.Namespace, describeDB(cfg.DBPath), err)
		}
		stores = persistence{plugin: sqliteplugin.PluginName, main: sqlCfg, visibility: sqlCfg}
	}

	conf := serverConfig(stores, cfg.HistoryShards, frontend, dial, ports, cfg.Gossip)
	opts := []temporal.ServerOption{
		temporal.WithConfig(conf),
		temporal.ForServices(services(cfg.SystemWorkers)),
		temporal.WithLogger(newServerLogger(cfg.Logger)),
		temporal.WithDynamicConfigClient(dynamicconfig.StaticClient{
			// Search attributes registered at start must be usable at once.
			dynamicconfig.ForceSearchAttributesCacheRefreshOnRead.Key(): []dynamicconfig.ConstrainedValue{{Value: true}},
			// One worker per task queue: several partitions only let a task
			// wait in one that nobody polls at the moment.
			dynamicconfig.MatchingNumTaskqueueReadPartitions.Key():  []dynamicconfig.ConstrainedValue{{Value: 1}},
			dynamicconfig.MatchingNumTaskqueueWritePartitions.Key(): []dynamicconfig.ConstrainedValue{{Value: 1}},
		}),
	}
	if !cfg.Gossip {
		opts = append(opts, temporal.WithStaticHosts(staticHosts(conf)))
	}
	srv, err := temporal.NewServer(opts...)
	if err != nil {
		return nil, fmt.Errorf("devserver: build server: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("devserver: start server: %w", err)
	}
	s := &Server{cfg: cfg, server: srv, frontendAddr: dial, historyAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))}
	if err := s.prepareNamespace(ctx); err != nil {
		_ = srv.Stop()
		return nil, err
	}
	db := describeDB(cfg.DBPath)
	if cfg.Postgres != nil {
		db = "postgresql://" + cfg.Postgres.Default.ConnectAddr + "/" + cfg.Postgres.Default.DatabaseName
	}
	cfg.Logger.Info("embedded Temporal server started",
		"frontend", frontend, "dial", dial, "namespace", cfg.Namespace, "db", db, "history_shards", cfg.HistoryShards, "gossip", cfg.Gossip)
	return s, nil
}

// FrontendAddr is the host:port to dial the gRPC frontend at: the configured
// address, or loopback when it listens on every address.
func (s *Server) FrontendAddr() string { return s.frontendAddr }

// HistoryAddr is the host:port of the history service, as the server names
// the owner of a history shard.
func (s *Server) HistoryAddr() string { return s.historyAddr }

// Namespace is the namespace the server registered at start.
func (s *Server) Namespace() string { return s.cfg.Namespace }

// Dial returns a client of the server's namespace.
func (s *Server) Dial(ctx context.Context) (client.Client, error) {
	return client.DialContext(ctx, client.Options{
		HostPort:  s.frontendAddr,
		Namespace: s.cfg.Namespace,
		Logger:    s.cfg.Logger,
	})
}

// Stop stops every service and releases the ports and the database.
func (s *Server) Stop() error {
	if err := s.server.Stop(); err != nil {
		return fmt.Errorf("devserver: stop: %w", err)
	}
	return nil
}

// prepareNamespace waits for the frontend, then makes the namespace match the
// configuration: the retention (a database from an earlier run may hold an
// older value) and the search attributes (registered through the operator API
// so that an existing database gains new ones too).
func (s *Server) prepareNamespace(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c, ns, err := s.waitReady(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	if ns.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration() != s.cfg.Retention {
		_, err := c.WorkflowService().UpdateNamespace(ctx, &workflowservice.UpdateNamespaceRequest{
			Namespace: s.cfg.Namespace,
			Config: &namespacepb.NamespaceConfig{
				WorkflowExecutionRetentionTtl: durationpb.New(s.cfg.Retention),
			},
		})
		if err != nil {
			return fmt.Errorf("devserver: set retention of %q to %s: %w", s.cfg.Namespace, s.cfg.Retention, err)
		}
	}
	return registerSearchAttributes(ctx, c.OperatorService(), s.cfg.Namespace, s.cfg.SearchAttributes)
}

// waitReady dials the frontend until it describes the namespace: Start of
// the server returns before the frontend answers.
func (s *Server) waitReady(ctx context.Context) (client.Client, *workflowservice.DescribeNamespaceResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var lastErr error
	for {
		c, err := client.DialContext(ctx, client.Options{HostPort: s.frontendAddr, Namespace: s.cfg.Namespace, Logger: s.cfg.Logger})
		if err == nil {
			ns, err := c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: s.cfg.Namespace})
			if err == nil {
				return c, ns, nil
			}
			var nf *serviceerror.NamespaceNotFound
			if errors.As(err, &nf) && s.cfg.Postgres != nil {
				// SQLite gets the namespace written before the start; on
				// PostgreSQL it is registered through the API, once, by
				// whichever node gets there first.
				err = s.registerNamespace(ctx, c)
			}
			c.Close()
			lastErr = err
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("devserver: frontend %s not ready: %w (last error: %v)", s.frontendAddr, ctx.Err(), lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *Server) registerNamespace(ctx context.Context, c client.Client) error {
	_, err := c.WorkflowService().RegisterNamespace(ctx, &workflowservice.RegisterNamespaceRequest{
		Namespace:                        s.cfg.Namespace,
		WorkflowExecutionRetentionPeriod: durationpb.New(s.cfg.Retention),
	})
	var exists *serviceerror.NamespaceAlreadyExists
	if err != nil && !errors.As(err, &exists) {
		return fmt.Errorf("register namespace %q: %w", s.cfg.Namespace, err)
	}
	return nil
}

// registerSearchAttributes adds the attributes the namespace lacks and fails
// when one exists with another type: silently keeping a wrongly typed
// attribute would break every query that uses it.
func registerSearchAttributes(ctx context.Context, op operatorservice.OperatorServiceClient, namespace string, want map[string]enumspb.IndexedValueType) error {
	if len(want) == 0 {
		return nil
	}
	have, err := listSearchAttributes(ctx, op, namespace)
	if err != nil {
		return fmt.Errorf("devserver: list search attributes: %w", err)
	}
	missing := map[string]enumspb.IndexedValueType{}
	for name, typ := range want {
		got, ok := have.GetCustomAttributes()[name]
		switch {
		case !ok:
			missing[name] = typ
		case got != typ:
			return fmt.Errorf("devserver: search attribute %s is registered as %s, want %s", name, got, typ)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	_, err = op.AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{
		Namespace:        namespace,
		SearchAttributes: missing,
	})
	var exists *serviceerror.AlreadyExists
	if err != nil && !errors.As(err, &exists) {
		return fmt.Errorf("devserver: add search attributes: %w", err)
	}
	return nil
}

// listSearchAttributes lists the namespace's search attributes. A namespace
// registered a moment ago may still be unknown to the frontend's namespace
// cache, which remembers a lookup that found nothing for a short while; that
// answer is asked again until ctx ends.
func listSearchAttributes(ctx context.Context, op operatorservice.OperatorServiceClient, namespace string) (*operatorservice.ListSearchAttributesResponse, error) {
	for {
		have, err := op.ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
		var nf *serviceerror.NamespaceNotFound
		if !errors.As(err, &nf) {
			return have, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (waiting for the new namespace: %w)", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// sqliteConfig returns the persistence settings for a file or, with an empty
// path, for a private in-memory database.
func sqliteConfig(path string) (*config.SQL, error) {
	cfg := &config.SQL{
		PluginName:        sqliteplugin.PluginName,
		ConnectAttributes: map[string]string{},
	}
	if path == "" {
		cfg.DatabaseName = "felhom-" + randomHex(8)
		cfg.ConnectAttributes["mode"] = "memory"
		cfg.ConnectAttributes["cache"] = "shared"
		return cfg, nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("devserver: database path %q: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o750); err != nil {
		return nil, fmt.Errorf("devserver: database directory: %w", err)
	}
	cfg.DatabaseName = abs
	cfg.ConnectAttributes["mode"] = "rwc"
	// setup creates the schema in a new file and is a no-op on an existing one.
	cfg.ConnectAttributes["setup"] = "true"
	cfg.ConnectAttributes["journal_mode"] = "wal"
	cfg.ConnectAttributes["synchronous"] = "2"
	return cfg, nil
}

// persistence is where the server keeps its state: one SQL store for
// everything on SQLite, a main and a visibility database on PostgreSQL.
type persistence struct {
	plugin           string
	main, visibility *config.SQL
}

// serverConfig is the server's configuration; its frontend listens on
// frontend and is dialled at dial.
func serverConfig(stores persistence, shards int32, frontend, dial string, ports []int, gossip bool) *config.Config {
	frontendHost, fport, _ := net.SplitHostPort(frontend)
	frontendPort, _ := strconv.Atoi(fport)
	service := func(grpcPort, membershipPort int) config.Service {
		return config.Service{RPC: config.RPC{GRPCPort: grpcPort, MembershipPort: membershipPort, BindOnIP: "127.0.0.1"}}
	}
	membership := func(i int) int {
		if len(ports) > 3 {
			return ports[3+i]
		}
		return 0
	}
	// The frontend listens where FrontendAddr says, so that workers on
	// other hosts (or in other network namespaces) reach it; the services
	// only the server itself calls stay on loopback. A gossip ring
	// broadcasts 127.0.0.1 for every member, so its frontend stays there.
	frontendService := service(frontendPort, membership(0))
	if !gossip {
		frontendService.RPC.BindOnIP = frontendHost
	}
	dataStores := map[string]config.DataStore{"default": {SQL: stores.main}, "visibility": {SQL: stores.visibility}}
	conf := &config.Config{
		Persistence: config.Persistence{
			DefaultStore:     "default",
			VisibilityStore:  "visibility",
			NumHistoryShards: shards,
			DataStores:       dataStores,
		},
		ClusterMetadata: &cluster.Config{
			EnableGlobalNamespace:    false,
			FailoverVersionIncrement: 10,
			MasterClusterName:        clusterName,
			CurrentClusterName:       clusterName,
			ClusterInformation: map[string]cluster.ClusterInformation{
				clusterName: {Enabled: true, InitialFailoverVersion: 1, RPCAddress: dial},
			},
		},
		DCRedirectionPolicy: config.DCRedirectionPolicy{Policy: "noop"},
		Services: map[string]config.Service{
			"frontend": frontendService,
			"history":  service(ports[0], membership(1)),
			"matching": service(ports[1], membership(2)),
			"worker":   service(ports[2], membership(3)),
		},
		Archival: config.Archival{
			History:    config.HistoryArchival{State: "disabled"},
			Visibility: config.VisibilityArchival{State: "disabled"},
		},
		NamespaceDefaults: config.NamespaceDefaults{
			Archival: config.ArchivalNamespaceDefaults{
				History:    config.HistoryArchivalNamespaceDefaults{State: "disabled"},
				Visibility: config.VisibilityArchivalNamespaceDefaults{State: "disabled"},
			},
		},
		PublicClient: config.PublicClient{HostPort: dial},
	}
	if gossip {
		conf.Global.Membership = config.Membership{MaxJoinDuration: 30 * time.Second, BroadcastAddress: "127.0.0.1"}
	}
	return conf
}

// staticHosts is the membership of a server whose services all run in this
// process: each knows the others' addresses from the configuration. A gossip
// ring (ringpop) would instead find its peers through the membership table of
// the database, which on a restart still lists the previous process's
// services, on other ports, as alive for 20 seconds: joining them held the
// restarted server's history and matching services back for longer than a
// client's call timeout, and past the ring's 30 second join limit when the
// machine was busy.
func staticHosts(conf *config.Config) map[primitives.ServiceName]static.Hosts {
	hosts := make(map[primitives.ServiceName]static.Hosts, len(conf.Services))
	for name, svc := range conf.Services {
		addr := dialAddr(net.JoinHostPort(svc.RPC.BindOnIP, strconv.Itoa(svc.RPC.GRPCPort)))
		hosts[primitives.ServiceName(name)] = static.SingleLocalHost(addr)
	}
	return hosts
}

func services(systemWorkers bool) []string {
	if systemWorkers {
		return temporal.DefaultServices
	}
	return []string{"frontend", "history", "matching"}
}

// reserveFrontend checks that addr can be bound and returns it with the port
// filled in. A taken port is reported here, naming the address, rather than
// deep inside the server's start-up. On PostgreSQL the port must be below
// 32768 (see package freeport).
func reserveFrontend(addr string, postgres bool) (string, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
		if postgres {
			ports, err := freeport.Below(freeport.SmallintMax, 1)
			if err != nil {
				return "", fmt.Errorf("devserver: frontend: %w", err)
			}
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("devserver: frontend address %s is not available: %w", addr, err)
	}
	defer l.Close()
	bound := l.Addr().(*net.TCPAddr)
	if postgres && bound.Port > freeport.SmallintMax {
		return "", fmt.Errorf("devserver: frontend address %s: port %d is above %d, which Temporal's PostgreSQL schema cannot record as a cluster member", addr, bound.Port, freeport.SmallintMax)
	}
	if bound.IP.IsUnspecified() {
		// Go reports a listener on 0.0.0.0 as [::]: keep the family asked for.
		host, _, _ := net.SplitHostPort(addr)
		if host == "" {
			host = "0.0.0.0"
		}
		return net.JoinHostPort(host, strconv.Itoa(bound.Port)), nil
	}
	return bound.String(), nil
}

// dialAddr is where to dial a server listening on addr: addr itself, or
// loopback on its port when addr is every address (0.0.0.0, ::).
func dialAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil || !ip.IsUnspecified():
		return addr
	case ip.To4() != nil:
		return net.JoinHostPort("127.0.0.1", port)
	default:
		return net.JoinHostPort("::1", port)
	}
}

func describeDB(path string) string {
	if path == "" {
		return "memory"
	}
	return path
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
