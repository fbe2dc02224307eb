package pvesim_test

import (
	"context"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// A power action on an HA-managed guest is an hastart/hastop task that
// only records the request; the guest changes when the HA stack acts.
func TestHAManagedPowerActions(t *testing.T) {
	tests := []struct {
		name            string
		kind            pvesim.Kind
		status, action  string
		wantTask        string
		wantHA, wantNow string
	}{
		{"qemu start", pvesim.KindQEMU, "stopped", "start", "hastart", "started", "running"},
		{"qemu stop", pvesim.KindQEMU, "running", "stop", "hastop", "stopped", "stopped"},
		{"qemu shutdown", pvesim.KindQEMU, "running", "shutdown", "hastop", "stopped", "stopped"},
		{"lxc start", pvesim.KindLXC, "stopped", "start", "hastart", "started", "running"},
		{"lxc shutdown", pvesim.KindLXC, "running", "shutdown", "hastop", "stopped", "stopped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{StrictPVE: true, HADelay: time.Hour})
			g := pvesim.Guest{VMID: 101, Status: tt.status}
			if tt.kind == pvesim.KindLXC {
				mustAdd(t, srv.AddContainer(g))
			} else {
				mustAdd(t, srv.AddVM(g))
			}
			mustAdd(t, srv.SetHA(101, map[string]string{"running": "started", "stopped": "stopped"}[tt.status]))
			task, err := postTask(t, client, "/nodes/pve1/"+string(tt.kind)+"/101/status/"+tt.action, nil)
			if err != nil {
				t.Fatal(err)
			}
			if exit := finished(t, task); exit != "OK" || task.Type != tt.wantTask {
				t.Fatalf("task %s ended %q, want %s OK", task.Type, exit, tt.wantTask)
			}
			if g, _ := srv.Guest(101); g.Status != tt.status {
				t.Fatalf("status %q once the %s task ended, want it unchanged until HA acts", g.Status, tt.wantTask)
			}
			var st struct {
				HA struct {
					Managed int    `json:"managed"`
					State   string `json:"state"`
				} `json:"ha"`
			}
			if err := client.Get(context.Background(), "/nodes/pve1/"+string(tt.kind)+"/101/status/current", &st); err != nil {
				t.Fatal(err)
			}
			if st.HA.Managed != 1 || st.HA.State != tt.wantHA {
				t.Fatalf("ha %+v, want managed with request %s", st.HA, tt.wantHA)
			}
			srv.ApplyHA()
			if g, _ := srv.Guest(101); g.Status != tt.wantNow {
				t.Fatalf("status %q after HA acted, want %s", g.Status, tt.wantNow)
			}
		})
	}
}

func TestHAManagedDestroyNeedsPurge(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{StrictPVE: true})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	mustAdd(t, srv.SetHA(101, "stopped"))
	var upid proxmox.UPID
	err := client.Delete(context.Background(), "/nodes/pve1/qemu/101", &upid)
	if want := "500 unable to remove VM 101 - used in HA resources and purge parameter not set."; errText(err) != want {
		t.Fatalf("error %q, want %q", errText(err), want)
	}
	if err := client.DeleteWithParams(context.Background(), "/nodes/pve1/qemu/101", map[string]any{"purge": 1}, &upid); err != nil {
		t.Fatal(err)
	}
	if exit := finished(t, proxmox.NewTask(upid, client)); exit != "OK" {
		t.Fatalf("purging destroy %q", exit)
	}
}
