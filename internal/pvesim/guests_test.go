package pvesim_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

func TestAddGuestValidation(t *testing.T) {
	srv, _ := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
	tests := []struct {
		name string
		add  func() error
	}{
		{"vmid below 100", func() error { return srv.AddVM(pvesim.Guest{VMID: 99}) }},
		{"taken by a VM", func() error { return srv.AddContainer(pvesim.Guest{VMID: 101}) }},
		{"bad status", func() error { return srv.AddVM(pvesim.Guest{VMID: 102, Status: "paused"}) }},
		{"container disk key on a VM", func() error {
			return srv.AddVM(pvesim.Guest{VMID: 103, Disks: map[string]string{"rootfs": "local-lvm:vm-103-disk-0"}})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.add(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestOutOfBandChangesShowInTheAPI(t *testing.T) {
	srv, client := newSim(t, pvesim.Config{})
	mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101, Status: "running"}))
	before := vmOf(t, client, 101)

	if err := srv.SetStatus(101, "stopped"); err != nil {
		t.Fatal(err)
	}
	if err := srv.SetLock(101, "backup"); err != nil {
		t.Fatal(err)
	}
	after := vmOf(t, client, 101)
	if after.Status != "stopped" || after.Lock != "backup" || after.VirtualMachineConfig.Lock != "backup" {
		t.Fatalf("status %q lock %q/%q", after.Status, after.Lock, after.VirtualMachineConfig.Lock)
	}
	if after.VirtualMachineConfig.Digest == before.VirtualMachineConfig.Digest {
		t.Error("the lock is part of the config but the digest did not change")
	}
	if err := srv.SetLock(101, ""); err != nil {
		t.Fatal(err)
	}
	if vm := vmOf(t, client, 101); vm.Lock != "" {
		t.Errorf("lock %q after clearing", vm.Lock)
	}
	for _, err := range []error{srv.SetStatus(999, "running"), srv.SetLock(999, "backup"), srv.SetStatus(101, "paused")} {
		if err == nil {
			t.Error("out-of-band change of a missing guest or to a bad status accepted")
		}
	}
	if gs := srv.Guests(); len(gs) != 1 || gs[0].VMID != 101 || gs[0].Kind != pvesim.KindQEMU {
		t.Errorf("Guests() = %+v", gs)
	}
}

func TestLoggerGetsOneLinePerRequest(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, client := newSim(t, pvesim.Config{Logger: logger})
	if _, err := client.Version(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); !strings.Contains(got, "path=/version") || !strings.Contains(got, "status=200") {
		t.Fatalf("log %q", got)
	}
}
