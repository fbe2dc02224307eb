package activities

import (
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestPowerSteps(t *testing.T) {
	type step struct {
		name      string
		fn        func(h *harness) any
		in        any
		status    string // guest status before
		want      string // guest status after
		posts     int    // mutating requests expected
		already   bool
		noShut    bool // the guest OS ignores ACPI shutdown
		kind      string
		errType   string
		retryable bool
	}
	start := func(h *harness) any { return h.act.StartGuest }
	stop := func(h *harness) any { return h.act.StopGuest }
	shutdown := func(h *harness) any { return h.act.ShutdownGuest }
	reboot := func(h *harness) any { return h.act.RebootGuest }
	tests := []step{
		{name: "start vm", fn: start, in: GuestInput{VMID: 101}, status: "stopped", want: "running", posts: 1},
		{name: "start container", kind: "lxc", fn: start, in: GuestInput{VMID: 101, Kind: "lxc"}, status: "stopped", want: "running", posts: 1},
		{name: "start running vm", fn: start, in: GuestInput{VMID: 101}, status: "running", want: "running", already: true},
		{name: "start missing guest", fn: start, in: GuestInput{VMID: 404}, status: "stopped", want: "stopped", errType: ErrTypeNotFound},
		{name: "start wrong kind", fn: start, in: GuestInput{VMID: 101, Kind: "lxc"}, status: "stopped", want: "stopped", errType: ErrTypeNotFound},
		{name: "stop vm", fn: stop, in: GuestInput{VMID: 101}, status: "running", want: "stopped", posts: 1},
		{name: "stop stopped vm", fn: stop, in: GuestInput{VMID: 101}, status: "stopped", want: "stopped", already: true},
		{name: "stop container", kind: "lxc", fn: stop, in: GuestInput{VMID: 101}, status: "running", want: "stopped", posts: 1},
		{name: "shutdown vm", fn: shutdown, in: ShutdownGuestInput{VMID: 101, TimeoutSeconds: 5}, status: "running", want: "stopped", posts: 1},
		{name: "shutdown stopped", fn: shutdown, in: ShutdownGuestInput{VMID: 101}, status: "stopped", want: "stopped", already: true},
		{name: "shutdown ignored, no force", fn: shutdown, noShut: true, in: ShutdownGuestInput{VMID: 101, TimeoutSeconds: 5},
			status: "running", want: "running", posts: 1, errType: ErrTypeTaskFailed},
		{name: "shutdown ignored, force stop", fn: shutdown, noShut: true, in: ShutdownGuestInput{VMID: 101, TimeoutSeconds: 5, ForceStop: true},
			status: "running", want: "stopped", posts: 2},
		{name: "shutdown container ignored, force stop", kind: "lxc", fn: shutdown, noShut: true,
			in: ShutdownGuestInput{VMID: 101, TimeoutSeconds: 5, ForceStop: true}, status: "running", want: "stopped", posts: 2},
		{name: "reboot vm", fn: reboot, in: GuestInput{VMID: 101}, status: "running", want: "running", posts: 1},
		{name: "reboot stopped vm", fn: reboot, in: GuestInput{VMID: 101}, status: "stopped", want: "stopped", already: true},
		{name: "reboot container", kind: "lxc", fn: reboot, in: GuestInput{VMID: 101}, status: "running", want: "running", posts: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{})
			g := pvesim.Guest{VMID: 101, Name: "g", Status: tt.status, MemoryMiB: 512, IgnoresShutdown: tt.noShut}
			if tt.kind == "lxc" {
				g.Disks = map[string]string{"rootfs": "local-lvm:subvol-101-disk-0,size=4G"}
				h.addCT(g)
			} else {
				h.addVM(g)
			}
			res, err := run[TaskResult](h, tt.fn(h), tt.in)
			if tt.errType != "" {
				wantErr(t, err, tt.errType, tt.retryable)
			} else if err != nil {
				t.Fatal(err)
			}
			if tt.errType == "" {
				if res.AlreadyDone != tt.already {
					t.Errorf("AlreadyDone = %v, want %v", res.AlreadyDone, tt.already)
				}
				if !tt.already && (res.UPID == "" || res.ExitStatus != "OK") {
					t.Errorf("result %+v: want the task's UPID and exit status OK", res)
				}
			}
			if got, _ := h.guest(101); got.Status != tt.want {
				t.Errorf("guest status = %q, want %q", got.Status, tt.want)
			}
			if n := len(h.srv.Requests()); n != tt.posts {
				t.Errorf("%d mutating requests, want %d: %+v", n, tt.posts, h.srv.Requests())
			}
		})
	}
}

// TestStartAlreadyRunningIsSuccess: the guest is started by someone else
// between the activity's read and its POST; Proxmox's "already running" (a
// failed task for QEMU, a 500 for LXC) means the goal is met.
func TestStartAlreadyRunningIsSuccess(t *testing.T) {
	for _, kind := range []string{"qemu", "lxc"} {
		t.Run(kind, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{})
			g := pvesim.Guest{VMID: 101, Name: "g", Status: "stopped", MemoryMiB: 512}
			if kind == "lxc" {
				g.Disks = map[string]string{"rootfs": "local-lvm:subvol-101-disk-0,size=4G"}
				h.addCT(g)
			} else {
				h.addVM(g)
			}
			held := pvesim.NewHook()
			h.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/*/101/status/start", Kind: pvesim.FaultHold, Hook: held})
			go func() { // while the start request is held, someone else starts the guest
				<-held.Hit()
				h.srv.SetStatus(101, "running")
				held.Release()
			}()
			res, err := run[TaskResult](h, h.act.StartGuest, GuestInput{VMID: 101})
			if err != nil || !res.AlreadyDone {
				t.Fatalf("StartGuest = %+v, %v; want AlreadyDone", res, err)
			}
			if n := h.mutations("POST", "/nodes/*/*/101/status/start"); n != 1 {
				t.Fatalf("%d start requests, want 1", n)
			}
		})
	}
}
