package tests

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// scrape returns the worker's /metrics text.
func (a *agent) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(a.metrics)
	if err != nil {
		t.Fatalf("scrape %s: %v", a.metrics, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// metricValue is the value of the first series of name whose labels include
// every label of want ("k=\"v\""), or -1 when there is none.
func metricValue(text, name string, want ...string) float64 {
	if vs := metricSeries(text, name, want...); len(vs) > 0 {
		return vs[0]
	}
	return -1
}

// metricSum is the sum of every series of name whose labels include every
// label of want: a counter the SDK keeps per task queue or activity type, in
// all.
func metricSum(text, name string, want ...string) float64 {
	var sum float64
	for _, v := range metricSeries(text, name, want...) {
		sum += v
	}
	return sum
}

// metricSeries returns the values of the series of name whose labels
// include every label of want, in the order served.
func metricSeries(text, name string, want ...string) []float64 {
	line := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	var vs []float64
	for _, m := range line.FindAllStringSubmatch(text, -1) {
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(m[1], w)
		}
		if !ok {
			continue
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		vs = append(vs, v)
	}
	return vs
}

// The agent's own metrics follow what it does: guests by phase and pending
// approvals, the gate's decisions by code, Proxmox requests and task waits,
// and the stores' fsyncs; the SDK's series are served beside them.
func TestAgentMetrics(t *testing.T) {
	host := uniqueHost("pve-metrics")
	sim := startSim(t, host)
	must(t, sim.AddVM(pvesim.Guest{VMID: 101, Name: "web", Status: "stopped", MemoryMiB: 1024, Cores: 1}))
	must(t, sim.AddVM(pvesim.Guest{VMID: 140, Name: "customer", Status: "running", MemoryMiB: 1024, Cores: 1}))
	ops := newOperatorKey(t, "ed25519")
	a := startAgentWith(t, host, sim, func(c *worker.Config) {
		c.Metrics.Address = "127.0.0.1:0"
		c.DriftCheckInterval = time.Second
	}, ops.Pub)

	a.applySpec(t, desired.Spec{Host: host, VMID: 101, Kind: desired.QEMU, Name: "web", State: desired.Running, Memory: "1024", Cores: 1})
	a.waitPhase(t, 101, workflows.PhaseConverged)
	a.applySpec(t, desired.Spec{Host: host, VMID: 140, State: desired.Absent})
	st := a.waitPhase(t, 140, workflows.PhasePending)
	waitFor(t, "the gauges to show one pending approval", func() bool {
		text := a.scrape(t)
		return metricValue(text, "felhom_pending_approvals") == 1 &&
			metricValue(text, "felhom_guests", `phase="pending_signature"`) == 1 &&
			metricValue(text, "felhom_guests", `phase="converged"`) == 1
	})

	if v := a.approve(t, 140, signWithSSHKeygen(t, newOperatorKey(t, "ed25519"), opFor(st.Pending.OpTemplate))); v.Code != "unknown_signer" {
		t.Fatalf("a stranger's approval: %+v, want unknown_signer", v)
	}
	must(t, a.client.SignalWorkflow(context.Background(), workflows.GuestWorkflowID(host, 140), "", workflows.SignalApprove, signWithSSHKeygen(t, ops, opFor(st.Pending.OpTemplate))))
	a.waitPhase(t, 140, workflows.PhaseConverged)
	waitFor(t, "the gauges to show no pending approval", func() bool {
		text := a.scrape(t)
		return metricValue(text, "felhom_pending_approvals") == 0 && metricValue(text, "felhom_guests", `phase="pending_signature"`) == 0
	})

	text := a.scrape(t)
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"felhom_gate_decisions_total", []string{`code="` + gate.CodeAllowedSigned + `"`, `class="destructive"`}},
		{"felhom_gate_decisions_total", []string{`code="unknown_signer"`}},
		{"felhom_proxmox_requests_total", []string{`method="POST"`, `status="200"`}},
		{"felhom_proxmox_requests_total", []string{`method="GET"`, `status="200"`}},
		{"felhom_proxmox_request_duration_seconds_count", []string{`method="DELETE"`}},
		{"felhom_proxmox_task_wait_seconds_count", []string{`type="qmstart"`, `outcome="ok"`}},
		{"felhom_proxmox_task_wait_seconds_count", []string{`type="qmdestroy"`, `outcome="ok"`}},
		{"felhom_store_fsync_seconds_count", []string{`store="nonce_store"`}},
		{"felhom_store_fsync_seconds_count", []string{`store="provenance_ledger"`}},
		{"temporal_workflow_task_execution_latency_seconds_count", []string{`task_queue="` + workflows.TaskQueue(host) + `"`}},
	} {
		if v := metricValue(text, c.name, c.labels...); v < 1 {
			t.Errorf("metric %s%v = %v, want at least 1", c.name, c.labels, v)
		}
	}
}
