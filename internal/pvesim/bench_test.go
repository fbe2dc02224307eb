package pvesim_test

import (
	"context"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// BenchmarkStartStopRoundTrip measures a POST + task wait through go-proxmox.
func BenchmarkStartStopRoundTrip(b *testing.B) {
	srv, err := pvesim.Start(pvesim.Config{TaskDuration: 0})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	if err := srv.AddVM(pvesim.Guest{VMID: 101}); err != nil {
		b.Fatal(err)
	}
	client := newClient(srv, srv.TokenID(), srv.TokenSecret())
	node, err := client.Node(context.Background(), "pve1")
	if err != nil {
		b.Fatal(err)
	}
	vm, err := node.VirtualMachine(context.Background(), 101)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		act := vm.Start
		if i%2 == 1 {
			act = vm.Stop
		}
		task, err := act(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := task.Wait(ctx, time.Millisecond, 5*time.Second); err != nil || task.ExitStatus != "OK" {
			b.Fatalf("task %q: %v", task.ExitStatus, err)
		}
	}
}

// BenchmarkClusterResources1000 measures the one-call drift listing over a
// node with a thousand guests.
func BenchmarkClusterResources1000(b *testing.B) {
	srv, err := pvesim.Start(pvesim.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	for id := 100; id < 1100; id++ {
		if err := srv.AddVM(pvesim.Guest{VMID: id, Name: "g", MemoryMiB: 1024, Tags: "a;b"}); err != nil {
			b.Fatal(err)
		}
	}
	client := newClient(srv, srv.TokenID(), srv.TokenSecret())
	cluster, err := client.Cluster(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		rs, err := cluster.Resources(context.Background(), "vm")
		if err != nil || len(rs) != 1000 {
			b.Fatalf("%d resources: %v", len(rs), err)
		}
	}
}
