package pvesim_test

import (
	"context"
	"strings"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func seedMixed(t *testing.T, srv *pvesim.Server) {
	t.Helper()
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Name: "web", Status: "running", MemoryMiB: 2048, Cores: 2, Tags: "prod;web",
		Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=32G"}}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 102, Name: "db", Status: "stopped", MemoryMiB: 4096, Lock: "backup"}))
	mustAdd(t, srv.AddContainer(pvesim.Guest{VMID: 200, Name: "dns", Status: "running", MemoryMiB: 512,
		Disks: map[string]string{"rootfs": "local-lvm:vm-200-disk-0,size=8G"}}))
}

func TestClusterResourcesListsEveryGuestInOneCall(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	seedMixed(t, srv)
	cluster, err := client.Cluster(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rs, err := cluster.Resources(context.Background(), "vm")
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		id, typ, name, status, tags string
		maxmem, maxdisk             uint64
	}{
		{"qemu/101", "qemu", "web", "running", "prod;web", 2048 << 20, 32 << 30},
		{"qemu/102", "qemu", "db", "stopped", "", 4096 << 20, 0},
		{"lxc/200", "lxc", "dns", "running", "", 512 << 20, 8 << 30},
	}
	if len(rs) != len(want) {
		t.Fatalf("got %d resources: %+v", len(rs), rs)
	}
	for i, w := range want {
		r := rs[i]
		if r.ID != w.id || r.Type != w.typ || r.Name != w.name || r.Status != w.status || r.Tags != w.tags ||
			r.MaxMem != w.maxmem || r.MaxDisk != w.maxdisk || r.Node != "pve1" {
			t.Errorf("resource %d = %+v, want %+v", i, r, w)
		}
	}
	// go-proxmox's ClusterResource has no lock field; the raw reply has it.
	var rows []map[string]any
	if err := client.Get(context.Background(), "/cluster/resources?type=vm", &rows); err != nil {
		t.Fatal(err)
	}
	if rows[1]["lock"] != "backup" {
		t.Errorf("lock missing from %v", rows[1])
	}
	all, err := cluster.Resources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3+1+2 {
		t.Errorf("unfiltered resources: %d", len(all))
	}
}

func TestNodeGuestListings(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	seedMixed(t, srv)
	node := nodeOf(t, client)
	vms, err := node.VirtualMachines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 2 || vms[0].Name != "web" || vms[0].Status != "running" || vms[0].MaxMem != 2048<<20 ||
		vms[0].Tags != "prod;web" || vms[1].Lock != "backup" || uint64(vms[1].VMID) != 102 {
		t.Fatalf("qemu list %+v %+v", vms[0], vms[1])
	}
	cts, err := node.Containers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(cts) != 1 || cts[0].Name != "dns" || cts[0].Status != "running" || cts[0].MaxMem != 512<<20 {
		t.Fatalf("lxc list %+v", cts)
	}
}

func TestNextID(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 100}))
	mustAdd(t, srv.AddContainer(pvesim.Guest{VMID: 101}))
	cluster, err := client.Cluster(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	id, err := cluster.NextID(context.Background())
	if err != nil || id != 102 {
		t.Fatalf("NextID = %d, %v; want 102", id, err)
	}
	tests := []struct {
		vmid    int
		wantErr string
	}{
		{150, ""},
		{101, `"vmid":"VM 101 already exists"`},
	}
	for _, tt := range tests {
		var got string
		err := client.Get(context.Background(), "/cluster/nextid?vmid="+itoa(tt.vmid), &got)
		if tt.wantErr == "" && (err != nil || got != itoa(tt.vmid)) {
			t.Errorf("vmid %d: %q %v", tt.vmid, got, err)
		}
		if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "400")) {
			t.Errorf("vmid %d: error %v, want 400 with %s", tt.vmid, err, tt.wantErr)
		}
	}
}

func TestNodeEndpoints(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{Node: "hv7"})
	ctx := context.Background()
	node, err := client.Node(ctx, "hv7")
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	if node.PVEVersion == "" || node.Memory.Total == 0 || node.CPUInfo.CPUs == 0 {
		t.Errorf("node status %+v", node)
	}
	if _, err := client.Node(ctx, "pve1"); errText(err) != "500 no such cluster node 'pve1'" {
		t.Errorf("unknown node: %v", err)
	}
	got := raw(t, srv, "GET", "/nodes/hv7/frobnicate", nil, "")
	if got.Status != "501 Method 'GET /api2/json/nodes/hv7/frobnicate' not implemented" {
		t.Errorf("unknown endpoint: %q", got.Status)
	}
}
