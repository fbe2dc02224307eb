package pvesim_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// newSim starts a simulator for one test and returns it with a go-proxmox
// client authenticated with its token.
func newSim(t *testing.T, cfg pvesim.Config) (*pvesim.Server, *proxmox.Client) {
	t.Helper()
	if cfg.TaskDuration == 0 {
		cfg.TaskDuration = 20 * time.Millisecond
	}
	srv, err := pvesim.Start(cfg)
	if err != nil {
		t.Fatalf("start simulator: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv, newClient(srv, srv.TokenID(), srv.TokenSecret())
}

func newClient(srv *pvesim.Server, id, secret string) *proxmox.Client {
	return proxmox.NewClient(srv.URL(),
		proxmox.WithHTTPClient(srv.HTTPClient()),
		proxmox.WithAPIToken(id, secret))
}

// waitTask polls a task until it stops and returns its final state.
func waitTask(t *testing.T, task *proxmox.Task) *proxmox.Task {
	t.Helper()
	if task == nil {
		t.Fatal("no task returned")
	}
	ctx := context.Background()
	if err := task.Wait(ctx, 5*time.Millisecond, 5*time.Second); err != nil {
		t.Fatalf("wait %s: %v", task.UPID, err)
	}
	return task
}

func mustAdd(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("seed guest: %v", err)
	}
}

func TestGoProxmoxStartsAVM(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{Node: "pve1"})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Name: "web", Status: "stopped", MemoryMiB: 2048, Cores: 2,
		Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=32G"}}))
	ctx := context.Background()

	v, err := client.Version(ctx)
	if err != nil {
		t.Fatalf("version: %v", err)
	}
	if v.Release == "" {
		t.Errorf("version has no release: %+v", v)
	}
	nodes, err := client.Nodes(ctx)
	if err != nil {
		t.Fatalf("nodes: %v", err)
	}
	if len(nodes) != 1 || nodes[0].Node != "pve1" || nodes[0].Status != "online" {
		t.Fatalf("nodes = %+v", nodes)
	}
	node, err := client.Node(ctx, "pve1")
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	vm, err := node.VirtualMachine(ctx, 101)
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	if vm.Name != "web" || vm.Status != "stopped" || vm.MaxMem != 2048<<20 || vm.CPUs != 2 {
		t.Errorf("status = name %q status %q maxmem %d cpus %d", vm.Name, vm.Status, vm.MaxMem, vm.CPUs)
	}
	if int(vm.VirtualMachineConfig.Memory) != 2048 || vm.VirtualMachineConfig.Digest == "" {
		t.Errorf("config memory %d digest %q", vm.VirtualMachineConfig.Memory, vm.VirtualMachineConfig.Digest)
	}
	if vm.VirtualMachineConfig.SCSIs["scsi0"] != "local-lvm:vm-101-disk-0,size=32G" {
		t.Errorf("scsi0 = %q", vm.VirtualMachineConfig.SCSIs["scsi0"])
	}

	task, err := vm.Start(ctx)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if task.Type != "qmstart" || task.ID != "101" || task.Node != "pve1" || task.User != srv.TokenID() {
		t.Errorf("UPID fields: type %q id %q node %q user %q (%s)", task.Type, task.ID, task.Node, task.User, task.UPID)
	}
	waitTask(t, task)
	if !task.IsSuccessful || task.ExitStatus != "OK" {
		t.Fatalf("task ended %q successful=%v", task.ExitStatus, task.IsSuccessful)
	}
	if err := vm.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if !vm.IsRunning() {
		t.Errorf("VM not running after start: %q", vm.Status)
	}
	if g, _ := srv.Guest(101); g.Status != "running" {
		t.Errorf("simulator state %q", g.Status)
	}
	if got := srv.RequestsMatching("POST", "/nodes/pve1/qemu/101/status/start"); len(got) != 1 || got[0].UPID != string(task.UPID) {
		t.Errorf("recorded start requests = %+v", got)
	}
}

func TestPlainHTTPAndSeedDemo(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{TLS: pvesim.TLSOff, Addr: "127.0.0.1:0"})
	if got := srv.URL(); got != "http://"+srv.Addr()+"/api2/json" {
		t.Fatalf("URL %q", got)
	}
	if err := srv.SeedDemo(); err != nil {
		t.Fatal(err)
	}
	vms, err := nodeOf(t, client).VirtualMachines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cts, err := nodeOf(t, client).Containers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) < 2 || len(cts) < 1 {
		t.Fatalf("demo has %d VMs and %d containers", len(vms), len(cts))
	}
	if len(srv.Guests()) != len(vms)+len(cts) {
		t.Errorf("Guests() = %d entries", len(srv.Guests()))
	}
}

func TestCloseEndsRunningTasks(t *testing.T) {
	srv, err := pvesim.Start(pvesim.Config{TaskDuration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	client := newClient(srv, srv.TokenID(), srv.TokenSecret())
	if _, err := vmOf(t, client, 101).Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for an hour-long task")
	}
	if g, _ := srv.Guest(101); g.Status != "stopped" {
		t.Errorf("aborted start left the VM %q", g.Status)
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  pvesim.Config
	}{
		{"token id without realm", pvesim.Config{TokenID: "felhom"}},
		{"busy address", pvesim.Config{Addr: "256.0.0.1:0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := pvesim.Start(tt.cfg)
			if err == nil {
				srv.Close()
				t.Fatal("Start accepted it")
			}
		})
	}
}

func TestCertificateForCAFiles(t *testing.T) {
	srv, _ := newSim(t, pvesim.Config{})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(srv.CertificatePEM()) {
		t.Fatalf("CertificatePEM is not PEM: %q", srv.CertificatePEM())
	}
	for name, roots := range map[string]*x509.CertPool{"from PEM": pool, "RootCAs": srv.RootCAs()} {
		conn, err := tls.Dial("tcp", srv.Addr(), &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("%s: TLS handshake: %v", name, err)
		}
		conn.Close()
	}
	if _, err := tls.Dial("tcp", srv.Addr(), &tls.Config{MinVersion: tls.VersionTLS12}); err == nil {
		t.Fatal("system roots trust the self-signed certificate")
	}
	plain, _ := newSim(t, pvesim.Config{TLS: pvesim.TLSOff})
	if plain.CertificatePEM() != nil || plain.RootCAs() != nil {
		t.Error("plain HTTP server has a certificate")
	}
}

func TestOddRequestsGetAnAnswer(t *testing.T) {
	srv, _ := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	paths := []string{"", "/", "/nodes", "/nodes/pve1", "/nodes/pve1/qemu", "/nodes/pve1/qemu/101",
		"/nodes/pve1/qemu/abc", "/nodes/pve1/qemu/101/status", "/nodes/pve1/qemu/101/status/fly",
		"/nodes/pve1/storage", "/nodes/pve1/storage/nope/content", "/nodes/pve1/tasks", "/nodes/pve1/tasks/x/y/z",
		"/cluster", "/cluster/resources/extra", "/nodes/pve1/lxc/101/config", "/access/ticket"}
	for _, p := range paths {
		for _, m := range []string{"GET", "POST", "PUT", "DELETE"} {
			got := raw(t, srv, m, p, nil, "")
			if got.StatusCode == 0 || got.StatusCode == 500 && strings.Contains(got.Status, "internal error") {
				t.Errorf("%s %s: %q", m, p, got.Status)
			}
		}
	}
}
