package pvesim_test

import (
	"context"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// With StrictPVE a value pve's schema refuses is a 400 naming the field,
// before anything happens.
func TestStrictValidatesValues(t *testing.T) {
	tests := []struct {
		name, method, path string
		form               url.Values
		field, want        string
	}{
		{"qemu name", "POST", "/nodes/pve1/qemu", url.Values{"vmid": {"150"}, "name": {"bad_name"}},
			"name", "invalid format - value does not look like a valid DNS name"},
		{"qemu net", "POST", "/nodes/pve1/qemu", url.Values{"vmid": {"150"}, "net0": {"garbage"}},
			"net0", "invalid format - format error\nnet0.model: value 'garbage' does not have a value in the enumeration"},
		{"lxc hostname", "POST", "/nodes/pve1/lxc", url.Values{"vmid": {"150"}, "hostname": {"a_b"}, "ostemplate": {"local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"}},
			"hostname", "invalid format - value does not look like a valid DNS name"},
		{"config onboot", "PUT", "/nodes/pve1/qemu/101/config", url.Values{"onboot": {"yes"}},
			"onboot", "type check ('boolean') failed - got 'yes'"},
		{"config ostype", "PUT", "/nodes/pve1/qemu/101/config", url.Values{"ostype": {"linux"}},
			"ostype", "value 'linux' does not have a value in the enumeration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newSim(t, pvesim.Config{StrictPVE: true})
			mustAdd(t, srv.AddVM(pvesim.Guest{VMID: 101}))
			got := raw(t, srv, tt.method, tt.path, tt.form, "")
			if got.Status != "400 Parameter verification failed." {
				t.Fatalf("status %q, want 400", got.Status)
			}
			if !strings.Contains(string(got.Body), `"`+tt.field+`":`) || !strings.Contains(strings.ReplaceAll(string(got.Body), `\n`, "\n"), tt.want) {
				t.Fatalf("body %s, want %s: %s", got.Body, tt.field, tt.want)
			}
			if _, ok := srv.Guest(150); ok {
				t.Fatal("a refused create made a guest")
			}
			if len(srv.Requests()) != 1 || srv.Requests()[0].Status != 400 {
				t.Fatalf("requests %+v", srv.Requests())
			}
		})
	}
}

// A create writes its parameters and what qemu-server / pve-container add,
// not defaults of the simulator's own.
func TestStrictCreateWritesWhatPVEWrites(t *testing.T) {
	_, client := newSim(t, pvesim.Config{StrictPVE: true})
	qemu, err := postTask(t, client, "/nodes/pve1/qemu", map[string]any{"vmid": 150, "name": "app", "memory": "1024",
		"scsi0": "local-lvm:8", "net0": "virtio,bridge=vmbr0"})
	if err != nil {
		t.Fatal(err)
	}
	lxc, err := postTask(t, client, "/nodes/pve1/lxc", map[string]any{"vmid": 250,
		"ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst", "rootfs": "local-lvm:8"})
	if err != nil {
		t.Fatal(err)
	}
	finished(t, qemu)
	finished(t, lxc)
	var conf map[string]any
	if err := client.Get(context.Background(), "/nodes/pve1/qemu/150/config", &conf); err != nil {
		t.Fatal(err)
	}
	keys := sortedKeys(conf)
	if want := []string{"boot", "digest", "memory", "meta", "name", "net0", "scsi0", "smbios1", "vmgenid"}; !slices.Equal(keys, want) {
		t.Fatalf("VM config keys %v, want %v", keys, want)
	}
	if conf["boot"] != "order=scsi0;net0" {
		t.Fatalf("boot %v", conf["boot"])
	}
	if err := client.Get(context.Background(), "/nodes/pve1/lxc/250/config", &conf); err != nil {
		t.Fatal(err)
	}
	if _, ok := conf["cores"]; ok || conf["unprivileged"] != float64(1) || conf["hostname"] != "CT250" || conf["memory"] != float64(512) {
		t.Fatalf("container config %v: want no cores, unprivileged 1 (the create default), hostname CT250, memory 512", conf)
	}
}

func sortedKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
