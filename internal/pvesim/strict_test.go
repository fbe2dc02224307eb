package pvesim_test

import (
	"context"
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
