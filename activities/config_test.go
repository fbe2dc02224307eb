package activities

import (
	"strings"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestSetConfig(t *testing.T) {
	for _, kind := range []string{"qemu", "lxc"} {
		t.Run(kind, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{})
			g := pvesim.Guest{VMID: 101, Name: "g", Status: "stopped", MemoryMiB: 1024, Cores: 1, Tags: "a"}
			configPath := "/nodes/*/" + kind + "/101/config"
			method := "POST"
			if kind == "lxc" {
				method = "PUT"
				g.Disks = map[string]string{"rootfs": "local-lvm:subvol-101-disk-0,size=4G"}
				h.addCT(g)
			} else {
				h.addVM(g)
			}
			before, err := run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 101})
			if err != nil {
				t.Fatal(err)
			}
			in := SetConfigInput{VMID: 101, Digest: before.Digest,
				Set: map[string]any{"memory": 2048, "cores": 2, "tags": "b;a"}}
			res, err := run[TaskResult](h, h.act.SetConfig, in)
			if err != nil {
				t.Fatal(err)
			}
			if kind == "qemu" && (res.UPID == "" || res.ExitStatus != "OK") {
				t.Errorf("qemu config result %+v: want its task", res)
			}
			got, _ := h.guest(101)
			if got.MemoryMiB != 2048 || got.Cores != 2 || strings.Join(splitTags(got.Tags), ";") != "a;b" {
				t.Fatalf("guest after SetConfig: memory %d cores %d tags %q", got.MemoryMiB, got.Cores, got.Tags)
			}
			if n := h.mutations(method, configPath); n != 1 {
				t.Fatalf("%d config requests, want 1", n)
			}

			// The same change again (a retry after a crash): nothing is sent,
			// although the digest it carries is stale now.
			res, err = run[TaskResult](h, h.act.SetConfig, in)
			if err != nil || !res.AlreadyDone {
				t.Fatalf("repeated SetConfig = %+v, %v; want AlreadyDone", res, err)
			}
			if n := h.mutations(method, configPath); n != 1 {
				t.Fatalf("%d config requests after the repeat, want 1", n)
			}

			// A different change planned against the stale digest is refused.
			_, err = run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Digest: before.Digest, Set: map[string]any{"memory": 4096}})
			wantErr(t, err, ErrTypeDigestMismatch, false)

			// Bad parameter values are Proxmox's 400.
			_, err = run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"memory": "lots"}})
			wantErr(t, err, ErrTypeBadRequest, false)
		})
	}
}

func TestSetConfigRunningVMGoesPending(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", Status: "running", MemoryMiB: 1024, Cores: 1})
	in := SetConfigInput{VMID: 101, Set: map[string]any{"memory": 3072}}
	if _, err := run[TaskResult](h, h.act.SetConfig, in); err != nil {
		t.Fatal(err)
	}
	read, err := run[Guest](h, h.act.ReadGuest, ReadGuestInput{VMID: 101})
	if err != nil {
		t.Fatal(err)
	}
	if read.MemoryMiB != 3072 {
		t.Fatalf("ReadGuest memory = %d, want the pending 3072 so the change is not planned again", read.MemoryMiB)
	}
	res, err := run[TaskResult](h, h.act.SetConfig, in)
	if err != nil || !res.AlreadyDone {
		t.Fatalf("SetConfig of a pending value = %+v, %v; want AlreadyDone", res, err)
	}
}

func TestSetConfigAddsDiskWithoutGate(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", MemoryMiB: 1024, Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=8G"}})
	in := SetConfigInput{VMID: 101, Set: map[string]any{"scsi1": "local-lvm:16"}}
	if _, err := run[TaskResult](h, h.act.SetConfig, in); err != nil {
		t.Fatal(err)
	}
	got, _ := h.guest(101)
	if !strings.HasPrefix(got.Disks["scsi1"], "local-lvm:vm-101-disk-") {
		t.Fatalf("scsi1 = %q, want a new volume", got.Disks["scsi1"])
	}
	res, err := run[TaskResult](h, h.act.SetConfig, in)
	if err != nil || !res.AlreadyDone {
		t.Fatalf("repeat = %+v, %v; want AlreadyDone", res, err)
	}
}

func TestSetConfigDiskDetachIsGated(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 101, Name: "g", MemoryMiB: 1024, Disks: map[string]string{
		"scsi0": "local-lvm:vm-101-disk-0,size=8G", "scsi1": "local-lvm:vm-101-disk-1,size=16G"}})
	detach := SetConfigInput{VMID: 101, Delete: []string{"scsi1"}}

	_, err := run[TaskResult](h, h.act.SetConfig, detach)
	wantErr(t, err, "pending_signature", false)
	if !strings.Contains(err.Error(), "disk.detach") {
		t.Errorf("refusal %q does not name the action", err)
	}

	detach.Approval = h.approve(gate.OpDiskDetach, "101", map[string]any{"disk": "scsi0"})
	_, err = run[TaskResult](h, h.act.SetConfig, detach)
	wantErr(t, err, "binding_mismatch", false)

	if n := len(h.srv.Requests()); n != 0 {
		t.Fatalf("refused detach sent %d requests", n)
	}
	if got, _ := h.guest(101); got.Disks["scsi1"] == "" {
		t.Fatal("refused detach removed the disk")
	}

	detach.Approval = h.approve(gate.OpDiskDetach, "101", map[string]any{"disk": "scsi1"})
	if _, err := run[TaskResult](h, h.act.SetConfig, detach); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.guest(101); got.Disks["scsi1"] != "" || got.Disks["unused0"] == "" {
		t.Fatalf("after signed detach: disks %v, want scsi1 moved to unused0", got.Disks)
	}

	// Two detaches in one step cannot be covered by one approval.
	_, err = run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 101, Delete: []string{"scsi0", "unused0"}})
	wantErr(t, err, ErrTypeBadRequest, false)
}

func TestSetConfigOnAgentScratchGuestIsBenign(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	if _, err := run[CreateResult](h, h.act.CreateVM, CreateVMInput{VMID: 150, Name: "tmp", MemoryMiB: 512,
		Disks: map[string]string{"scsi0": "local-lvm:4", "scsi1": "local-lvm:4"}, Scratch: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := run[TaskResult](h, h.act.SetConfig, SetConfigInput{VMID: 150, Delete: []string{"scsi1"}}); err != nil {
		t.Fatalf("detach on the agent's scratch guest: %v", err)
	}
}

func TestConfigAction(t *testing.T) {
	g := Guest{Kind: "qemu", Config: map[string]string{
		"scsi0": "local-lvm:vm-101-disk-0,size=32G", "scsi1": "local-lvm:vm-101-disk-1,size=8G",
		"unused0": "local-lvm:vm-101-disk-2", "memory": "1024"}}
	tests := []struct {
		name   string
		in     SetConfigInput
		op     string // "error" when refused
		params string // canonical params of the action
		class  gate.Class
	}{
		{"memory only", SetConfigInput{Set: map[string]any{"memory": 2048}}, gate.OpGuestConfig, `{"memory":2048}`, gate.Benign},
		{"new disk", SetConfigInput{Set: map[string]any{"scsi2": "local-lvm:8"}}, gate.OpGuestConfig, `{"scsi2":"local-lvm:8"}`, gate.Benign},
		{"new disk naming another guest's volume", SetConfigInput{Set: map[string]any{"scsi2": "local-lvm:vm-102-disk-0"}}, gate.OpGuestConfig, `{"scsi2":"local-lvm:vm-102-disk-0"}`, gate.Destructive},
		{"unknown key", SetConfigInput{Set: map[string]any{"hookscript": "local:snippets/x"}}, gate.OpGuestConfig, `{"hookscript":"local:snippets/x"}`, gate.Destructive},
		{"delete non-disk", SetConfigInput{Delete: []string{"description"}}, gate.OpGuestConfig, `{"delete":"description"}`, gate.Destructive},
		{"delete disk", SetConfigInput{Delete: []string{"scsi1"}}, gate.OpDiskDetach, `{"disk":"scsi1"}`, gate.Destructive},
		{"delete unused disk frees it", SetConfigInput{Delete: []string{"unused0"}}, gate.OpVolumeWipe, `{"volume":"local-lvm:vm-101-disk-2"}`, gate.Destructive},
		{"shrink", SetConfigInput{Set: map[string]any{"scsi0": "local-lvm:vm-101-disk-0,size=16G"}}, gate.OpDiskShrink, `{"disk":"scsi0","size_gib":16}`, gate.Destructive},
		{"allocation over an existing disk", SetConfigInput{Set: map[string]any{"scsi0": "local-lvm:8", "memory": 2048}}, "error", "", ""},
		{"swap volume", SetConfigInput{Set: map[string]any{"scsi1": "other:vm-101-disk-9,size=8G"}}, "error", "", ""},
		{"grow through config", SetConfigInput{Set: map[string]any{"scsi0": "local-lvm:vm-101-disk-0,size=64G"}}, "error", "", ""},
		{"two disks at once", SetConfigInput{Delete: []string{"scsi0", "scsi1"}}, "error", "", ""},
		{"a disk and other keys", SetConfigInput{Delete: []string{"scsi1"}, Set: map[string]any{"memory": 2048}}, "error", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := configAction(g, tt.in)
			if tt.op == "error" {
				if err == nil {
					t.Fatalf("configAction = %+v, want refused", a)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			params, _ := gate.CanonicalJSON(a.Params)
			if a.Op != tt.op || string(params) != tt.params {
				t.Fatalf("configAction = %s %s, want %s %s", a.Op, params, tt.op, tt.params)
			}
			a.GuestID = "101"
			if c := gate.Classify(a, gate.Provenance{}, time.Now()); c != tt.class {
				t.Fatalf("class %s, want %s", c, tt.class)
			}
		})
	}
}

func TestSetConfigContainerName(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addCT(pvesim.Guest{VMID: 201, Name: "old", MemoryMiB: 512, Disks: map[string]string{"rootfs": "local-lvm:subvol-201-disk-0,size=4G"}})
	in := SetConfigInput{VMID: 201, Set: map[string]any{"name": "new"}}
	if _, err := run[TaskResult](h, h.act.SetConfig, in); err != nil {
		t.Fatal(err)
	}
	if g, _ := h.guest(201); g.Name != "new" {
		t.Fatalf("container name %q, want new", g.Name)
	}
	if res, err := run[TaskResult](h, h.act.SetConfig, in); err != nil || !res.AlreadyDone {
		t.Fatalf("repeat = %+v, %v", res, err)
	}
}
