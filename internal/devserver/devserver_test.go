package devserver_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/freeport"
	"github.com/felhom/felhom-agent/internal/visibility"
)

func startServer(t *testing.T, cfg devserver.Config) *devserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := devserver.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return s
}

func dial(t *testing.T, s *devserver.Server) client.Client {
	t.Helper()
	c, err := s.Dial(context.Background())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return c
}

func customAttributes(t *testing.T, c client.Client, ns string) map[string]enumspb.IndexedValueType {
	t.Helper()
	resp, err := c.OperatorService().ListSearchAttributes(context.Background(), &operatorservice.ListSearchAttributesRequest{Namespace: ns})
	if err != nil {
		t.Fatalf("ListSearchAttributes: %v", err)
	}
	return resp.GetCustomAttributes()
}

func TestInMemoryServerHasNamespaceRetentionAndSearchAttributes(t *testing.T) {
	cfg := devservertest.Config()
	cfg.Retention = 96 * time.Hour
	s := startServer(t, cfg)
	defer s.Stop()
	c := dial(t, s)
	defer c.Close()

	if !strings.HasPrefix(s.FrontendAddr(), "127.0.0.1:") {
		t.Errorf("frontend %q does not listen on 127.0.0.1", s.FrontendAddr())
	}
	ns, err := c.WorkflowService().DescribeNamespace(context.Background(), &workflowservice.DescribeNamespaceRequest{Namespace: "default"})
	if err != nil {
		t.Fatalf("DescribeNamespace: %v", err)
	}
	if got := ns.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration(); got != 96*time.Hour {
		t.Errorf("retention = %s, want 96h", got)
	}
	got := customAttributes(t, c, "default")
	for name, typ := range visibility.SearchAttributes() {
		if got[name] != typ {
			t.Errorf("search attribute %s = %s, want %s", name, got[name], typ)
		}
	}
}

// A database written by an earlier version, without the search attributes and
// with another retention, is brought up to date on the next start; and the
// workflows it holds survive the restart.
func TestFileServerKeepsDataAndUpgradesExistingDatabase(t *testing.T) {
	db := filepath.Join(t.TempDir(), "temporal.db")

	first := startServer(t, devserver.Config{DBPath: db, Retention: 24 * time.Hour})
	c := dial(t, first)
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: "survivor", TaskQueue: "nobody-polls"}, "SomeWorkflow")
	if err != nil {
		t.Fatalf("ExecuteWorkflow: %v", err)
	}
	if n := len(customAttributes(t, c, "default")); n != 0 {
		t.Fatalf("first start registered %d custom search attributes, want 0", n)
	}
	c.Close()
	if err := first.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	second := startServer(t, devserver.Config{DBPath: db, Retention: 48 * time.Hour, SearchAttributes: visibility.SearchAttributes()})
	defer second.Stop()
	c = dial(t, second)
	defer c.Close()
	desc, err := c.DescribeWorkflowExecution(context.Background(), "survivor", "")
	if err != nil {
		t.Fatalf("workflow started before the restart is gone: %v", err)
	}
	if desc.GetWorkflowExecutionInfo().GetExecution().GetRunId() != run.GetRunID() {
		t.Errorf("run id after restart = %s, want %s", desc.GetWorkflowExecutionInfo().GetExecution().GetRunId(), run.GetRunID())
	}
	ns, err := c.WorkflowService().DescribeNamespace(context.Background(), &workflowservice.DescribeNamespaceRequest{Namespace: "default"})
	if err != nil {
		t.Fatalf("DescribeNamespace: %v", err)
	}
	if got := ns.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration(); got != 48*time.Hour {
		t.Errorf("retention after restart = %s, want 48h", got)
	}
	got := customAttributes(t, c, "default")
	for name, typ := range visibility.SearchAttributes() {
		if got[name] != typ {
			t.Errorf("search attribute %s = %s after restart, want %s", name, got[name], typ)
		}
	}
}

func TestTakenFrontendPortFailsClearly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = devserver.Start(context.Background(), devserver.Config{FrontendAddr: l.Addr().String()})
	if err == nil {
		t.Fatal("Start on a taken port succeeded")
	}
	if !strings.Contains(err.Error(), l.Addr().String()) || !strings.Contains(err.Error(), "not available") {
		t.Errorf("error %q does not name the taken address", err)
	}
}

// The frontend listens on the address FrontendAddr names, not on 127.0.0.1
// whatever it says: a worker on another host, or in another network
// namespace, dials that address. On every address (0.0.0.0) it is dialled
// on loopback, which a worker's configuration accepts for plaintext.
func TestFrontendListensOnTheConfiguredAddress(t *testing.T) {
	for _, tc := range []struct {
		listen, dialHost string
		notOn            string // an address it must not answer on, if any
	}{
		{"127.0.0.2:0", "127.0.0.2", "127.0.0.1"}, // loopback, yet not 127.0.0.1
		{"0.0.0.0:0", "127.0.0.1", ""},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			cfg := devservertest.Config()
			cfg.FrontendAddr = tc.listen
			s := startServer(t, cfg)
			defer s.Stop()
			host, port, err := net.SplitHostPort(s.FrontendAddr())
			if err != nil || host != tc.dialHost {
				t.Fatalf("FrontendAddr = %q, want %s:PORT", s.FrontendAddr(), tc.dialHost)
			}
			c := dial(t, s)
			defer c.Close()
			if _, err := c.CheckHealth(context.Background(), nil); err != nil {
				t.Fatalf("health check on %s: %v", s.FrontendAddr(), err)
			}
			if tc.notOn == "" {
				return
			}
			// Another process of a shared machine may listen on that
			// address and port; only a socket of this process counts.
			if ownListener(t, tc.notOn, port) {
				t.Errorf("the frontend also listens on %s:%s: it ignores the configured address", tc.notOn, port)
			}
		})
	}
}

// ownListener reports whether this process has a TCP socket listening on
// ip:port (IPv4): a LISTEN row of /proc/net/tcp with that local address
// whose inode is one of this process's open sockets.
func ownListener(t *testing.T, ip, port string) bool {
	t.Helper()
	mine := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if link, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil {
			if inode, ok := strings.CutPrefix(link, "socket:["); ok {
				mine[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	addr := net.ParseIP(ip).To4()
	p, err := strconv.Atoi(port)
	if addr == nil || err != nil {
		t.Fatalf("bad address %s:%s", ip, port)
	}
	// /proc/net/tcp writes the address as the 32-bit word in host order
	// (little-endian here), then the port.
	want := strings.ToUpper(fmt.Sprintf("%02x%02x%02x%02x:%04x", addr[3], addr[2], addr[1], addr[0], p))
	table, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == want && f[3] == "0A" && mine[f[9]] {
			return true
		}
	}
	return false
}

func TestRetentionBelowServerMinimumIsRejected(t *testing.T) {
	_, err := devserver.Start(context.Background(), devserver.Config{Retention: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "retention") {
		t.Fatalf("Start with 1h retention: err = %v, want a retention error", err)
	}
}

func TestStopReleasesPortAndGoroutines(t *testing.T) {
	// Other tests' servers leave upstream reconnect loops behind; count only
	// this server's, in a process of its own.
	if os.Getenv("DEVSERVER_LEAK_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStopReleasesPortAndGoroutines$", "-test.count=1")
		cmd.Env = append(os.Environ(), "DEVSERVER_LEAK_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("isolated run failed: %v\n%s", err, out)
		}
		return
	}
	s := startServer(t, devserver.Config{})
	addr := s.FrontendAddr()
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("frontend port still held after Stop: %v", err)
	}
	l.Close()

	// Some goroutines end shortly after Stop returns.
	deadline := time.Now().Add(20 * time.Second)
	for {
		leaked := leakedGoroutines()
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines still running after Stop:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// upstreamLeaks are goroutines that go.temporal.io/server v1.32.1 starts and
// never stops, whoever embeds it: the callback serializers of the gRPC clients
// its services build and the connection openers of database handles it does
// not close.
// Everything else that outlives Stop is ours and fails the test.
var upstreamLeaks = []string{
	"created by google.golang.org/grpc/internal/grpcsync.NewCallbackSerializer",
	"created by database/sql.OpenDB",
}

func leakedGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var leaked []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testing.(*T).Run") || strings.Contains(g, "testing.(*M).Run") || strings.Contains(g, "leakedGoroutines") {
			continue
		}
		known := false
		for _, u := range upstreamLeaks {
			known = known || strings.Contains(g, u)
		}
		if !known {
			leaked = append(leaked, g)
		}
	}
	return leaked
}

// On PostgreSQL, as a production cluster keeps it: the namespace is
// registered through the API with its retention and the search attributes,
// every port is one the schema can record (below 32768), and a workflow
// survives a restart of the server on the same database.
func TestPostgresServerKeepsDataAcrossARestart(t *testing.T) {
	pg := devservertest.StartPostgres(t)
	t.Cleanup(func() { _ = pg.Stop() })
	cfg := devservertest.Config()
	cfg.Postgres = devservertest.PostgresOf(pg)
	cfg.Retention = 96 * time.Hour

	first := startServer(t, cfg)
	_, port, _ := net.SplitHostPort(first.FrontendAddr())
	if p, _ := strconv.Atoi(port); p > freeport.SmallintMax {
		t.Errorf("frontend %s: port above %d", first.FrontendAddr(), freeport.SmallintMax)
	}
	c := dial(t, first)
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: "survivor", TaskQueue: "nobody-polls"}, "SomeWorkflow")
	if err != nil {
		t.Fatalf("ExecuteWorkflow: %v", err)
	}
	ns, err := c.WorkflowService().DescribeNamespace(context.Background(), &workflowservice.DescribeNamespaceRequest{Namespace: "default"})
	if err != nil {
		t.Fatalf("DescribeNamespace: %v", err)
	}
	if got := ns.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration(); got != 96*time.Hour {
		t.Errorf("retention = %s, want 96h", got)
	}
	got := customAttributes(t, c, "default")
	for name, typ := range visibility.SearchAttributes() {
		if got[name] != typ {
			t.Errorf("search attribute %s = %s, want %s", name, got[name], typ)
		}
	}
	c.Close()
	if err := first.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	second := startServer(t, cfg)
	defer second.Stop()
	c = dial(t, second)
	defer c.Close()
	desc, err := c.DescribeWorkflowExecution(context.Background(), "survivor", "")
	if err != nil {
		t.Fatalf("workflow started before the restart is gone: %v", err)
	}
	if desc.GetWorkflowExecutionInfo().GetExecution().GetRunId() != run.GetRunID() {
		t.Errorf("run id after restart = %s, want %s", desc.GetWorkflowExecutionInfo().GetExecution().GetRunId(), run.GetRunID())
	}
}

// A frontend above 32767 on PostgreSQL is refused before anything starts:
// the membership table could not record it.
func TestPostgresRefusesAFrontendPortAboveSmallint(t *testing.T) {
	var l net.Listener
	for {
		var err error
		if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l.Addr().(*net.TCPAddr).Port > freeport.SmallintMax {
			break
		}
		l.Close()
	}
	addr := l.Addr().String()
	l.Close()
	_, err := devserver.Start(context.Background(), devserver.Config{FrontendAddr: addr, Postgres: &devserver.Postgres{}})
	if err == nil || !strings.Contains(err.Error(), "above 32767") {
		t.Fatalf("Start on PostgreSQL with frontend %s: %v, want a refusal naming the port limit", addr, err)
	}
}

// ownListener finds this process's listener and only at its address.
func TestOwnListenerFindsThisProcesssSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	if !ownListener(t, "127.0.0.1", port) {
		t.Errorf("listener on 127.0.0.1:%s not found", port)
	}
	if ownListener(t, "127.0.0.2", port) {
		t.Errorf("listener on 127.0.0.1:%s reported on 127.0.0.2", port)
	}
}
