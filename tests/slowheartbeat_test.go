package tests

import (
	"context"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	sdkworker "go.temporal.io/sdk/worker"
	"google.golang.org/grpc"

	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// slowHeartbeats makes every heartbeat call of a client take delay longer,
// as on a busy server or across a slow link.
func slowHeartbeats(delay time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/temporal.api.workflowservice.v1.WorkflowService/RecordActivityTaskHeartbeat" {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// A heartbeat that takes a second and a half to reach the server does not
// cancel the step that sent it: the worker's options (worker.WorkerOptions)
// leave the SDK most of the heartbeat timeout per heartbeat. With the SDK's
// batching cut to a millisecond, the SDK gave a heartbeat one second and
// then cancelled the attempt, so on a busy server every start, stop or
// destroy failed at its first heartbeat, over and over, and a task's UPID
// never reached the server.
func TestSlowHeartbeatsDoNotCancelTheStep(t *testing.T) {
	host := uniqueHost("pve-slowhb")
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host, TaskDuration: 3 * time.Second})
	must(t, err)
	t.Cleanup(func() { sim.Close() })
	must(t, sim.AddVM(pvesim.Guest{VMID: 101, Name: "app", Status: "stopped", MemoryMiB: 512, Cores: 1}))
	cfg := agentConfig(t, host, sim, t.TempDir(), newOperatorKey(t, "ed25519").Pub)

	ctx := context.Background()
	c, err := client.DialContext(ctx, client.Options{
		HostPort: devservertest.Start(t).FrontendAddr(), Namespace: cfg.Temporal.Namespace, Logger: sdklog.NewStructuredLogger(testLogger(t)),
		ConnectionOptions: client.ConnectionOptions{DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(slowHeartbeats(1500 * time.Millisecond)),
		}},
	})
	must(t, err)
	t.Cleanup(c.Close)
	log := testLogger(t)
	metrics, err := worker.StartMetrics("off", log)
	must(t, err)
	t.Cleanup(func() { metrics.Close() })
	h, err := worker.OpenHost(ctx, cfg, log, sim.RootCAs(), metrics)
	must(t, err)
	t.Cleanup(func() { _ = h.Close() })
	w := sdkworker.New(c, workflows.TaskQueue(host), worker.WorkerOptions(cfg, c))
	worker.Register(w, h.Activities(c))
	must(t, w.Start())
	t.Cleanup(w.Stop)

	a := &agent{host: host, sim: sim, client: clientFor(t)}
	spec := desired.Spec{Host: host, VMID: 101, Kind: desired.QEMU, Name: "app", State: desired.Running, Memory: "512", Cores: 1}
	_, err = a.client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(host, 101), TaskQueue: workflows.TaskQueue(host),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: host, VMID: 101, Desired: &spec})
	must(t, err)
	a.waitPhaseWithin(t, 101, workflows.PhaseConverged, 2*time.Minute)

	if n := countRequests(sim, "POST", "/qemu/101/status/start"); n != 1 {
		t.Errorf("start was POSTed %d times, want once", n)
	}
	// The start ran in one attempt.
	it := a.client.GetWorkflowHistory(ctx, workflows.GuestWorkflowID(host, 101), "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	scheduled := map[int64]string{}
	for it.HasNext() {
		e, err := it.Next()
		must(t, err)
		if s := e.GetActivityTaskScheduledEventAttributes(); s != nil {
			scheduled[e.GetEventId()] = s.GetActivityType().GetName()
		}
		if s := e.GetActivityTaskStartedEventAttributes(); s != nil && scheduled[s.GetScheduledEventId()] == workflows.ActivityStartGuest && s.GetAttempt() != 1 {
			t.Errorf("StartGuest took %d attempts (last failure: %v), want one", s.GetAttempt(), s.GetLastFailure().GetMessage())
		}
	}
}
