package activities

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"

	"github.com/felhom/felhom-agent/internal/pveclient"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

// TestFaultClasses drives StartGuest into every fault the simulator can
// inject and checks the error class a workflow sees, and that nothing was
// started where the request failed before its side effect.
func TestFaultClasses(t *testing.T) {
	startPath := "/nodes/*/qemu/101/status/start"
	tests := []struct {
		name      string
		fault     pvesim.Fault
		lock      string
		errType   string // "" = success
		retryable bool
		exit      string // exit status on success
		running   bool   // guest running afterwards
	}{
		{name: "500 with lock text", fault: pvesim.Fault{Kind: pvesim.FaultHTTPError, Status: 500, Message: "VM 101 is locked (backup)"},
			errType: ErrTypeLocked, retryable: true},
		{name: "500 other", fault: pvesim.Fault{Kind: pvesim.FaultHTTPError, Status: 500, Message: "unable to connect to VM 101 qmp socket"},
			errType: ErrTypeUnavailable, retryable: true},
		{name: "502", fault: pvesim.Fault{Kind: pvesim.FaultHTTPError, Status: 502},
			errType: ErrTypeUnavailable, retryable: true},
		{name: "595 empty body", fault: pvesim.Fault{Kind: pvesim.FaultHTTPError, Status: 595, Message: "Connection refused"},
			errType: ErrTypeUnavailable, retryable: true},
		{name: "596 pvedaemon busy", fault: pvesim.Fault{Kind: pvesim.FaultHTTPError, Status: 596, Message: "Connection timed out"},
			errType: ErrTypeUnavailable, retryable: true},
		{name: "403 permission", fault: pvesim.Fault{Kind: pvesim.FaultHTTPError, Status: 403, Message: "Permission check failed (/vms/101, VM.PowerMgmt)"},
			errType: ErrTypePermission},
		{name: "400 bad parameter", fault: pvesim.Fault{Kind: pvesim.FaultHTTPError, Status: 400, Message: "Parameter verification failed."},
			errType: ErrTypeBadRequest},
		{name: "dropped before", fault: pvesim.Fault{Kind: pvesim.FaultDropBefore},
			errType: ErrTypeUnavailable, retryable: true},
		{name: "dropped after", fault: pvesim.Fault{Kind: pvesim.FaultDropAfter},
			errType: ErrTypeUnavailable, retryable: true, running: true},
		{name: "slower than the client timeout", fault: pvesim.Fault{Kind: pvesim.FaultDelay, Delay: 2 * time.Second},
			errType: ErrTypeUnavailable, retryable: true},
		{name: "task fails", fault: pvesim.Fault{Kind: pvesim.FaultTaskError, Message: "start failed: QEMU exited with code 1"},
			errType: ErrTypeTaskFailed},
		{name: "task lock timeout", fault: pvesim.Fault{Kind: pvesim.FaultLockTimeout},
			errType: ErrTypeLocked, retryable: true},
		{name: "task warnings are success", fault: pvesim.Fault{Kind: pvesim.FaultTaskWarnings},
			exit: "WARNINGS: 1", running: true},
		{name: "backup lock", lock: "backup", errType: ErrTypeLocked, retryable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{})
			h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "stopped", MemoryMiB: 512, Lock: tt.lock})
			if tt.fault.Kind != "" {
				tt.fault.Method, tt.fault.Path = "POST", startPath
				h.srv.Inject(tt.fault)
			}
			if tt.fault.Kind == pvesim.FaultDelay {
				client, err := pveclient.New(pveclient.Config{URL: h.srv.URL(), TokenID: h.srv.TokenID(), TokenSecret: h.srv.TokenSecret(),
					RootCAs: h.srv.HTTPClient().Transport.(*http.Transport).TLSClientConfig.RootCAs, Timeout: 300 * time.Millisecond})
				if err != nil {
					t.Fatal(err)
				}
				h.act.Client = client
			}
			res, err := run[TaskResult](h, h.act.StartGuest, GuestInput{VMID: 101})
			if tt.errType == "" {
				if err != nil {
					t.Fatal(err)
				}
				if res.ExitStatus != tt.exit {
					t.Errorf("exit status %q, want %q", res.ExitStatus, tt.exit)
				}
			} else {
				wantErr(t, err, tt.errType, tt.retryable)
			}
			// A task started by a request whose answer was lost finishes on
			// its own. The simulator records the task before it answers or
			// drops the connection, so the activity's error means the record
			// is there.
			for _, r := range h.srv.RequestsMatching("POST", startPath) {
				if r.UPID != "" {
					done, _ := h.srv.TaskDone(r.UPID)
					<-done
				}
			}
			if g, _ := h.guest(101); (g.Status == "running") != tt.running {
				t.Fatalf("guest status %q, want running=%v", g.Status, tt.running)
			}
		})
	}
}

func TestBadTokenIsPermission(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", MemoryMiB: 512})
	client, err := pveclient.New(pveclient.Config{URL: h.srv.URL(), TokenID: h.srv.TokenID(), TokenSecret: "wrong",
		RootCAs: h.srv.HTTPClient().Transport.(*http.Transport).TLSClientConfig.RootCAs})
	if err != nil {
		t.Fatal(err)
	}
	h.act.Client = client
	_, err = run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 101})
	wantErr(t, err, ErrTypePermission, false)
	if !strings.Contains(err.Error(), "token") {
		t.Errorf("message %q does not point at the token", err)
	}
}

func TestReadFaults(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", MemoryMiB: 512})
	h.srv.Inject(pvesim.Fault{Method: "GET", Path: "/nodes/*/qemu/101/status/current", Kind: pvesim.FaultHTTPError, Status: 596})
	_, err := run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 101, Kind: "qemu"})
	wantErr(t, err, ErrTypeUnavailable, true)
	h.srv.Inject(pvesim.Fault{Method: "GET", Path: "/cluster/resources", Kind: pvesim.FaultHTTPError, Status: 595})
	_, err = run[ListGuestsResult](h, h.act.ListGuests, ListGuestsInput{})
	wantErr(t, err, ErrTypeUnavailable, true)
}

// TestLockedGuestIsRetriedNotFailed: a config change while another task holds
// the guest's lock fails retryably, and succeeds once the lock is gone.
func TestLockedGuestIsRetriedNotFailed(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", MemoryMiB: 512, Lock: "backup"})
	in := SetConfigInput{VMID: 101, Set: map[string]any{"memory": 1024}}
	_, err := run[TaskResult](h, h.act.SetConfig, in)
	wantErr(t, err, ErrTypeLocked, true)
	h.srv.SetLock(101, "")
	if _, err := run[TaskResult](h, h.act.SetConfig, in); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverPanic(t *testing.T) {
	err := func() (err error) {
		defer recoverPanic("read guest 101", &err)
		var m map[string]*taskStatus
		_ = m["x"].Status // what go-proxmox does with "data": null
		return nil
	}()
	wantErr(t, err, ErrTypeMalformed, true)
	if !strings.Contains(err.Error(), "read guest 101: malformed answer from Proxmox") {
		t.Fatalf("message %q", err)
	}
}

func TestClassifyPlainGoProxmoxErrors(t *testing.T) {
	// Errors as go-proxmox returns them without pveclient's transport.
	tests := []struct {
		err       error
		typ       string
		retryable bool
	}{
		{errors.New("500 VM 101 is locked (backup)"), ErrTypeLocked, true},
		{errors.New("500 Configuration file 'nodes/pve1/qemu-server/101.conf' does not exist"), ErrTypeNotFound, false},
		{errors.New("500 can't remove VM 101 - protection mode enabled"), ErrTypeProtected, false},
		{errors.New("500 checksum mismatch (file change by other user?)"), ErrTypeDigestMismatch, false},
		{errors.New("unexpected end of JSON input"), ErrTypeMalformed, true},
		{&TaskError{UPID: "u", ExitStatus: "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout"}, ErrTypeLocked, true},
		{&TaskError{UPID: "u", ExitStatus: "VM quit/powerdown failed - got timeout"}, ErrTypeTaskFailed, false},
		{&TaskError{UPID: "u", ExitStatus: "checksum mismatch (file change by other user?)"}, ErrTypeDigestMismatch, false},
		{&TaskError{UPID: "u", ExitStatus: "unexpected status"}, ErrTypeTaskLost, true},
		{&TaskError{UPID: "u", ExitStatus: "received interrupt"}, ErrTypeTaskFailed, false},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			wantErr(t, classify("step", tt.err), tt.typ, tt.retryable)
		})
	}
}

// A null configuration is a malformed answer, not an empty guest. (A
// start reads only the guest's status, so the read shows it.)
func TestConfigNullIsMalformed(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "stopped", MemoryMiB: 512})
	h.srv.Inject(pvesim.Fault{Method: "GET", Path: "/nodes/*/qemu/101/config", Kind: pvesim.FaultRawReply, Message: `{"data":null}`})
	_, err := run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 101})
	wantErr(t, err, ErrTypeMalformed, true)
}

// TestMalformedAnswers: answers go-proxmox's typed helpers panic on are
// retryable errors here, and the retry neither repeats a request that took
// effect nor loses the outcome.
func TestMalformedAnswers(t *testing.T) {
	startPath := "/nodes/*/qemu/101/status/start"
	tests := []struct {
		name  string
		fault pvesim.Fault
		posts int // start requests after the retry
	}{
		{"status current null", pvesim.Fault{Method: "GET", Path: "/nodes/*/qemu/101/status/current", Kind: pvesim.FaultRawReply, Message: `{"data":null}`}, 1},
		{"short UPID, nothing started", pvesim.Fault{Method: "POST", Path: startPath, Kind: pvesim.FaultRawReply, Message: `{"data":"UPID:pve1:1:2:3:qmstart:101"}`}, 2},
		{"short UPID after the start", pvesim.Fault{Method: "POST", Path: startPath, Kind: pvesim.FaultRawReplyAfter, Message: `{"data":"UPID:pve1:1:2:3:qmstart:101"}`}, 1},
		{"task status null", pvesim.Fault{Method: "GET", Path: "/nodes/*/tasks/*/status", Kind: pvesim.FaultRawReply, Message: `{"data":null}`}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{TaskDuration: 200 * time.Millisecond})
			h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "stopped", MemoryMiB: 512})
			h.srv.Inject(tt.fault)
			var recorded []Progress
			e := h.env()
			e.SetOnActivityHeartbeatListener(func(_ *activity.Info, d converter.EncodedValues) {
				var p Progress
				if d.Get(&p) == nil {
					recorded = append(recorded, p)
				}
			})
			_, err := runIn[TaskResult](e, h.act.StartGuest, GuestInput{VMID: 101, Kind: "qemu"})
			wantErr(t, err, ErrTypeMalformed, true)
			for _, p := range recorded {
				if _, perr := parseUPID(p.UPID); perr != nil {
					t.Fatalf("heartbeated an unusable UPID %q", p.UPID)
				}
			}
			// The retry, with what the server kept.
			e = h.env()
			if len(recorded) > 0 {
				e.SetHeartbeatDetails(recorded[len(recorded)-1])
			}
			if _, err := runIn[TaskResult](e, h.act.StartGuest, GuestInput{VMID: 101, Kind: "qemu"}); err != nil {
				t.Fatalf("retry: %v", err)
			}
			if g, _ := h.guest(101); g.Status != "running" {
				t.Fatalf("guest %s, want running", g.Status)
			}
			if n := h.mutations("POST", startPath); n != tt.posts {
				t.Fatalf("%d start requests, want %d", n, tt.posts)
			}
		})
	}
}
