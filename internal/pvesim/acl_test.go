package pvesim_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// A privilege-separated token sees and does only what its ACL grants:
// listings leave out what it cannot audit, and every other call is a 403
// before the handler runs, whether the guest exists or not.
func TestTokenACL(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{StrictPVE: true, TokenACL: []pvesim.ACL{
		{Path: "/vms/101", Privileges: []string{"VM.Audit", "VM.PowerMgmt"}},
		{Path: "/storage", Privileges: []string{"Datastore.Audit"}, Propagate: true},
	}})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "stopped"}))
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 102, Status: "running"}))
	ctx := context.Background()

	var rows []map[string]any
	if err := client.Get(ctx, "/cluster/resources?type=vm", &rows); err != nil || len(rows) != 1 || rows[0]["vmid"] != float64(101) {
		t.Fatalf("cluster resources %v (%v), want only the audited guest 101", rows, err)
	}
	if err := client.Get(ctx, "/nodes/pve1/qemu", &rows); err != nil || len(rows) != 1 {
		t.Fatalf("qemu list %v (%v), want only 101", rows, err)
	}
	tests := []struct {
		name, method, path string
		params             map[string]any
		want               string
	}{
		{"read a guest it cannot audit", "GET", "/nodes/pve1/qemu/102/status/current", nil, "403 Permission check failed (/vms/102, VM.Audit)"},
		{"read a guest that does not exist", "GET", "/nodes/pve1/qemu/999/status/current", nil, "403 Permission check failed (/vms/999, VM.Audit)"},
		{"read its guest", "GET", "/nodes/pve1/qemu/101/status/current", nil, ""},
		{"change memory", "PUT", "/nodes/pve1/qemu/101/config", map[string]any{"memory": "1024"}, "403 Permission check failed (/vms/101, VM.Config.Memory)"},
		{"destroy", "DELETE", "/nodes/pve1/qemu/101", nil, "403 Permission check failed (/vms/101, VM.Allocate)"},
		{"create", "POST", "/nodes/pve1/qemu", map[string]any{"vmid": 150, "memory": "512"}, "403 Permission check failed (/vms/150, VM.Allocate)"},
		{"node status", "GET", "/nodes/pve1/status", nil, "403 Permission check failed (/nodes/pve1, Sys.Audit)"},
		{"start its guest", "POST", "/nodes/pve1/qemu/101/status/start", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var form url.Values
			if tt.params != nil {
				form = url.Values{}
				for k, v := range tt.params {
					form.Set(k, fmt.Sprint(v))
				}
			}
			got := raw(t, srv, tt.method, tt.path, form, "")
			switch {
			case tt.want == "" && got.StatusCode != 200:
				t.Fatalf("status line %q, want 200", got.Status)
			case tt.want != "" && got.Status != tt.want:
				t.Fatalf("status line %q, want %q", got.Status, tt.want)
			}
		})
	}
	var perms map[string]map[string]int
	if err := client.Get(ctx, "/access/permissions?path=/vms/101", &perms); err != nil {
		t.Fatal(err)
	}
	if p := perms["/vms/101"]; len(p) != 2 || p["VM.Audit"] != 0 {
		t.Fatalf("permissions %v, want VM.Audit and VM.PowerMgmt on /vms/101, not propagated", perms)
	}
	if err := client.Get(ctx, "/access/permissions?path=/vms/102", &perms); err != nil || len(perms["/vms/102"]) != 0 {
		t.Fatalf("permissions on /vms/102 %v (%v), want none", perms, err)
	}
}

// Without Sys.Audit on the node a token lists only its own tasks, and
// reading another user's task is refused.
func TestTokenSeesItsOwnTasks(t *testing.T) {
	for _, audit := range []bool{false, true} {
		name := "without Sys.Audit"
		acl := []pvesim.ACL{{Path: "/vms", Privileges: []string{"VM.Audit", "VM.PowerMgmt"}, Propagate: true}}
		if audit {
			name = "with Sys.Audit"
			acl = append(acl, pvesim.ACL{Path: "/nodes/pve1", Privileges: []string{"Sys.Audit"}})
		}
		t.Run(name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{StrictPVE: true, RebootRestartDelay: -1, TokenACL: acl})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running"}))
			ctx := context.Background()
			reboot, err := vmOf(t, client, 101).Reboot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			waitTaskDone(t, srv, string(reboot.UPID))
			var rows []struct {
				UPID string `json:"upid"`
				Type string `json:"type"`
			}
			if err := client.Get(ctx, "/nodes/pve1/tasks?source=all", &rows); err != nil {
				t.Fatal(err)
			}
			// qmeventd's start after the reboot is root@pam's
			want := map[bool]int{false: 1, true: 2}[audit]
			if len(rows) != want {
				t.Fatalf("task list %+v, want %d tasks", rows, want)
			}
			if audit {
				return
			}
			srv.SetTokenACL(nil)
			var all []struct {
				UPID string `json:"upid"`
				Type string `json:"type"`
			}
			if err := client.Get(ctx, "/nodes/pve1/tasks?source=all&typefilter=qmstart", &all); err != nil || len(all) != 1 {
				t.Fatalf("qmeventd's start %v (%v)", all, err)
			}
			srv.SetTokenACL(acl)
			got := raw(t, srv, "GET", "/nodes/pve1/tasks/"+all[0].UPID+"/status", nil, "")
			if want := "403 Permission check failed (/nodes/pve1, Sys.Audit)"; got.Status != want {
				t.Fatalf("status of root's task: %q, want %q", got.Status, want)
			}
		})
	}
}
