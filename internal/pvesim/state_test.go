package pvesim_test

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// With a state file the node outlives its process: a restart serves the
// same guests (config, pending changes, power state), volumes, backups, HA
// resources and API token.
func TestStateFileKeepsTheNode(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pvesim.json")
	srv, err := pvesim.Start(pvesim.Config{StrictPVE: true, StateFile: file})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Restored() {
		t.Fatal("a new state file restored something")
	}
	mustAdd(t, srv.SeedDemo())
	client := newClient(srv, srv.TokenID(), srv.TokenSecret())
	ctx := context.Background()
	// a pending change on a running VM, a destroyed demo VM, HA, a backup
	if err := vmOf(t, client, 100).ConfigSync(ctx, proxmox.VirtualMachineOption{Name: "sockets", Value: 2}); err != nil {
		t.Fatal(err)
	}
	destroy, err := vmOf(t, client, 101).Delete(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	finished(t, destroy)
	mustAdd(t, srv.SetHA(200, "started"))
	backup, err := srv.AddBackup(pvesim.KindQEMU, pvesim.Guest{VMID: 100})
	if err != nil {
		t.Fatal(err)
	}
	before, volumes, secret := srv.Guests(), srv.Volumes(), srv.TokenSecret()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}

	again, err := pvesim.Start(pvesim.Config{StrictPVE: true, StateFile: file})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if !again.Restored() || again.TokenSecret() != secret {
		t.Fatalf("restored %v, token kept %v", again.Restored(), again.TokenSecret() == secret)
	}
	if after := again.Guests(); !reflect.DeepEqual(after, before) {
		t.Fatalf("guests after the restart\n %+v\nwant\n %+v", after, before)
	}
	if got := again.Volumes(); !reflect.DeepEqual(got, volumes) {
		t.Fatalf("volumes %v, want %v", got, volumes)
	}
	if _, ok := again.Guest(101); ok {
		t.Fatal("the destroyed demo VM came back")
	}
	var st struct {
		HA struct {
			Managed int `json:"managed"`
		} `json:"ha"`
	}
	c2 := newClient(again, again.TokenID(), again.TokenSecret())
	if err := c2.Get(ctx, "/nodes/pve1/lxc/200/status/current", &st); err != nil || st.HA.Managed != 1 {
		t.Fatalf("HA of 200 after the restart: %+v (%v)", st, err)
	}
	if _, err := postTask(t, c2, "/nodes/pve1/qemu", map[string]any{"vmid": 100, "archive": backup, "force": 1}); err != nil {
		t.Fatalf("restore from the kept backup: %v", err)
	}
}
