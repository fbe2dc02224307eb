package desired

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestParseMemoryMiB(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"2048", 2048, false},
		{"2GiB", 2048, false},
		{"2G", 2048, false},
		{"512MiB", 512, false},
		{"1048576KiB", 1024, false},
		{"2147483648B", 2048, false},
		{"2147483649B", 2049, false}, // one byte over rounds up, once
		{"1B", 1, false},
		{" 64 MiB ", 64, false},
		{"", 0, true},
		{"-1", 0, true},
		{"1.5GiB", 0, true},
		{"2TB", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseMemoryMiB(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseMemoryMiB(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseVolume(t *testing.T) {
	tests := []struct {
		in   string
		want Volume
		ok   bool
	}{
		{"local-lvm:32", Volume{"local-lvm", 32}, true},
		{"local-lvm:vm-101-disk-0,size=32G", Volume{"local-lvm", 32}, true},
		{"local:vm-101-disk-0,iothread=1,size=512M", Volume{"local", 1}, true},
		{"local-lvm:subvol-101-disk-0,size=8G", Volume{"local-lvm", 8}, true},
		{"nocolon", Volume{}, false},
		{"local-lvm:vm-101-disk-0", Volume{}, false},
		{"local-lvm:0", Volume{}, false},
	}
	for _, tt := range tests {
		got, err := ParseVolume(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseVolume(%q) = %+v, %v; want %+v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func validSpec() Spec {
	return Spec{Host: "pve1", VMID: 101, Kind: QEMU, Name: "web", State: Running, Memory: "2GiB", Cores: 2,
		Disks: map[string]string{"scsi0": "local-lvm:32"}, Tags: []string{"Web", "prod", "web"}}
}

func TestNormaliseFillsAndCanonicalises(t *testing.T) {
	got, err := Normalise(validSpec())
	if err != nil {
		t.Fatal(err)
	}
	if got.MemoryMiB != 2048 || got.Memory != "" {
		t.Errorf("memory = %q / %d MiB, want 2048 MiB", got.Memory, got.MemoryMiB)
	}
	if !slices.Equal(got.Tags, []string{"prod", "web"}) {
		t.Errorf("tags = %q, want sorted, lower-case, unique", got.Tags)
	}
	bare, err := Normalise(Spec{Host: "pve1", VMID: 200, Kind: QEMU, State: Stopped})
	if err != nil {
		t.Fatal(err)
	}
	if bare.MemoryMiB != 512 || bare.Cores != 1 {
		t.Errorf("defaults = %d MiB / %d cores, want Proxmox's 512 / 1", bare.MemoryMiB, bare.Cores)
	}
	again, err := Normalise(got)
	if err != nil || again.MemoryMiB != got.MemoryMiB || !slices.Equal(again.Tags, got.Tags) {
		t.Errorf("Normalise is not idempotent: %+v, %v", again, err)
	}
}

func TestNormaliseRejectsNamingTheField(t *testing.T) {
	tests := []struct {
		field string
		edit  func(*Spec)
	}{
		{"host", func(s *Spec) { s.Host = "PVE 1" }},
		{"vmid", func(s *Spec) { s.VMID = 99 }},
		{"kind", func(s *Spec) { s.Kind = "docker" }},
		{"kind", func(s *Spec) { s.Kind = "" }},
		{"state", func(s *Spec) { s.State = "paused" }},
		{"state", func(s *Spec) { s.State = "" }},
		{"name", func(s *Spec) { s.Name = "under_score" }},
		{"memory", func(s *Spec) { s.Memory = "lots" }},
		{"memory", func(s *Spec) { s.Memory = "8MiB" }},
		{"cores", func(s *Spec) { s.Cores = -1 }},
		{"disks.sdz", func(s *Spec) { s.Disks = map[string]string{"sdz": "local:1"} }},
		{`disks["scsi0\nvmid: 1"]`, func(s *Spec) { s.Disks = map[string]string{"scsi0\nvmid: 1": "local:1"} }},
		{"disks.rootfs", func(s *Spec) { s.Disks = map[string]string{"rootfs": "local:1"} }},
		{"disks.scsi0", func(s *Spec) { s.Disks = map[string]string{"scsi0": "local"} }},
		{"disks.rootfs", func(s *Spec) { s.Kind = LXC; s.Disks = nil; s.OSTemplate = "local:vztmpl/x.tar.zst" }},
		{"ostemplate", func(s *Spec) { s.OSTemplate = "local:vztmpl/x.tar.zst" }},
		{"ostemplate", func(s *Spec) { s.Kind = LXC; s.Disks = map[string]string{"rootfs": "local:4"} }},
		{"tags", func(s *Spec) { s.Tags = []string{"a b"} }},
		{"options.memory", func(s *Spec) { s.Options = map[string]string{"memory": "1"} }},
		{"options.protection", func(s *Spec) { s.Options = map[string]string{"protection": "0"} }},
		// Sizes: none, negative, zero, or too large for an int.
		{"memory", func(s *Spec) { s.Memory = "0" }},
		{"memory", func(s *Spec) { s.Memory = "-512" }},
		{"memory", func(s *Spec) { s.Memory = ""; s.MemoryMiB = -1 }},
		{"memory", func(s *Spec) { s.Memory = "99999999999999999999999GiB" }},
		{"cores", func(s *Spec) { s.Cores = 8193 }},
		{"vmid", func(s *Spec) { s.VMID = -101 }},
		{"vmid", func(s *Spec) { s.VMID = 1 << 40 }},
		{"disks.scsi0", func(s *Spec) { s.Disks = map[string]string{"scsi0": "local-lvm:-5"} }},
		{"disks.scsi0", func(s *Spec) { s.Disks = map[string]string{"scsi0": "local-lvm:0"} }},
		{"disks.scsi0", func(s *Spec) { s.Disks = map[string]string{"scsi0": "local-lvm:99999999999999999999"} }},
		{"disks.scsi0", func(s *Spec) { s.Disks = map[string]string{"scsi0": "local-lvm:x,size=1e300T"} }},
		{"disks.scsi0", func(s *Spec) { s.Disks = map[string]string{"scsi0": "local-lvm:x,size=NaN"} }},
		{"disks.scsi0", func(s *Spec) { s.Disks = map[string]string{"scsi0": "local-lvm:x,size=-Inf"} }},
	}
	for _, tt := range tests {
		s := validSpec()
		tt.edit(&s)
		_, err := Normalise(s)
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%s: err = %v, want a *FieldError", tt.field, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.field+": ") {
			t.Errorf("%s: err = %v, does not name the field", tt.field, err)
		}
		if len(err.Error()) > 4<<10 {
			t.Errorf("%s: the error is %d bytes long: it echoes the input", tt.field, len(err.Error()))
		}
	}
}

// Limits refuses what no guest needs and would bloat a workflow's history,
// naming the field, with a short error; a spec within them passes.
func TestLimitsNameTheField(t *testing.T) {
	tests := []struct {
		field string
		edit  func(*Spec)
	}{
		{"memory", func(s *Spec) { s.Memory = "5000GiB" }},
		{"memory", func(s *Spec) { s.Memory = ""; s.MemoryMiB = MaxMemoryMiB + 1 }},
		{"disks.scsi0", func(s *Spec) { s.Disks = map[string]string{"scsi0": "local-lvm:1048577"} }},
		{"disks.scsi0", func(s *Spec) { s.Disks = map[string]string{"scsi0": "local-lvm:x,size=2048T"} }},
		{"disks.scsi0", func(s *Spec) {
			s.Disks = map[string]string{"scsi0": "local-lvm:1," + strings.Repeat("a", MaxValueBytes)}
		}},
		{"tags", func(s *Spec) { s.Tags = slices.Repeat([]string{"t"}, MaxTags+1) }},
		{"tags", func(s *Spec) { s.Tags = []string{strings.Repeat("t", MaxValueBytes+1)} }},
		{"disks", func(s *Spec) {
			for i := range MaxDisks + 1 {
				s.Disks[fmt.Sprintf("mp%d", i)] = "local:1"
			}
		}},
		{"options", func(s *Spec) {
			s.Options = map[string]string{}
			for i := range MaxOptions + 1 {
				s.Options[fmt.Sprintf("usb%d", i)] = "host=1-1"
			}
		}},
		{"options", func(s *Spec) { s.Options = map[string]string{"Net 0": "x"} }},
		{"options", func(s *Spec) { s.Options = map[string]string{strings.Repeat("a", 65): "x"} }},
		{"options.description", func(s *Spec) { s.Options = map[string]string{"description": strings.Repeat("d", MaxValueBytes+1)} }},
		{"ostemplate", func(s *Spec) { s.OSTemplate = strings.Repeat("t", MaxValueBytes+1) }},
	}
	if err := Limits(validSpec()); err != nil {
		t.Fatalf("a valid spec: %v", err)
	}
	for _, tt := range tests {
		s := validSpec()
		tt.edit(&s)
		err := Limits(s)
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%s: err = %v, want a *FieldError", tt.field, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.field+": ") {
			t.Errorf("%s: err = %v, does not name the field", tt.field, err)
		}
		if len(err.Error()) > 1<<10 {
			t.Errorf("%s: the error is %d bytes long: it echoes the input", tt.field, len(err.Error()))
		}
	}
}

func TestAbsentNeedsNoKind(t *testing.T) {
	if _, err := Normalise(Spec{Host: "pve1", VMID: 101, State: Absent}); err != nil {
		t.Fatalf("absent spec without kind rejected: %v", err)
	}
}
