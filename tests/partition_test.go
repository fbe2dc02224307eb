//go:build linux

package tests

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/felhom/felhom-agent/activities"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/devserver"
	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/netns"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/internal/testtool"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// Network partitions between a host and the cluster, and between a host and
// its Proxmox API.
//
// Each test builds the network of one host out of Linux network namespaces
// (package netns; root and iproute2 needed, CI has both):
//
//	root namespace            host namespace           pve namespace
//	Temporal server  <-link->  felhom-agent run  <-link->  simulator
//	(this process)             (ip netns exec)             (this process's listener)
//
// The Temporal server listens on the root end of the first link, the
// simulator on the pve end of the second; the worker is `felhom-agent run`
// (agentBinary) inside the host namespace. Cutting a link drops the
// worker's packets without an error, as a pulled cable or a dead router
// does. The simulator's holds place the cut at an exact point of a step; the
// link is healed only once the server has given up on the worker's attempt
// (its heartbeat timeout, workflows.HeartbeatTimeout, passed and the next
// attempt is scheduled), so each test waits about a minute: the tests run in
// parallel, each with its own server and namespaces.

// partitionedHost is one host's worker in a network namespace of its own.
type partitionedHost struct {
	*agent
	server   *devserver.Server
	temporal *netns.Link // root (the server) to the host namespace
	proxmox  *netns.Link // the pve namespace (the simulator) to the host namespace
	ops      operatorKey
	env      []string
}

// newPartitionedHost builds the namespaces and links, starts the Temporal
// server and the simulator at their ends, and the worker in between.
func newPartitionedHost(t *testing.T, base string, simCfg pvesim.Config, guests ...pvesim.Guest) *partitionedHost {
	t.Helper()
	if err := netns.Available(); err != nil {
		testtool.Unavailable(t, err)
	}
	hostNS := newNamespace(t, "host")
	pveNS := newNamespace(t, "pve")
	temporalLink := connect(t, nil, hostNS)
	proxmoxLink := connect(t, pveNS, hostNS)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srvCfg := devservertest.Config()
	srvCfg.FrontendAddr = net.JoinHostPort(temporalLink.A.Addr.String(), "0")
	server, err := devserver.Start(ctx, srvCfg)
	if err != nil {
		t.Fatalf("start the Temporal server on %s: %v", srvCfg.FrontendAddr, err)
	}
	t.Cleanup(func() { _ = server.Stop() })
	c, err := server.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)

	host := uniqueHost(base)
	simCfg.StrictPVE, simCfg.Node = true, host
	simCfg.Addr = net.JoinHostPort(proxmoxLink.A.Addr.String(), "0")
	var sim *pvesim.Server
	if err := pveNS.Do(func() (err error) { sim, err = pvesim.Start(simCfg); return err }); err != nil {
		t.Fatalf("start the simulator in %s: %v", pveNS.Name, err)
	}
	t.Cleanup(func() { sim.Close() })
	for _, g := range guests {
		must(t, sim.AddVM(g))
	}

	ops := newOperatorKey(t, "ed25519")
	// hostConfig checks the configuration; plaintext to a server that is
	// not on loopback must be asked for (temporal.insecure).
	cfg := hostConfig(t, host, sim, "127.0.0.1:7233", t.TempDir(), ops.Pub)
	cfg.Temporal.Address = server.FrontendAddr()
	cfg.Temporal.Insecure = true
	// A request into a cut link fails after this long, and the step retries.
	cfg.Proxmox.Timeout = 5 * time.Second
	must(t, cfg.Validate())
	env := append(childEnviron(cfg, simCAFile(t, sim)),
		"FELHOM_TEMPORAL_INSECURE=true", "FELHOM_PROXMOX_TIMEOUT="+cfg.Proxmox.Timeout.String())

	p := &partitionedHost{
		agent:  &agent{host: host, sim: sim, cfg: cfg, client: c},
		server: server, temporal: temporalLink, proxmox: proxmoxLink, ops: ops, env: env,
	}
	cmd := hostNS.Command(agentBinary(t), "run")
	// The worker dies with this process: a test killed mid-partition leaves
	// no worker behind in a namespace the next run deletes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	startChildCmd(t, cmd, env, "worker.log")
	return p
}

func newNamespace(t *testing.T, role string) *netns.Namespace {
	t.Helper()
	ns, err := netns.New(role)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Errorf("delete namespace: %v", err)
		}
	})
	return ns
}

func connect(t *testing.T, a, b *netns.Namespace) *netns.Link {
	t.Helper()
	l, err := netns.Connect(a, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func cut(t *testing.T, l *netns.Link) {
	t.Helper()
	if err := l.Cut(); err != nil {
		t.Fatal(err)
	}
}

func heal(t *testing.T, l *netns.Link) {
	t.Helper()
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
}

// start runs the guest workflow with spec as its desired state.
func (p *partitionedHost) start(t *testing.T, spec desired.Spec) {
	t.Helper()
	_, err := p.client.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.GuestWorkflowID(p.host, spec.VMID), TaskQueue: workflows.TaskQueue(p.host),
	}, workflows.GuestReconcileWorkflow, workflows.GuestInput{Host: p.host, VMID: spec.VMID, Desired: &spec})
	must(t, err)
}

// stoppedVM is a stopped VM for a start to act on.
func stoppedVM(vmid int, name string) pvesim.Guest {
	return pvesim.Guest{VMID: vmid, Name: name, Status: "stopped", MemoryMiB: 1024, Cores: 1}
}

// dataVM is a VM with a disk: destroying it needs an operator's signature.
func dataVM(vmid int) pvesim.Guest {
	return pvesim.Guest{VMID: vmid, Name: "customer", Status: "stopped", MemoryMiB: 1024, Cores: 1,
		Disks: map[string]string{"scsi0": fmt.Sprintf("local-lvm:vm-%d-disk-0,size=32G", vmid)}}
}

// runGuest asks for stoppedVM(vmid, name) to run.
// startCutAfterPost runs the guest vmid, which is stopped, and cuts link
// while its start request is in the simulator: the request is served and
// takes effect, and its answer, or what the worker does with it, is lost in
// the cut.
func (p *partitionedHost) startCutAfterPost(t *testing.T, vmid int, name string, link *netns.Link) {
	t.Helper()
	post := pvesim.NewHook()
	p.sim.Inject(pvesim.Fault{Method: "POST", Path: fmt.Sprintf("/nodes/*/qemu/%d/status/start", vmid), Kind: pvesim.FaultHold, Hook: post})
	p.runGuest(t, vmid, name)
	waitHit(t, "the start request", post)
	cut(t, link)
	post.Release()
	waitFor(t, "the start to take effect behind the cut", func() bool {
		g, _ := p.sim.Guest(vmid)
		return g.Status == "running"
	})
}

func (p *partitionedHost) runGuest(t *testing.T, vmid int, name string) {
	t.Helper()
	p.start(t, desired.Spec{Host: p.host, VMID: vmid, Kind: desired.QEMU, Name: name, State: desired.Running, Memory: "1024", Cores: 1})
}

// pendingDestroy asks for guest vmid to be absent, waits for the destroy to
// wait for a signature, and signs it with ssh-keygen.
func (p *partitionedHost) pendingDestroy(t *testing.T, vmid int) (gate.Op, workflows.Approval) {
	t.Helper()
	p.start(t, desired.Spec{Host: p.host, VMID: vmid, State: desired.Absent})
	st := p.waitPhase(t, vmid, workflows.PhasePending)
	if st.Pending == nil || st.Pending.Action.Op != gate.OpGuestDestroy {
		t.Fatalf("pending = %+v, want guest.destroy", st.Pending)
	}
	op := opFor(st.Pending.OpTemplate)
	return op, signWithSSHKeygen(t, p.ops, op)
}

// pendingStep is what the server holds about the guest workflow's pending
// activity of type name, and the Progress its heartbeat details carry.
func (p *partitionedHost) pendingStep(t *testing.T, vmid int, name string) (*workflowpb.PendingActivityInfo, activities.Progress, bool) {
	t.Helper()
	desc, err := p.client.DescribeWorkflowExecution(context.Background(), workflows.GuestWorkflowID(p.host, vmid), "")
	must(t, err)
	for _, pa := range desc.GetPendingActivities() {
		if pa.GetActivityType().GetName() != name {
			continue
		}
		var prog activities.Progress
		if pa.GetHeartbeatDetails() != nil {
			if err := converter.GetDefaultDataConverter().FromPayloads(pa.GetHeartbeatDetails(), &prog); err != nil {
				t.Fatalf("heartbeat details of %s: %v", name, err)
			}
		}
		return pa, prog, true
	}
	return nil, activities.Progress{}, false
}

// waitAttempt waits until the server has scheduled attempt n of the step:
// for n = 2 after a cut, until it gave up on the first attempt.
func (p *partitionedHost) waitAttempt(t *testing.T, vmid int, name string, n int32) *workflowpb.PendingActivityInfo {
	t.Helper()
	deadline := time.Now().Add(4 * workflows.HeartbeatTimeout)
	for {
		if pa, _, ok := p.pendingStep(t, vmid, name); ok && pa.GetAttempt() >= n {
			return pa
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not schedule attempt %d of %s within %s", n, name, 4*workflows.HeartbeatTimeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// completedAttempts lists, for each completion of an activity of type name
// the server recorded in the guest workflow's history, the attempt it came
// from.
func (p *partitionedHost) completedAttempts(t *testing.T, vmid int, name string) []int32 {
	t.Helper()
	scheduled := map[int64]bool{}
	attempt := map[int64]int32{}
	var done []int32
	it := p.client.GetWorkflowHistory(context.Background(), workflows.GuestWorkflowID(p.host, vmid), "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		must(t, err)
		switch {
		case ev.GetActivityTaskScheduledEventAttributes() != nil:
			scheduled[ev.GetEventId()] = ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName() == name
		case ev.GetActivityTaskStartedEventAttributes() != nil:
			attempt[ev.GetEventId()] = ev.GetActivityTaskStartedEventAttributes().GetAttempt()
		case ev.GetActivityTaskCompletedEventAttributes() != nil:
			a := ev.GetActivityTaskCompletedEventAttributes()
			if scheduled[a.GetScheduledEventId()] {
				done = append(done, attempt[a.GetStartedEventId()])
			}
		}
	}
	return done
}

// recentResult is the result and detail of the guest's last action op.
func recentResult(st workflows.GuestStatus, op string) (result, detail string) {
	for _, r := range st.Recent {
		if r.Action.Op == op {
			result, detail = r.Result, r.Detail
		}
	}
	return result, detail
}

// checkOnce checks what every test shows: the mutation reached the
// simulator once, the server recorded one completion of the step and it came
// from a later attempt than the one the cut stranded (that attempt's own
// completion, if it sent one, was refused), and nothing is left pending.
func (p *partitionedHost) checkOnce(t *testing.T, vmid int, step, method, pathSuffix string) {
	t.Helper()
	if n := countRequests(p.sim, method, pathSuffix); n != 1 {
		t.Errorf("%s %s reached Proxmox %d times, want once", method, pathSuffix, n)
	}
	if got := p.completedAttempts(t, vmid, step); len(got) != 1 || got[0] < 2 {
		t.Errorf("completions of %s in history came from attempts %v, want one, from attempt 2 or later", step, got)
	}
	if _, _, ok := p.pendingStep(t, vmid, step); ok {
		t.Errorf("%s still pending after the guest converged", step)
	}
}

// A start is POSTed while the host is cut off from Temporal: Proxmox does
// it, the attempt's heartbeat with the task never reaches the server, and
// its completion comes too late. The next attempt, after the link heals,
// finds the guest running and posts nothing.
func testPartitionBeforePost(t *testing.T) {
	p := newPartitionedHost(t, "pve-part-pre", pvesim.Config{TaskDuration: time.Second},
		stoppedVM(101, "db"))
	p.startCutAfterPost(t, 101, "db", p.temporal)
	p.waitAttempt(t, 101, workflows.ActivityStartGuest, 2)
	if _, prog, _ := p.pendingStep(t, 101, workflows.ActivityStartGuest); prog.UPID != "" {
		t.Fatalf("the server holds task %s: the heartbeat crossed the cut link, the test proves nothing", prog.UPID)
	}
	heal(t, p.temporal)

	st := p.waitPhaseWithin(t, 101, workflows.PhaseConverged, 3*time.Minute)
	if res, detail := recentResult(st, desired.OpStart); res != "done" || detail != "already in place" {
		t.Errorf("guest.start: %s (%s), want done by finding the guest running", res, detail)
	}
	p.checkOnce(t, 101, workflows.ActivityStartGuest, "POST", "/qemu/101/status/start")
}

// The link is cut after Proxmox accepted the start and before the worker's
// heartbeat with the task reached the server; the task is still running
// (queued behind another task's hold on the guest's config lock) when the
// next attempt starts. That attempt finds the task in the node's task list
// and waits on it: no second POST.
func testPartitionAfterPostBeforeHeartbeat(t *testing.T) {
	p := newPartitionedHost(t, "pve-part-post", pvesim.Config{TaskDuration: time.Second, LockTimeout: time.Hour},
		stoppedVM(102, "app"))
	lock := holdConfigLock(t, p.sim, 102)
	reply := pvesim.NewHook()
	p.sim.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/102/status/start", Kind: pvesim.FaultHoldAfter, Hook: reply})
	p.runGuest(t, 102, "app")

	waitHit(t, "the start request, served", reply)
	cut(t, p.temporal)
	reply.Release()
	p.waitAttempt(t, 102, workflows.ActivityStartGuest, 2)
	posts := p.sim.RequestsMatching("POST", "/nodes/*/qemu/102/status/start")
	if len(posts) != 1 || posts[0].UPID == "" {
		t.Fatalf("start requests during the partition: %+v, want one that started a task", posts)
	}
	if _, prog, _ := p.pendingStep(t, 102, workflows.ActivityStartGuest); prog.UPID != "" {
		t.Fatalf("the server holds task %s: the heartbeat crossed the cut link, the test proves nothing", prog.UPID)
	}
	if g, _ := p.sim.Guest(102); g.Status == "running" {
		t.Fatal("the start task ended during the partition: the test proves nothing")
	}
	heal(t, p.temporal)

	// The new attempt adopts the queued task and records it; then the lock
	// is let go and the task runs.
	waitFor(t, "the new attempt to adopt the running start task", func() bool {
		pa, prog, ok := p.pendingStep(t, 102, workflows.ActivityStartGuest)
		return ok && pa.GetAttempt() >= 2 && prog.UPID == posts[0].UPID
	})
	lock.Release()
	st := p.waitPhaseWithin(t, 102, workflows.PhaseConverged, 3*time.Minute)
	if res, detail := recentResult(st, desired.OpStart); res != "done" || detail != "resumed task "+posts[0].UPID {
		t.Errorf("guest.start: %s (%s), want done by resuming %s", res, detail, posts[0].UPID)
	}
	p.checkOnce(t, 102, workflows.ActivityStartGuest, "POST", "/qemu/102/status/start")
}

// holdConfigLock makes the simulator run a config change of guest vmid
// that holds the guest's config lock until the returned hook is released:
// a task started meanwhile stays queued, "running", behind it. The request
// is served in this process (the simulator listens in another namespace).
func holdConfigLock(t *testing.T, sim *pvesim.Server, vmid int) *pvesim.Hook {
	t.Helper()
	hook := pvesim.NewHook()
	path := fmt.Sprintf("/nodes/%s/qemu/%d/config", sim.Node(), vmid)
	sim.Inject(pvesim.Fault{Method: "POST", Path: path, Kind: pvesim.FaultHoldTask, Hook: hook})
	req := httptest.NewRequest("POST", "/api2/json"+path, strings.NewReader(url.Values{"description": {"backup window"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "PVEAPIToken="+sim.TokenID()+"="+sim.TokenSecret())
	rec := httptest.NewRecorder()
	sim.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("config change to hold the lock: %d %s", rec.Code, rec.Body)
	}
	t.Cleanup(hook.Release)
	waitHit(t, "the config change to hold the guest's lock", hook)
	return hook
}

// The link is cut while the worker waits on the task, its UPID recorded on
// the server. The task ends during the partition; the stranded attempt's
// completion is refused, and the next attempt resumes the recorded task.
func testPartitionDuringTaskWait(t *testing.T) {
	p := newPartitionedHost(t, "pve-part-wait", pvesim.Config{TaskDuration: time.Second},
		stoppedVM(103, "web"))
	poll := holdFirstPoll(p.sim)
	p.runGuest(t, 103, "web")

	waitHit(t, "the first poll of the start task", poll)
	posts := p.sim.RequestsMatching("POST", "/nodes/*/qemu/103/status/start")
	if len(posts) != 1 || posts[0].UPID == "" {
		t.Fatalf("start requests: %+v, want one that started a task", posts)
	}
	// The worker sends the UPID before it polls, but its arrival at the
	// server is not ordered with the poll: this point is "the server holds
	// the task".
	waitFor(t, "the server to hold the start task", func() bool {
		_, prog, _ := p.pendingStep(t, 103, workflows.ActivityStartGuest)
		return prog.UPID == posts[0].UPID
	})
	cut(t, p.temporal)
	poll.Release()
	waitFor(t, "the start task to end during the partition", func() bool {
		g, _ := p.sim.Guest(103)
		return g.Status == "running"
	})
	p.waitAttempt(t, 103, workflows.ActivityStartGuest, 2)
	heal(t, p.temporal)

	st := p.waitPhaseWithin(t, 103, workflows.PhaseConverged, 3*time.Minute)
	if res, detail := recentResult(st, desired.OpStart); res != "done" || detail != "resumed task "+posts[0].UPID {
		t.Errorf("guest.start: %s (%s), want done by resuming %s", res, detail, posts[0].UPID)
	}
	p.checkOnce(t, 103, workflows.ActivityStartGuest, "POST", "/qemu/103/status/start")
}

// An operator's approval of a destroy is being delivered when the host is
// cut off: the gate admitted it (its nonce spent) and Proxmox got the
// DELETE, but its answer and the attempt's completion never reach the
// server. After the partition the approval's delivery completes as
// accepted, the guest is destroyed once, the nonce was spent once, and no
// second approval was asked for.
func testPartitionWhileApprovalIsDelivered(t *testing.T) {
	p := newPartitionedHost(t, "pve-part-appr", pvesim.Config{TaskDuration: time.Second},
		dataVM(140))
	op, approval := p.pendingDestroy(t, 140)
	del := pvesim.NewHook()
	p.sim.Inject(pvesim.Fault{Method: "DELETE", Path: "/nodes/*/qemu/140", Kind: pvesim.FaultHoldAfter, Hook: del})

	verdict := p.deliverInBackground(140, approval)

	waitHit(t, "the destroy request, served", del)
	cut(t, p.temporal)
	del.Release()
	waitFor(t, "the guest to be destroyed during the partition", func() bool {
		_, ok := p.sim.Guest(140)
		return !ok
	})
	p.waitAttempt(t, 140, workflows.ActivityDestroyGuest, 2)
	heal(t, p.temporal)

	p.checkVerdict(t, verdict)
	st := p.waitPhaseWithin(t, 140, workflows.PhaseConverged, 3*time.Minute)
	if st.Pending != nil {
		t.Errorf("a signature is asked for again: %+v", st.Pending)
	}
	if res, _ := recentResult(st, gate.OpGuestDestroy); res != "done" {
		t.Errorf("guest.destroy: %s, want done (recent %+v)", res, st.Recent)
	}
	p.checkOnce(t, 140, workflows.ActivityDestroyGuest, "DELETE", "/qemu/140")
	p.checkNonceOnce(t, op.Nonce)
}

// The host is cut off after the gate admitted an approval (its nonce
// spent) and before Proxmox served the DELETE, which the worker gives up on
// (the simulator drops it unserved). The next attempt, after the heal,
// finishes the same act under that admission: the operator signs nothing
// again, the guest is destroyed by one request, the nonce spent once.
func testPartitionAfterAdmissionBeforeRequest(t *testing.T) {
	p := newPartitionedHost(t, "pve-part-adm", pvesim.Config{TaskDuration: time.Second},
		dataVM(142))
	op, approval := p.pendingDestroy(t, 142)
	del := pvesim.NewHook()
	p.sim.Inject(pvesim.Fault{Method: "DELETE", Path: "/nodes/*/qemu/142", Kind: pvesim.FaultHold, Hook: del})
	t.Cleanup(del.Release)
	verdict := p.deliverInBackground(142, approval)

	waitHit(t, "the destroy request", del)
	cut(t, p.temporal)
	// Not released: the worker's request times out and the simulator
	// drops it without acting.
	select {
	case <-del.Done():
	case <-time.After(4 * p.cfg.Proxmox.Timeout):
		t.Fatal("the worker never gave up on the held destroy request")
	}
	if _, ok := p.sim.Guest(142); !ok {
		t.Fatal("the held destroy request was served: the test proves nothing")
	}
	p.waitAttempt(t, 142, workflows.ActivityDestroyGuest, 2)
	heal(t, p.temporal)

	p.checkVerdict(t, verdict)
	st := p.waitPhaseWithin(t, 142, workflows.PhaseConverged, 3*time.Minute)
	if _, ok := p.sim.Guest(142); ok {
		t.Fatal("guest 142 still exists")
	}
	if st.Pending != nil {
		t.Errorf("a signature is asked for again: %+v", st.Pending)
	}
	var served int
	for _, r := range p.sim.RequestsMatching("DELETE", "/nodes/*/qemu/142") {
		if r.Status != 0 {
			served++
		}
	}
	if served != 1 {
		t.Errorf("%d destroy requests were served, want one (the dropped one not counted)", served)
	}
	if got := p.completedAttempts(t, 142, workflows.ActivityDestroyGuest); len(got) != 1 || got[0] < 2 {
		t.Errorf("completions of the destroy in history came from attempts %v, want one, from attempt 2 or later", got)
	}
	p.checkNonceOnce(t, op.Nonce)
}

// deliverInBackground sends an approval by Update, as felhomctl does,
// waiting for the verdict for as long as a partition and its heal take.
func (p *partitionedHost) deliverInBackground(vmid int, approval workflows.Approval) <-chan workflows.ApprovalVerdict {
	verdict := make(chan workflows.ApprovalVerdict, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 6*workflows.HeartbeatTimeout)
		defer cancel()
		h, err := p.client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
			WorkflowID: workflows.GuestWorkflowID(p.host, vmid), UpdateName: workflows.UpdateApprove,
			Args: []any{approval}, WaitForStage: client.WorkflowUpdateStageCompleted,
		})
		var v workflows.ApprovalVerdict
		if err == nil {
			err = h.Get(ctx, &v)
		}
		if err != nil {
			v.Code, v.Detail = "delivery failed", err.Error()
		}
		verdict <- v
	}()
	return verdict
}

// checkVerdict waits for a background delivery's verdict: accepted.
func (p *partitionedHost) checkVerdict(t *testing.T, verdict <-chan workflows.ApprovalVerdict) {
	t.Helper()
	select {
	case v := <-verdict:
		if !v.Accepted {
			t.Errorf("approval delivered across the partition: %+v, want accepted", v)
		}
	case <-time.After(6 * workflows.HeartbeatTimeout):
		t.Fatal("the approval's delivery never completed")
	}
}

// checkNonceOnce checks that the host's nonce store holds nonce once.
func (p *partitionedHost) checkNonceOnce(t *testing.T, nonce string) {
	t.Helper()
	nonces, err := os.ReadFile(p.cfg.NonceStore)
	must(t, err)
	if n := bytes.Count(nonces, []byte(nonce)); n != 1 {
		t.Errorf("the approval's nonce is in the host's nonce store %d times, want once", n)
	}
}

// An approval is sent while the host is cut off: the server takes the
// Update but cannot hand it to the worker, and the operator's client gives
// up; the operator sends the same approval again once the host is back.
// Both deliveries reach the workflow, the destroy runs once, the nonce is
// spent once, and nothing is left pending.
func testApprovalSentWhileCutOff(t *testing.T) {
	p := newPartitionedHost(t, "pve-part-sent", pvesim.Config{TaskDuration: time.Second},
		dataVM(141))
	op, approval := p.pendingDestroy(t, 141)
	deliver := func(within time.Duration) (workflows.ApprovalVerdict, error) {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		h, err := p.client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
			WorkflowID: workflows.GuestWorkflowID(p.host, 141), UpdateName: workflows.UpdateApprove,
			Args: []any{approval}, WaitForStage: client.WorkflowUpdateStageCompleted,
		})
		var v workflows.ApprovalVerdict
		if err == nil {
			err = h.Get(ctx, &v)
		}
		return v, err
	}

	cut(t, p.temporal)
	if v, err := deliver(20 * time.Second); err == nil {
		t.Fatalf("an approval was answered (%+v) while the host was cut off", v)
	}
	if _, ok := p.sim.Guest(141); !ok || countRequests(p.sim, "DELETE", "/qemu/141") != 0 {
		t.Fatal("the guest was touched while the host was cut off")
	}
	heal(t, p.temporal)
	v, err := deliver(3 * time.Minute)
	if err != nil {
		t.Fatalf("approval sent again after the partition: %v", err)
	}
	st := p.waitPhaseWithin(t, 141, workflows.PhaseConverged, 3*time.Minute)
	if _, ok := p.sim.Guest(141); ok {
		t.Fatalf("guest 141 still exists; the second delivery's verdict was %+v", v)
	}
	if st.Pending != nil {
		t.Errorf("a signature is asked for again: %+v", st.Pending)
	}
	if n := countRequests(p.sim, "DELETE", "/qemu/141"); n != 1 {
		t.Errorf("destroy reached Proxmox %d times, want once", n)
	}
	p.checkNonceOnce(t, op.Nonce)
	// The first delivery, kept by the server, ran the act; the second is
	// answered as superseded by it (or, had the server dropped the first,
	// accepted itself): never a second act, never a refusal that asks for
	// another signature.
	if !v.Accepted && v.Code != "superseded" {
		t.Errorf("approval sent again after the partition: %+v, want accepted, or superseded by the first delivery", v)
	}
}

// The host loses its Proxmox API while Temporal stays reachable, just after
// Proxmox accepted a start. The worker keeps heartbeating, so the server
// never gives up on it: the step fails on the Proxmox timeout and retries,
// and once the link heals it finds the guest running and posts nothing.
func testProxmoxPartition(t *testing.T) {
	p := newPartitionedHost(t, "pve-part-pve", pvesim.Config{TaskDuration: time.Second},
		stoppedVM(150, "mail"))
	p.startCutAfterPost(t, 150, "mail", p.proxmox)
	pa := p.waitAttempt(t, 150, workflows.ActivityStartGuest, 3)
	if f := pa.GetLastFailure(); f == nil || f.GetTimeoutFailureInfo() != nil {
		t.Errorf("last failure of the step while Proxmox is unreachable: %v, want a Proxmox request error, not a timeout on the Temporal side", f)
	}
	heal(t, p.proxmox)

	st := p.waitPhaseWithin(t, 150, workflows.PhaseConverged, 3*time.Minute)
	if res, detail := recentResult(st, desired.OpStart); res != "done" || detail != "already in place" {
		t.Errorf("guest.start: %s (%s), want done by finding the guest running", res, detail)
	}
	if n := countRequests(p.sim, "POST", "/qemu/150/status/start"); n != 1 {
		t.Errorf("start reached Proxmox %d times, want once", n)
	}
	if got := p.completedAttempts(t, 150, workflows.ActivityStartGuest); len(got) != 1 || got[0] < 3 {
		t.Errorf("completions of the start in history came from attempts %v, want one, from attempt 3 or later", got)
	}
}

// The host loses its Proxmox API while it waits on a task whose UPID the
// server holds. Every retry during the outage fails on the Proxmox timeout
// and keeps the recorded task (a failed attempt does not clear its
// heartbeat details); the first one after the heal resumes it.
func testProxmoxPartitionDuringTaskWait(t *testing.T) {
	p := newPartitionedHost(t, "pve-part-pvew", pvesim.Config{TaskDuration: time.Second},
		stoppedVM(151, "files"))
	poll := holdFirstPoll(p.sim)
	p.runGuest(t, 151, "files")

	waitHit(t, "the first poll of the start task", poll)
	posts := p.sim.RequestsMatching("POST", "/nodes/*/qemu/151/status/start")
	if len(posts) != 1 || posts[0].UPID == "" {
		t.Fatalf("start requests: %+v, want one that started a task", posts)
	}
	cut(t, p.proxmox)
	poll.Release()
	pa := p.waitAttempt(t, 151, workflows.ActivityStartGuest, 3)
	if f := pa.GetLastFailure(); f == nil || f.GetTimeoutFailureInfo() != nil {
		t.Errorf("last failure of the step while Proxmox is unreachable: %v, want a Proxmox request error, not a timeout on the Temporal side", f)
	}
	if _, prog, _ := p.pendingStep(t, 151, workflows.ActivityStartGuest); prog.UPID != posts[0].UPID {
		t.Errorf("the server holds %+v after failed attempts, want task %s", prog, posts[0].UPID)
	}
	heal(t, p.proxmox)

	st := p.waitPhaseWithin(t, 151, workflows.PhaseConverged, 3*time.Minute)
	if res, detail := recentResult(st, desired.OpStart); res != "done" || detail != "resumed task "+posts[0].UPID {
		t.Errorf("guest.start: %s (%s), want done by resuming %s", res, detail, posts[0].UPID)
	}
	if n := countRequests(p.sim, "POST", "/qemu/151/status/start"); n != 1 {
		t.Errorf("start reached Proxmox %d times, want once", n)
	}
}

// TestPartition runs every partition point at once, each in namespaces and
// with a Temporal server of its own. The cases spend their time waiting out
// a heartbeat timeout, not computing, so they all run together instead of
// -parallel (GOMAXPROCS) at a time: t.Run from one goroutine per case.
func TestPartition(t *testing.T) {
	if err := netns.Available(); err != nil {
		testtool.Unavailable(t, err)
	}
	var wg sync.WaitGroup
	for _, tc := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"BeforePost", testPartitionBeforePost},
		{"AfterPostBeforeHeartbeat", testPartitionAfterPostBeforeHeartbeat},
		{"DuringTaskWait", testPartitionDuringTaskWait},
		{"WhileApprovalIsDelivered", testPartitionWhileApprovalIsDelivered},
		{"ApprovalSentWhileCutOff", testApprovalSentWhileCutOff},
		{"AfterAdmissionBeforeRequest", testPartitionAfterAdmissionBeforeRequest},
		{"ProxmoxUnreachable", testProxmoxPartition},
		{"ProxmoxUnreachableDuringTaskWait", testProxmoxPartitionDuringTaskWait},
	} {
		wg.Go(func() { t.Run(tc.name, tc.run) })
	}
	wg.Wait()
}
