package activities

import (
	"strings"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestCreateVM(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	in := CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 2048, Cores: 2, Tags: []string{"prod"},
		Disks: map[string]string{"scsi0": "local-lvm:8"}, Options: map[string]string{"net0": "virtio,bridge=vmbr0"}, Scratch: true}
	res, err := run[CreateResult](h, h.act.CreateVM, in)
	if err != nil {
		t.Fatal(err)
	}
	if res.VMID != 150 || res.Kind != "qemu" || res.UPID == "" || res.ExitStatus != "OK" {
		t.Fatalf("CreateVM = %+v", res)
	}
	g, ok := h.guest(150)
	if !ok || g.Name != "app" || g.MemoryMiB != 2048 || g.Cores != 2 || !strings.HasPrefix(g.Disks["scsi0"], "local-lvm:vm-150-disk-") {
		t.Fatalf("created guest %+v", g)
	}
	if p := h.prov(150); !p.AgentCreated || !p.Scratch || p.InUse || len(p.Volumes) != 1 {
		t.Fatalf("provenance = %+v", p)
	}
	if e, _ := h.ledger.Entry(150); e.SMBIOS == "" || markerOf(g.Description) != e.Instance {
		t.Fatalf("ledger entry %+v does not name the guest's instance (description %q)", e, g.Description)
	}

	// Retried after completion was lost: done, no second POST.
	res, err = run[CreateResult](h, h.act.CreateVM, in)
	if err != nil || !res.AlreadyDone {
		t.Fatalf("repeated CreateVM = %+v, %v; want AlreadyDone", res, err)
	}
	if n := h.mutations("POST", "/nodes/*/qemu"); n != 1 {
		t.Fatalf("%d create requests, want 1", n)
	}
}

func TestCreateContainer(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	in := CreateContainerInput{VMID: 250, Hostname: "db", OSTemplate: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
		MemoryMiB: 512, Cores: 1, RootFS: "local-lvm:4", Mounts: map[string]string{"mp0": "local-lvm:8,mp=/data"}}
	res, err := run[CreateResult](h, h.act.CreateContainer, in)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != "lxc" || res.UPID == "" {
		t.Fatalf("CreateContainer = %+v", res)
	}
	g, ok := h.guest(250)
	if !ok || g.Name != "db" || g.Disks["rootfs"] == "" || g.Disks["mp0"] == "" {
		t.Fatalf("created container %+v", g)
	}
	if p := h.prov(250); !p.AgentCreated || p.Scratch {
		t.Fatalf("provenance = %+v", p)
	}
}

func TestCreateRefusesForeignVMID(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.addVM(pvesim.Guest{VMID: 150, Name: "customer", MemoryMiB: 4096})
	_, err := run[CreateResult](h, h.act.CreateVM, CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512})
	wantErr(t, err, ErrTypeVMIDTaken, false)
	if n := len(h.srv.Requests()); n != 0 {
		t.Fatalf("%d requests sent for a taken VMID", n)
	}
	if _, ok := h.ledger.Entry(150); ok {
		t.Fatal("ledger claims the customer's VMID")
	}

	// The ledger records an agent create at 160, but the guest there does
	// not carry its marker: another instance, not the agent's.
	h.recordCreate(160, "qemu", testMarker, false)
	h.addVM(pvesim.Guest{VMID: 160, Name: "app", MemoryMiB: 512})
	_, err = run[CreateResult](h, h.act.CreateVM, CreateVMInput{VMID: 160, Name: "app", MemoryMiB: 512})
	wantErr(t, err, ErrTypeVMIDTaken, false)
}

// TestCreateVMIDRace: somebody takes the VMID between the read and the POST;
// Proxmox refuses, and the pending ledger record is dropped.
func TestCreateVMIDRace(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	held := pvesim.NewHook()
	h.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu", Kind: pvesim.FaultHold, Hook: held})
	go func() { // while the create request is held, someone else takes the VMID
		<-held.Hit()
		h.srv.AddVM(pvesim.Guest{VMID: 150, Name: "theirs", MemoryMiB: 512})
		held.Release()
	}()
	_, err := run[CreateResult](h, h.act.CreateVM, CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512})
	wantErr(t, err, ErrTypeVMIDTaken, false)
	if _, ok := h.ledger.Entry(150); ok {
		t.Fatal("pending record left for a VMID someone else took")
	}
	if g, _ := h.guest(150); g.Name != "theirs" {
		t.Fatalf("guest 150 = %+v", g)
	}
}

func TestCreateFailedTaskDropsPending(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	h.srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu", Kind: pvesim.FaultTaskError, Message: "unable to create VM 150 - no space left"})
	_, err := run[CreateResult](h, h.act.CreateVM, CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512})
	wantErr(t, err, ErrTypeTaskFailed, false)
	if _, ok := h.ledger.Entry(150); ok {
		t.Fatal("pending record left after a failed create task")
	}
	if _, ok := h.guest(150); ok {
		t.Fatal("failed create left a guest")
	}
}

func TestCreateInputValidation(t *testing.T) {
	h := newHarness(t, pvesim.Config{})
	for name, in := range map[string]CreateVMInput{
		"no name":      {VMID: 150, MemoryMiB: 512},
		"no memory":    {VMID: 150, Name: "a"},
		"low vmid":     {VMID: 99, Name: "a", MemoryMiB: 512},
		"bad disk key": {VMID: 150, Name: "a", MemoryMiB: 512, Disks: map[string]string{"rootfs": "local-lvm:4"}},
		"duplicate":    {VMID: 150, Name: "a", MemoryMiB: 512, Options: map[string]string{"name": "b"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := run[CreateResult](h, h.act.CreateVM, in)
			wantErr(t, err, ErrTypeBadRequest, false)
		})
	}
	_, err := run[CreateResult](h, h.act.CreateVM, CreateVMInput{VMID: 150, Name: "a", MemoryMiB: 512, Options: map[string]string{"frobnicate": "1"}})
	wantErr(t, err, ErrTypeBadRequest, false)
	if len(h.srv.Requests()) != 1 {
		t.Fatalf("requests: %+v", h.srv.Requests())
	}
	if _, ok := h.ledger.Entry(150); ok {
		t.Fatal("pending record left after Proxmox refused the parameters")
	}
}

// TestValuesProxmoxWouldRefuseAreRefusedFirst: a value Proxmox's schema
// refuses is refused before anything is sent or recorded, naming the key.
func TestValuesProxmoxWouldRefuseAreRefusedFirst(t *testing.T) {
	tests := []struct {
		name   string
		invoke func(h *harness) (any, any)
		key    string
	}{
		{"vm name", func(h *harness) (any, any) {
			return h.act.CreateVM, CreateVMInput{VMID: 150, Name: "bad_name", MemoryMiB: 512}
		}, "name: invalid format - value does not look like a valid DNS name"},
		{"vm network device", func(h *harness) (any, any) {
			return h.act.CreateVM, CreateVMInput{VMID: 150, Name: "app", MemoryMiB: 512, Options: map[string]string{"net0": "garbage"}}
		}, "net0: invalid format - format error; net0.model: value 'garbage'"},
		{"container network device", func(h *harness) (any, any) {
			return h.act.CreateContainer, CreateContainerInput{VMID: 150, Hostname: "app", MemoryMiB: 512, RootFS: "local-lvm:8",
				OSTemplate: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst", Options: map[string]string{"net0": "bridge=vmbr0"}}
		}, "net0: invalid format - format error; net0.name: property is missing"},
		{"config boolean", func(h *harness) (any, any) {
			return h.act.SetConfig, SetConfigInput{VMID: 101, Set: map[string]any{"onboot": "yes"}}
		}, "onboot: type check ('boolean') failed - got 'yes'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pvesim.Config{})
			h.addVM(pvesim.Guest{VMID: 101, Name: "g", MemoryMiB: 512})
			fn, in := tt.invoke(h)
			_, err := run[TaskResult](h, fn, in)
			wantErr(t, err, ErrTypeBadRequest, false)
			if !strings.Contains(err.Error(), tt.key) {
				t.Fatalf("error %q does not name %q", err, tt.key)
			}
			if len(h.srv.Requests()) != 0 {
				t.Fatalf("sent %+v", h.srv.Requests())
			}
			if _, ok := h.ledger.Entry(150); ok {
				t.Fatal("a refused create was recorded")
			}
		})
	}
}
