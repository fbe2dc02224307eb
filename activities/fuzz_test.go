package activities

import (
	"encoding/json"
	"strings"
	"testing"
)

// decodeData decodes an API answer's body into v as go-proxmox does: the
// value under "data".
func decodeData(body []byte, v any) error {
	var datakey map[string]json.RawMessage
	if err := json.Unmarshal(body, &datakey); err != nil {
		return err
	}
	return json.Unmarshal(datakey["data"], v)
}

// FuzzProxmoxAnswers feeds arbitrary bodies to the agent's readers of
// Proxmox answers (a guest's config and status, the node's guest listing, a
// task's status and the UPID a mutation answers with): never a panic, and
// what they make of it stays within what the planner can use.
func FuzzProxmoxAnswers(f *testing.F) {
	f.Add([]byte(`{"data":{"name":"web","memory":"current=2048,foo=1","cores":2,"scsi0":"local-lvm:vm-101-disk-0,size=32G","ide2":"none,media=cdrom","tags":"b;a,A c","protection":1,"lock":"backup","description":"felhom-instance: x"}}`))
	f.Add([]byte(`{"data":{"hostname":"ct","memory":-5,"rootfs":"local:subvol-102-disk-0,size=8G","mp0":"","net0":{"a":1},"cores":1e300}}`))
	f.Add([]byte(`{"data":[{"type":"qemu","vmid":101,"node":"pve1","name":"web","status":"running","maxmem":2147483648,"maxcpu":2,"tags":"x","template":0},{"type":"lxc","vmid":"1e3","node":"pve1"},{"type":"qemu","vmid":-7,"node":"pve1"},{"type":"qemu","vmid":9223372036854775807,"node":"pve1"},{"type":"storage","node":"pve1"}]}`))
	f.Add([]byte(`{"data":{"status":"stopped","exitstatus":"OK","upid":"UPID:pve1:000A:000B:65F0A000:qmstart:101:felhom@pve!agent:","node":"pve1"}}`))
	f.Add([]byte(`{"data":"UPID:pve1:0:0:zz:qmstart:101:u:"}`))
	f.Add([]byte(`{"data":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, kind := range []string{KindQEMU, KindLXC} {
			var cfg map[string]any
			if decodeData(body, &cfg) == nil && cfg != nil {
				g := normalise(101, kind, cfg)
				for key := range g.Disks {
					if !isDiskKey(kind, key) {
						t.Errorf("%s disk %q is not a disk key", kind, key)
					}
				}
				if g.MemoryMiB == 0 {
					t.Error("memory 0: the default was not applied")
				}
			}
		}
		var rs []clusterResource
		if decodeData(body, &rs) == nil {
			list := guestSummaries(rs, "pve1")
			for i, g := range list {
				if g.VMID < 1 || g.VMID > 999999999 || (g.Kind != KindQEMU && g.Kind != KindLXC) {
					t.Errorf("listed %+v", g)
				}
				if i > 0 && list[i-1].VMID > g.VMID {
					t.Errorf("listing not sorted: %d before %d", list[i-1].VMID, g.VMID)
				}
			}
		}
		var st *taskStatus
		_ = decodeData(body, &st)
		var upid *string
		if decodeData(body, &upid) == nil && upid != nil {
			if info, err := parseUPID(*upid); err == nil && (info.Node == "" || !strings.HasPrefix(*upid, "UPID:")) {
				t.Errorf("UPID %q parsed to %+v", *upid, info)
			}
		}
	})
}
