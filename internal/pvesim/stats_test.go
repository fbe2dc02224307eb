package pvesim_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// resources returns /cluster/resources?type=vm by VMID.
func resources(t *testing.T, client *proxmox.Client) map[int]map[string]any {
	t.Helper()
	var rows []map[string]any
	if err := client.Get(context.Background(), "/cluster/resources?type=vm", &rows); err != nil {
		t.Fatal(err)
	}
	out := map[int]map[string]any{}
	for _, r := range rows {
		out[int(r["vmid"].(float64))] = r
	}
	return out
}

// /cluster/resources lists pvestatd's figures, one cycle late; which guests
// exist, and their locks, are live.
func TestClusterResourcesLagBehind(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	srv, client := newSim(t, pvesim.Config{StrictPVE: true, Clock: clock})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Name: "a", Status: "running", MemoryMiB: 1024}))
	if r := resources(t, client)[101]; r["status"] != "running" || r["name"] != "a" {
		t.Fatalf("first listing %v", r)
	}

	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 102, Name: "new", MemoryMiB: 512}))
	mustAdd(t, srv.SetStatus(101, "stopped"))
	mustAdd(t, srv.SetLock(101, "backup"))
	rows := resources(t, client)
	if r := rows[102]; r == nil || r["status"] != "unknown" || r["name"] != nil || r["maxmem"] != nil {
		t.Fatalf("a guest pvestatd has not seen yet: %v, want status unknown and no figures", r)
	}
	if r := rows[101]; r["status"] != "running" || r["lock"] != "backup" {
		t.Fatalf("guest 101 before the cycle: %v, want the old status and the live lock", r)
	}

	now.Add(int64(10 * time.Second))
	rows = resources(t, client)
	if rows[101]["status"] != "stopped" || rows[102]["status"] != "stopped" || rows[102]["name"] != "new" {
		t.Fatalf("after pvestatd's cycle: %v", rows)
	}
}

// The figures are vmstatus's: a name for the unnamed, memory as running
// (pending changes wait for the next start), CPUs as sockets×cores capped
// at the node's.
func TestClusterResourcesShapes(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{StrictPVE: true})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Cores: 4, Config: map[string]string{"sockets": "2"}}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 102, Cores: 8, Config: map[string]string{"sockets": "4"}}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 103, Cores: 2, Config: map[string]string{"sockets": "2", "vcpus": "3"}}))
	mustAdd(t, srv.AddContainer(pvesim.Guest{VMID: 200, Cores: 2}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 104, Name: "mem", Status: "running", MemoryMiB: 1024}))
	if _, err := vmOf(t, client, 104).Config(context.Background(), proxmox.VirtualMachineOption{Name: "memory", Value: "2048"}); err != nil {
		t.Fatal(err)
	}
	for vmid, extra := range map[int]map[string]any{201: nil, 202: {"cpulimit": "1.5"}} {
		params := map[string]any{"vmid": vmid, "ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst", "rootfs": "local-lvm:4"}
		for k, v := range extra {
			params[k] = v
		}
		task, err := postTask(t, client, "/nodes/pve1/lxc", params)
		if err != nil {
			t.Fatal(err)
		}
		finished(t, task)
	}
	srv.RefreshStats()
	rows := resources(t, client)
	for vmid, want := range map[int]map[string]any{
		201: {"maxcpu": float64(16)},
		202: {"maxcpu": 1.5},
		101: {"name": "VM 101", "maxcpu": float64(8)},
		102: {"maxcpu": float64(16)},
		103: {"maxcpu": float64(3)},
		200: {"name": "CT200", "maxcpu": float64(2)},
		104: {"maxmem": float64(1024 << 20)},
	} {
		for k, v := range want {
			if rows[vmid][k] != v {
				t.Errorf("guest %d %s = %v, want %v", vmid, k, rows[vmid][k], v)
			}
		}
	}
}
