package pvesim_test

import (
	"context"
	"fmt"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// A simulated node driven with the real go-proxmox client: start a VM,
// wait for its task, and prove from the request record that the start was
// sent once.
func Example() {
	srv, err := pvesim.Start(pvesim.Config{Node: "pve1", TaskDuration: 10 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	if err := srv.AddVM(pvesim.Guest{VMID: 101, Name: "web", MemoryMiB: 2048, Cores: 2}); err != nil {
		panic(err)
	}

	client := proxmox.NewClient(srv.URL(),
		proxmox.WithHTTPClient(srv.HTTPClient()),
		proxmox.WithAPIToken(srv.TokenID(), srv.TokenSecret()))
	ctx := context.Background()
	node, err := client.Node(ctx, "pve1")
	if err != nil {
		panic(err)
	}
	vm, err := node.VirtualMachine(ctx, 101)
	if err != nil {
		panic(err)
	}
	task, err := vm.Start(ctx)
	if err != nil {
		panic(err)
	}
	if err := task.Wait(ctx, 5*time.Millisecond, 5*time.Second); err != nil {
		panic(err)
	}
	g, _ := srv.Guest(101)
	fmt.Println(task.Type, task.ExitStatus, g.Status)
	fmt.Println(len(srv.RequestsMatching("POST", "/nodes/*/qemu/101/status/start")), "start sent")
	// Output:
	// qmstart OK running
	// 1 start sent
}

// Faults reproduce what a busy or flaky Proxmox does.
func ExampleServer_Inject() {
	srv, err := pvesim.Start(pvesim.Config{})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	_ = srv.AddVM(pvesim.Guest{VMID: 101})
	srv.Inject(pvesim.Fault{Method: "POST", Path: "/nodes/*/qemu/*/status/start",
		Kind: pvesim.FaultHTTPError, Status: 500, Message: "VM is locked (backup)"})

	client := proxmox.NewClient(srv.URL(), proxmox.WithHTTPClient(srv.HTTPClient()),
		proxmox.WithAPIToken(srv.TokenID(), srv.TokenSecret()))
	vm := &proxmox.VirtualMachine{}
	vm.New(client, "pve1", 101)
	_, err = vm.Start(context.Background())
	fmt.Println(err)
	// Output:
	// 500 VM is locked (backup)
}
