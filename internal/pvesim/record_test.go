package pvesim_test

import (
	"context"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestRequestRecord(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, MemoryMiB: 2048}))
	ctx := context.Background()
	vm := vmOf(t, client, 101) // GETs are not recorded
	task, err := vm.Config(ctx, proxmox.VirtualMachineOption{Name: "memory", Value: 3072},
		proxmox.VirtualMachineOption{Name: "tags", Value: "a;b"})
	if err != nil {
		t.Fatal(err)
	}
	finished(t, task)
	start, err := vm.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	finished(t, start)
	missing := &proxmox.VirtualMachine{}
	missing.New(client, "pve1", 999)
	if _, err := missing.Start(ctx); errText(err) != "500 Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist" {
		t.Fatalf("start of a missing VM: %v", err)
	}

	all := srv.Requests()
	if len(all) != 3 || all[2].Status != 500 || all[2].VMID != 999 {
		t.Fatalf("recorded %d requests: %+v", len(all), all)
	}
	cfg := all[0]
	if cfg.Method != "POST" || cfg.Path != "/nodes/pve1/qemu/101/config" || cfg.VMID != 101 ||
		cfg.Form.Get("memory") != "3072" || cfg.Form.Get("tags") != "a;b" || cfg.Status != 200 ||
		cfg.UPID != string(task.UPID) || cfg.Time.IsZero() {
		t.Errorf("config record %+v", cfg)
	}
	tests := []struct {
		name, method, pattern string
		want                  int
	}{
		{"exact", "POST", "/nodes/pve1/qemu/101/status/start", 1},
		{"glob", "POST", "/nodes/*/qemu/*/status/*", 2},
		{"any method", "", "/nodes/pve1/qemu/101/config", 1},
		{"other method", "PUT", "", 0},
		{"everything", "", "", 3},
		{"subtree", "", "/nodes/pve1/qemu/**", 3},
		{"subtree of one guest", "", "/nodes/*/qemu/101/**", 2},
		{"subtree needs a segment", "", "/nodes/pve1/qemu/101/config/**", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := srv.RequestsMatching(tt.method, tt.pattern); len(got) != tt.want {
				t.Fatalf("%d matches, want %d", len(got), tt.want)
			}
		})
	}
	all[0].Form.Set("memory", "1")
	if srv.Requests()[0].Form.Get("memory") != "3072" {
		t.Error("Requests exposes the record's own form values")
	}
	srv.ResetRequests()
	if n := len(srv.Requests()); n != 0 {
		t.Fatalf("%d requests after reset", n)
	}
}

func TestRequestRecordKeepsRefusedAndFaultedCalls(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Protection: true}))
	vm := vmOf(t, client, 101)
	if _, err := vm.Delete(context.Background(), nil); err == nil {
		t.Fatal("protected delete accepted")
	}
	srv.Inject(pvesim.Fault{Kind: pvesim.FaultDropAfter})
	if _, err := vm.Start(context.Background()); err == nil {
		t.Fatal("dropped start reported success")
	}
	got := srv.Requests()
	if len(got) != 2 || got[0].Method != "DELETE" || got[0].Status != 500 ||
		got[1].Status != 0 || got[1].Fault != pvesim.FaultDropAfter || got[1].UPID == "" {
		t.Fatalf("records %+v", got)
	}
}

// Why clients must leave go-proxmox's WithRetry off: it re-sends a POST with
// a body whose connection dropped after Proxmox acted on it, and the record
// shows the duplicate. (A POST without a body is not re-sent.)
func TestRecordShowsGoProxmoxRetryDuplicatingAPost(t *testing.T) {
	srv, _ := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Tags: "a"}))
	retrying := proxmox.NewClient(srv.URL(), proxmox.WithHTTPClient(srv.HTTPClient()),
		proxmox.WithAPIToken(srv.TokenID(), srv.TokenSecret()),
		proxmox.WithRetry(proxmox.WithRetryMax(2), proxmox.WithRetryBackoff(time.Millisecond, time.Millisecond)))
	srv.Inject(pvesim.Fault{Method: "POST", Kind: pvesim.FaultDropAfter})
	vm := &proxmox.VirtualMachine{}
	vm.New(retrying, "pve1", 101)
	task, err := vm.Config(context.Background(), proxmox.VirtualMachineOption{Name: "tags", Value: "a;b"})
	if err != nil {
		t.Fatalf("retried config: %v", err)
	}
	finished(t, task)
	posts := srv.RequestsMatching("POST", "/nodes/pve1/qemu/101/config")
	if len(posts) != 2 || posts[0].Status != 0 || posts[1].Status != 200 || posts[0].UPID == posts[1].UPID {
		t.Fatalf("go-proxmox no longer re-sends the POST (update the package doc): %+v", posts)
	}
}
