package activities

import (
	"testing"
	"time"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

// TestA596AfterTheFactConverges: pveproxy answers 596 when pvedaemon took
// longer than its 30 s, and pvedaemon may still execute the call. The
// attempt fails retryably with no UPID recorded; the retry decides from
// the guest's state and the node's task list, and the effect happens once.
func TestA596AfterTheFactConverges(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(h *harness)
		method string
		path   string
		invoke func(h *harness) (any, any)
		check  func(t *testing.T, h *harness)
	}{
		{name: "start", setup: vmCase("stopped"), method: "POST", path: "/nodes/*/qemu/101/status/start",
			invoke: func(h *harness) (any, any) { return h.act.StartGuest, GuestInput{VMID: 101} }, check: statusIs("running")},
		{name: "shutdown", setup: vmCase("running"), method: "POST", path: "/nodes/*/qemu/101/status/shutdown",
			invoke: func(h *harness) (any, any) { return h.act.ShutdownGuest, ShutdownGuestInput{VMID: 101} }, check: statusIs("stopped")},
		{name: "reboot", setup: vmCase("running"), method: "POST", path: "/nodes/*/qemu/101/status/reboot",
			invoke: func(h *harness) (any, any) { return h.act.RebootGuest, GuestInput{VMID: 101} }, check: statusIs("running")},
		{name: "config", setup: vmCase("stopped"), method: "POST", path: "/nodes/*/qemu/101/config",
			invoke: func(h *harness) (any, any) {
				return h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"memory": 1024}}
			},
			check: func(t *testing.T, h *harness) {
				if g, _ := h.guest(101); g.MemoryMiB != 1024 {
					t.Fatalf("memory %d", g.MemoryMiB)
				}
			}},
		{name: "create", setup: func(*harness) {}, method: "POST", path: "/nodes/*/qemu",
			invoke: func(h *harness) (any, any) {
				return h.act.CreateVM, CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512, Disks: map[string]string{"scsi0": "local-lvm:8"}}
			},
			check: func(t *testing.T, h *harness) {
				if !h.prov(150).AgentCreated {
					t.Fatal("create not confirmed as the agent's")
				}
			}},
		{name: "signed destroy", setup: func(h *harness) { h.addVM(customerVM(101, "stopped")) }, method: "DELETE", path: "/nodes/*/qemu/101",
			invoke: func(h *harness) (any, any) {
				return h.act.DestroyGuest, DestroyGuestInput{VMID: 101, Approval: h.approve(gate.OpGuestDestroy, "101", map[string]any{"kind": "qemu"})}
			},
			check: func(t *testing.T, h *harness) {
				if _, ok := h.guest(101); ok {
					t.Fatal("not destroyed")
				}
			}},
	}
	for _, tt := range tests {
		for _, slow := range []bool{false, true} {
			name := tt.name + "/task done by the retry"
			cfg := pvesim.Config{Clock: func() time.Time { return time.Now().Add(time.Hour) }}
			if slow {
				// the retry finds the task still running
				name = tt.name + "/task still running at the retry"
				cfg.TaskDuration = 300 * time.Millisecond
			}
			t.Run(name, func(t *testing.T) {
				h := newHarness(t, cfg)
				tt.setup(h)
				h.srv.Inject(pvesim.Fault{Method: tt.method, Path: tt.path, Kind: pvesim.FaultHTTPErrorAfter})
				fn, in := tt.invoke(h)
				var recorded []Progress
				_, err := runIn[TaskResult](h.recordingEnv(&recorded), fn, in)
				wantErr(t, err, ErrTypeUnavailable, true)
				if len(recorded) != 0 {
					t.Fatalf("recorded %+v from a call that answered 596", recorded)
				}
				if !slow {
					waitTaskDone(t, h, h.srv.RequestsMatching(tt.method, tt.path)[0].UPID)
					if tt.name == "reboot" {
						waitRestarted(t, h, 101)
					}
				}
				if _, err := runIn[TaskResult](h.env(), fn, in); err != nil {
					t.Fatalf("retry: %v", err)
				}
				if n := h.mutations(tt.method, tt.path); n != 1 {
					t.Fatalf("%d %s requests, want the one that answered 596", n, tt.method)
				}
				tt.check(t, h)
			})
		}
	}
}
