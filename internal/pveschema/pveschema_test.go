package pveschema

import "testing"

func TestCheck(t *testing.T) {
	tests := []struct {
		kind, key, value string
		want             string
	}{
		{QEMU, "name", "web-01.example", ""},
		{QEMU, "name", "bad_name", "invalid format - value does not look like a valid DNS name"},
		{QEMU, "name", "-web", "invalid format - value does not look like a valid DNS name"},
		{LXC, "hostname", "bad_name", "invalid format - value does not look like a valid DNS name"},
		{QEMU, "net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1", ""},
		{QEMU, "net0", "model=e1000,bridge=vmbr0,tag=20", ""},
		{QEMU, "net0", "virtio,bridge=vmbr0", ""},
		{QEMU, "net0", "garbage", "invalid format - format error\nnet0.model: value 'garbage' does not have a value in the enumeration " +
			"'e1000, e1000-82540em, e1000-82544gc, e1000-82545em, e1000e, i82551, i82557b, i82559er, ne2k_isa, ne2k_pci, pcnet, rtl8139, virtio, vmxnet3'"},
		{QEMU, "net0", "bridge=vmbr0", "invalid format - format error\nnet0.model: property is missing and it is not optional"},
		{QEMU, "net1", "virtio,colour=red", "invalid format - invalid key in comma-separated list property: colour"},
		{QEMU, "net0", "virtio,tag=5000", "invalid format - format error\nnet0.tag: value must have a maximum value of 4094"},
		{QEMU, "net0", "virtio=not-a-mac", "invalid format - format error\nnet0.macaddr: invalid format - value does not look like a valid unicast MAC address"},
		{QEMU, "net0", "virtio=01:24:11:00:00:01", "invalid format - format error\nnet0.macaddr: invalid format - value does not look like a valid unicast MAC address"},
		{QEMU, "net0", "virtio,bridge=vm br0", "invalid format - format error\nnet0.bridge: invalid format - invalid bridge ID 'vm br0'"},
		{LXC, "net0", "name=eth0,bridge=vmbr0,ip=dhcp", ""},
		{LXC, "net0", "bridge=vmbr0,ip=dhcp", "invalid format - format error\nnet0.name: property is missing and it is not optional"},
		{LXC, "net0", "garbage", "invalid format - value without key, but schema does not define a default key"},
		{QEMU, "ostype", "l26", ""},
		{QEMU, "ostype", "linux", "value 'linux' does not have a value in the enumeration 'other, wxp, w2k, w2k3, w2k8, wvista, win7, win8, win10, win11, l24, l26, solaris'"},
		{LXC, "ostype", "l26", "value 'l26' does not have a value in the enumeration 'debian, devuan, ubuntu, centos, fedora, opensuse, archlinux, alpine, gentoo, nixos, unmanaged'"},
		{QEMU, "onboot", "1", ""},
		{QEMU, "onboot", "yes", "type check ('boolean') failed - got 'yes'"},
		{QEMU, "sockets", "0", "value must have a minimum value of 1"},
		{QEMU, "sockets", "two", "type check ('integer') failed - got 'two'"},
		{LXC, "cores", "9000", "value must have a maximum value of 8192"},
		{QEMU, "tags", "prod;web", ""},
		{QEMU, "tags", "prod;we b!", "invalid format - invalid characters in tag"},
		{QEMU, "scsihw", "virtio-scsi-single", ""},
		{QEMU, "args", "-anything", ""}, // not checked here
	}
	for _, tt := range tests {
		t.Run(tt.kind+" "+tt.key+"="+tt.value, func(t *testing.T) {
			if got := Check(tt.kind, tt.key, tt.value); got != tt.want {
				t.Fatalf("Check = %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestCheckAll(t *testing.T) {
	got := Problems(CheckAll(QEMU, map[string]string{"name": "ok", "onboot": "yes", "ostype": "l26", "net0": "garbage,bridge=vmbr0"}))
	if len(got) != 2 || got[0][:5] != "net0:" || got[1] != "onboot: type check ('boolean') failed - got 'yes'" {
		t.Fatalf("Problems = %q", got)
	}
}
