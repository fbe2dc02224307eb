package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/server/api/adminservice/v1"
	"go.temporal.io/server/common/config"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/pgcluster"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/temporalclient"
	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// The cluster test runs the production shape on one machine: a Temporal
// cluster of two full server nodes (frontend, history, matching) in two
// processes on one PostgreSQL, finding each other through its membership
// table, and one worker process per simulated Proxmox host, each given
// both frontends. One node is killed with SIGKILL while Proxmox tasks run.

// childServerEnv makes the test binary run a Temporal server node instead of
// the tests; its value is the node's configuration as JSON.
const childServerEnv = "AGENT_TEST_CHILD_SERVER"

// clusterShards is the cluster's history shard count: enough for both
// nodes to own some.
const clusterShards = 8

// childServerConfig is a server node's configuration.
type childServerConfig struct {
	// Default and Visibility are Temporal's databases on PostgreSQL; nil
	// keeps all state in the SQLite file SQLite.
	Default, Visibility *pgSQL
	SQLite              string
	// Frontend is the address to listen on, "" for a free port: a node
	// restarted on its database keeps the address its workers dial.
	Frontend string
	Shards   int32
	// Gossip makes the node one of a cluster on the same PostgreSQL.
	Gossip bool
}

type pgSQL struct{ Addr, User, Password, DB string }

func runChildServer(raw string) int {
	var cfg childServerConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "child server:", err)
		return 2
	}
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("FELHOM_TEST_SERVER_LOGS") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dc := devserver.Config{
		DBPath:           cfg.SQLite,
		FrontendAddr:     cfg.Frontend,
		HistoryShards:    cfg.Shards,
		Gossip:           cfg.Gossip,
		SearchAttributes: visibility.SearchAttributes(),
		Logger:           log,
	}
	if cfg.Default != nil {
		dc.Postgres = &devserver.Postgres{Default: cfg.Default.sql(), Visibility: cfg.Visibility.sql()}
	}
	s, err := devserver.Start(ctx, dc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child server:", err)
		return 1
	}
	fmt.Println("READY " + s.FrontendAddr() + " " + s.HistoryAddr())
	<-ctx.Done()
	if err := s.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "child server:", err)
		return 1
	}
	return 0
}

// serverNode is one Temporal server node in its own process.
type serverNode struct {
	*childProcess
	frontend string
	history  string // the node's history service, as DescribeMutableState names a shard's owner
}

// pgConfig is a server node's configuration on pg's two databases.
func pgConfig(pg *pgcluster.Cluster) childServerConfig {
	of := func(db string) *pgSQL { return &pgSQL{Addr: pg.Addr(), User: pg.User, Password: pg.Password, DB: db} }
	return childServerConfig{Default: of(pgcluster.DB), Visibility: of(pgcluster.VisibilityDB)}
}

// startServerNode starts a node of the cluster on pg.
func startServerNode(t *testing.T, pg *pgcluster.Cluster, name string) *serverNode {
	t.Helper()
	cfg := pgConfig(pg)
	cfg.Shards, cfg.Gossip = clusterShards, true
	return startServer(t, name, cfg)
}

// startServer runs a Temporal server node with cfg in a process of its own
// and waits until it serves.
func startServer(t *testing.T, name string, cfg childServerConfig) *serverNode {
	t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childServerEnv+"="+string(raw))
	p, line := startProcess(t, name, cmd, func(line string) bool { return strings.HasPrefix(line, "READY ") }, 2*time.Minute)
	n := &serverNode{childProcess: p}
	n.frontend, n.history, _ = strings.Cut(strings.TrimPrefix(line, "READY "), " ")
	return n
}

func (p pgSQL) sql() *config.SQL {
	return &config.SQL{PluginName: pgcluster.Plugin, DatabaseName: p.DB, ConnectAddr: p.Addr, ConnectProtocol: "tcp", User: p.User, Password: p.Password}
}

// historyMembers is the number of history hosts the node at frontend sees in
// the cluster's ring.
func historyMembers(t *testing.T, frontend string) int {
	t.Helper()
	conn, err := grpc.NewClient(frontend, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := adminservice.NewAdminServiceClient(conn).DescribeCluster(ctx, &adminservice.DescribeClusterRequest{})
	if err != nil {
		t.Logf("describe cluster at %s: %v", frontend, err)
		return -1
	}
	for _, r := range resp.GetMembershipInfo().GetRings() {
		if r.GetRole() == "history" {
			return int(r.GetMemberCount())
		}
	}
	return 0
}

// shardOwner is the history host that owns workflowID's shard.
func shardOwner(t *testing.T, c client.Client, frontend, workflowID string) string {
	t.Helper()
	conn, err := grpc.NewClient(frontend, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := adminservice.NewAdminServiceClient(conn).DescribeMutableState(ctx, &adminservice.DescribeMutableStateRequest{
		Namespace: "default", Execution: &commonpb.WorkflowExecution{WorkflowId: workflowID},
	})
	if err != nil {
		t.Fatalf("describe mutable state of %s: %v", workflowID, err)
	}
	return resp.GetHistoryAddr()
}

// clusterHost is one simulated Proxmox host with its worker process.
type clusterHost struct {
	name string
	sim  *pvesim.Server
	a    *agent
}

func TestClusterSurvivesLosingAServerNode(t *testing.T) {
	pg := devservertest.StartPostgres(t)
	t.Cleanup(func() { _ = pg.Stop() })
	nodes := []*serverNode{startServerNode(t, pg, "node-a"), startServerNode(t, pg, "node-b")}
	frontends := nodes[0].frontend + "," + nodes[1].frontend
	waitFor(t, "both nodes in the history ring", func() bool { return historyMembers(t, nodes[0].frontend) == 2 })

	ctx := context.Background()
	c, err := temporalclient.Dial(ctx, temporalclient.Config{Address: frontends, Namespace: "default"}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)

	// Three hosts, each a simulator and a worker process given both frontends.
	ops := newOperatorKey(t, "ed25519")
	var hosts []*clusterHost
	for i := range 3 {
		name := uniqueHost(fmt.Sprintf("pve-node%d", i+1))
		sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: name, TaskDuration: 6 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sim.Close() })
		for _, vmid := range []int{101, 102} {
			must(t, sim.AddVM(pvesim.Guest{VMID: vmid, Name: fmt.Sprintf("vm%d", vmid), Status: "stopped", MemoryMiB: 1024, Cores: 1}))
		}
		cfg := clusterAgentConfig(t, name, sim, frontends, ops.Pub)
		startChild(t, childEnviron(cfg, simCAFile(t, sim)), name+".log")
		hosts = append(hosts, &clusterHost{name: name, sim: sim, a: &agent{host: name, sim: sim, client: c}})
	}
	start := func(h *clusterHost, vmid int) {
		t.Helper()
		spec := desired.Spec{Host: h.name, VMID: vmid, Kind: desired.QEMU, Name: fmt.Sprintf("vm%d", vmid), State: desired.Running, Memory: "1024", Cores: 1}
		_, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID: workflows.GuestWorkflowID(h.name, vmid), TaskQueue: workflows.TaskQueue(h.name),
		}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: h.name, VMID: vmid, Desired: &spec})
		must(t, err)
	}

	// Every host's first guest is being started: Proxmox runs the tasks.
	for _, h := range hosts {
		start(h, 101)
	}
	for _, h := range hosts {
		waitFor(t, h.name+"'s start of 101 to reach Proxmox", func() bool {
			return len(h.sim.RequestsMatching("POST", "/nodes/*/qemu/101/status/start")) == 1
		})
	}
	// The node that owns most of these workflows' history shards dies.
	owned := map[string]int{}
	for _, h := range hosts {
		owned[shardOwner(t, c, nodes[0].frontend, workflows.GuestWorkflowID(h.name, 101))]++
	}
	victim, survivor := nodes[0], nodes[1]
	if owned[nodes[1].history] > owned[nodes[0].history] {
		victim, survivor = nodes[1], nodes[0]
	}
	if owned[victim.history] == 0 {
		t.Fatalf("no workflow's shard is on either node (%v, owners %v): the test proves nothing", []string{nodes[0].history, nodes[1].history}, maps.Collect(maps.All(owned)))
	}
	victim.kill()
	t.Logf("killed %s, which owned the shards of %d of the 3 workflows", victim.name, owned[victim.history])
	for _, h := range hosts {
		if g, _ := h.sim.Guest(101); g.Status == "running" {
			t.Fatalf("%s: guest 101 was running before the node died: the test proves nothing", h.name)
		}
	}

	// Everything goes on through the other node: the tasks in flight are
	// finished, and new work runs.
	for _, h := range hosts {
		h.a.waitPhaseWithin(t, 101, workflows.PhaseConverged, 3*time.Minute)
		start(h, 102)
	}
	for _, h := range hosts {
		h.a.waitPhaseWithin(t, 102, workflows.PhaseConverged, 3*time.Minute)
	}
	if n := historyMembers(t, survivor.frontend); n != 1 {
		t.Errorf("history ring after the kill has %d members, want the survivor alone", n)
	}

	// Nothing lost, nothing done twice: one start per guest, one run per
	// guest workflow.
	for _, h := range hosts {
		for _, vmid := range []int{101, 102} {
			if n := countRequests(h.sim, "POST", fmt.Sprintf("/qemu/%d/status/start", vmid)); n != 1 {
				t.Errorf("%s: guest %d started %d times, want once", h.name, vmid, n)
			}
			if g, _ := h.sim.Guest(vmid); g.Status != "running" {
				t.Errorf("%s: guest %d is %s, want running", h.name, vmid, g.Status)
			}
			id := workflows.GuestWorkflowID(h.name, vmid)
			resp, err := c.WorkflowService().CountWorkflowExecutions(ctx, &workflowservice.CountWorkflowExecutionsRequest{
				Namespace: "default", Query: fmt.Sprintf("WorkflowId = '%s'", id),
			})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetCount() != 1 {
				t.Errorf("%s has %d runs, want 1", id, resp.GetCount())
			}
		}
	}
}
