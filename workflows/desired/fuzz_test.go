package desired

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzNormalise decodes a spec and an observed guest as a workflow receives
// them (JSON, from the hub or the host) and normalises and plans them. It
// never panics; an accepted spec stays within the limits, normalises to
// itself again, and every disk it names has a size Proxmox can take.
func FuzzNormalise(f *testing.F) {
	f.Add([]byte(`{"host":"pve1","vmid":101,"kind":"qemu","state":"running","memory":"2GiB","cores":2,"disks":{"scsi0":"local-lvm:32"},"tags":["Web","prod"]}`),
		[]byte(`{"exists":true,"kind":"qemu","status":"stopped","memory_mib":1024,"cores":1,"disks":{"scsi0":"local-lvm:vm-101-disk-0,size=64G","scsi1":"local:1"}}`))
	f.Add([]byte(`{"host":"pve1","vmid":102,"kind":"lxc","state":"stopped","memory_mib":-4,"disks":{"rootfs":"local:x,size=1e300T","mp0":"local:0"},"ostemplate":"local:vztmpl/d.tar.zst","options":{"net0":"name=eth0,bridge=vmbr0"}}`),
		[]byte(`{"exists":true,"kind":"lxc","disks":{"rootfs":"local:subvol-102-disk-0,size=NaNG"},"tags":["a;b"]}`))
	f.Add([]byte(`{"host":"pve1","vmid":"101","state":"absent"}`), []byte(`{}`))
	f.Add([]byte(`{"host":"pve1","vmid":103,"kind":"qemu","state":"running","memory":"99999999999999999999GiB","options":{"Net 0":"x","description":""}}`), []byte(`null`))
	f.Add([]byte(`[]`), []byte(`{"exists":true,"disks":{"scsi0":"nocolon"}}`))
	f.Fuzz(func(t *testing.T, specJSON, obsJSON []byte) {
		var spec Spec
		if json.Unmarshal(specJSON, &spec) != nil {
			return
		}
		if err := Limits(spec); err != nil {
			if len(err.Error()) > 64<<10 {
				t.Errorf("the limits' error is %d bytes", len(err.Error()))
			}
			return
		}
		norm, err := Normalise(spec)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.Contains(line, ": ") {
					t.Errorf("problem %q names no field", line)
				}
			}
			return
		}
		if norm.MemoryMiB > MaxMemoryMiB || (norm.MemoryMiB < 16 && norm.MemoryMiB != 0) || norm.Cores < 0 || norm.Cores > 8192 {
			t.Errorf("accepted memory %d MiB, %d cores", norm.MemoryMiB, norm.Cores)
		}
		if err := Limits(norm); err != nil {
			t.Errorf("a spec within the limits is not, normalised: %v", err)
		}
		for key, vol := range norm.Disks {
			v, err := ParseVolume(vol)
			if err != nil || v.SizeGiB <= 0 || v.SizeGiB > MaxDiskGiB {
				t.Errorf("accepted disk %s %q: %+v, %v", key, vol, v, err)
			}
		}
		again, err := Normalise(norm)
		if err != nil {
			t.Fatalf("a normalised spec is refused: %v", err)
		}
		if a, b := mustJSON(t, norm), mustJSON(t, again); a != b {
			t.Errorf("Normalise is not idempotent:\n%s\n%s", a, b)
		}
		var obs Observed
		if json.Unmarshal(obsJSON, &obs) != nil {
			return
		}
		for _, destructive := range []Classifier{func(string) bool { return true }, func(string) bool { return false }} {
			plan := MakeWithShrink(norm, obs, destructive)
			for _, a := range plan.Actions {
				if a.Host != norm.Host || a.Op == "" {
					t.Errorf("plan action %+v is not for %s", a, norm.Host)
				}
			}
		}
	})
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
