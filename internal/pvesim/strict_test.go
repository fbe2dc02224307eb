package pvesim_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// The places where the default simulator is kinder than pve, and what
// StrictPVE answers instead.
func TestStrictPVE(t *testing.T) {
	tests := []struct {
		name         string
		kind, strict string
		probe        func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string
	}{
		{"running task in the task list", "", "RUNNING", func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
			srv.Inject(pvesim.Fault{Kind: pvesim.FaultSlowTask, Method: "POST", TaskDuration: time.Hour})
			if _, err := vmOf(t, client, 101).Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			var rows []map[string]any
			if err := client.Get(context.Background(), "/nodes/pve1/tasks?source=active", &rows); err != nil || len(rows) != 1 {
				t.Fatalf("active tasks %v, %v", rows, err)
			}
			status, _ := rows[0]["status"].(string)
			return status
		}},
		{"task stopped by DELETE", "interrupted by signal", "received interrupt", func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
			hook := pvesim.NewHook()
			srv.Inject(pvesim.Fault{Kind: pvesim.FaultHoldTask, Method: "POST", Hook: hook})
			task, err := vmOf(t, client, 101).Start(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			<-hook.Hit()
			if err := task.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			return finished(t, task)
		}},
		{"log of an unknown task", "500 unable to open file '/var/log/pve/tasks/UPID:pve1:00001234:00ABCDEF:6560A1B2:qmstart:101:root@pam:' - No such file or directory",
			`[{"n":1,"t":"unable to open file - No such file or directory"}]`,
			func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
				var lines []map[string]any
				if err := client.Get(context.Background(), "/nodes/pve1/tasks/UPID:pve1:00001234:00ABCDEF:6560A1B2:qmstart:101:root@pam:/log", &lines); err != nil {
					return err.Error()
				}
				b, _ := json.Marshal(lines)
				return string(b)
			}},
		{"unknown task", "500 unable to open file '/var/log/pve/tasks/UPID:pve1:00001234:00ABCDEF:6560A1B2:qmstart:101:root@pam:' - No such file or directory",
			`bad request: 400 Parameter verification failed. - {"upid":"no such task"}`,
			func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
				return errText(client.Get(context.Background(), "/nodes/pve1/tasks/UPID:pve1:00001234:00ABCDEF:6560A1B2:qmstart:101:root@pam:/status", &proxmox.Task{}))
			}},
		{"missing thin volume", "500 volume 'local-lvm:vm-777-disk-0' does not exist",
			"500 command '/sbin/lvs --separator : --noheadings --units b --unbuffered --nosuffix --options lv_size /dev/pve/vm-777-disk-0' failed: exit code 5",
			func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
				var info map[string]any
				return errText(client.Get(context.Background(), "/nodes/pve1/storage/local-lvm/content/local-lvm:vm-777-disk-0", &info))
			}},
		{"restore from a missing archive", "500 volume 'local:backup/vzdump-qemu-101-2026_01_01-00_00_00.vma.zst' does not exist",
			"500 can't find file 'local:backup/vzdump-qemu-101-2026_01_01-00_00_00.vma.zst'",
			func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
				_, err := postTask(t, client, "/nodes/pve1/qemu", map[string]any{"vmid": 101,
					"archive": "local:backup/vzdump-qemu-101-2026_01_01-00_00_00.vma.zst"})
				return errText(err)
			}},
		{"delete the disk of a stopped guest", "500 Cannot remove image, a guest with VMID '101' exists! You can delete the image from the guest's hardware pane",
			"OK, volume gone", func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
				mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}}))
				return deleteVolume(t, srv, client, "local-lvm", "local-lvm:vm-101-disk-0")
			}},
		{"delete the disk of a running guest", "500 Cannot remove image, a guest with VMID '101' exists! You can delete the image from the guest's hardware pane",
			"lvremove 'pve/vm-101-disk-0' error:   Logical volume pve/vm-101-disk-0 in use., volume kept",
			func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
				mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running", Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}}))
				return deleteVolume(t, srv, client, "local-lvm", "local-lvm:vm-101-disk-0")
			}},
		{"delete a gone thin volume", "500 volume 'local-lvm:vm-777-disk-0' does not exist", "OK, volume gone",
			func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
				return deleteVolume(t, srv, client, "local-lvm", "local-lvm:vm-777-disk-0")
			}},
		{"delete a gone backup", "500 volume 'local:backup/vzdump-qemu-777-2026_01_01-00_00_00.vma.zst' does not exist",
			"unlink '/var/lib/vz/dump/vzdump-qemu-777-2026_01_01-00_00_00.vma.zst' failed - No such file or directory, volume gone",
			func(t *testing.T, srv *pvesim.Server, client *proxmox.Client) string {
				return deleteVolume(t, srv, client, "local", "local:backup/vzdump-qemu-777-2026_01_01-00_00_00.vma.zst")
			}},
	}
	for _, tt := range tests {
		for _, strict := range []bool{false, true} {
			want := tt.kind
			if strict {
				want = tt.strict
			}
			name := tt.name + "/default"
			if strict {
				name = tt.name + "/strict"
			}
			t.Run(name, func(t *testing.T) {
				srv, client := newSim(t, pvesim.Config{StrictPVE: strict})
				if got := tt.probe(t, srv, client); got != want {
					t.Fatalf("got %q, want %q", got, want)
				}
			})
		}
	}
}

// deleteVolume deletes a volume through go-proxmox and says how it went:
// the synchronous error, or the task's exit status and the volume's fate.
func deleteVolume(t *testing.T, srv *pvesim.Server, client *proxmox.Client, storage, volid string) string {
	t.Helper()
	st, err := nodeOf(t, client).Storage(context.Background(), storage)
	if err != nil {
		t.Fatal(err)
	}
	task, err := st.DeleteContent(context.Background(), volid)
	if err != nil {
		return err.Error()
	}
	exit := finished(t, task)
	if slices.Contains(srv.Volumes(), volid) {
		return exit + ", volume kept"
	}
	return exit + ", volume gone"
}

// qmreboot's task ends once the VM is down; qmeventd starts it again after
// the task, with a qmstart task of root@pam, which applies pending changes.
func TestQEMURebootLeavesTheStartToQmeventd(t *testing.T) {
	tests := []struct {
		name        string
		delay       time.Duration
		wantRestart bool
	}{
		{"read right after the task", time.Hour, false},
		{"qmeventd's start", -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, client := newSim(t, pvesim.Config{StrictPVE: true, RebootRestartDelay: tt.delay})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running", Cores: 1}))
			ctx := context.Background()
			vm := vmOf(t, client, 101)
			if _, err := vm.Config(ctx, proxmox.VirtualMachineOption{Name: "sockets", Value: 2}); err != nil {
				t.Fatal(err)
			}
			task, err := vmOf(t, client, 101).Reboot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if exit := finished(t, task); exit != "OK" {
				t.Fatalf("reboot %q", exit)
			}
			if g, _ := srv.Guest(101); g.Status != "stopped" && !tt.wantRestart {
				t.Fatalf("status %q right after the reboot task, want stopped", g.Status)
			}
			if !tt.wantRestart {
				return
			}
			var rows []map[string]any
			if err := client.Get(ctx, "/nodes/pve1/tasks?source=all&typefilter=qmstart&vmid=101", &rows); err != nil || len(rows) != 1 {
				t.Fatalf("qmstart tasks %v (%v), want qmeventd's", rows, err)
			}
			if rows[0]["user"] != "root@pam" {
				t.Fatalf("restart task of %v, want root@pam", rows[0]["user"])
			}
			waitTaskDone(t, srv, rows[0]["upid"].(string))
			if g, _ := srv.Guest(101); g.Status != "running" || g.Config["sockets"] != "2" || len(g.Pending) != 0 {
				t.Fatalf("after qmeventd's start: %+v, want running with the pending change applied", g)
			}
		})
	}
}

// pveproxy answers a failed authentication after 3 seconds (here
// AuthFailureDelay), since early 2026 always as "Authentication failed!".
func TestStrictAuthenticationFailure(t *testing.T) {
	const delay = 150 * time.Millisecond
	srv, _ := newSim(t, pvesim.Config{StrictPVE: true, AuthFailureDelay: delay})
	tests := []struct{ name, auth, want string }{
		{"wrong secret", "PVEAPIToken=" + srv.TokenID() + "=nope", "401 Authentication failed!"},
		{"no credentials", "-", "401 No ticket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got := raw(t, srv, "GET", "/version", nil, tt.auth)
			if got.Status != tt.want {
				t.Fatalf("status line %q, want %q", got.Status, tt.want)
			}
			if elapsed := time.Since(start); elapsed < delay {
				t.Fatalf("answered after %s, want no sooner than %s", elapsed, delay)
			}
		})
	}
}
