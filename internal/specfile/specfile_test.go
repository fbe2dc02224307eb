package specfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Bad desired state is refused before anything is sent, every problem of
// every file in one run, each naming the file, the document or guest, and
// the field; nothing of a refused directory is kept.
func TestLoadSpecsRefusesBadInputNamingEachProblem(t *testing.T) {
	good := "host: pve1\nvmid: 101\nkind: qemu\nstate: running\n"
	tests := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"wrong types", map[string]string{"a.yaml": "host: pve1\nvmid: abc\nkind: qemu\nstate: running\ncores: [1]\n"},
			[]string{"a.yaml: line 2: cannot unmarshal !!str `abc` into int", "line 5: cannot unmarshal !!seq into int"}},
		{"a type error does not hide the next document", map[string]string{"a.yaml": "host: pve1\nvmid: x\n---\nhost: pve1\nvmid: 5\nkind: qemu\nstate: running\n"},
			[]string{"a.yaml, document 1: line 2: cannot unmarshal", "a.yaml, document 2: guest pve1/5: vmid: 5 is outside"}},
		{"unknown fields", map[string]string{"a.yaml": good + "memroy: 2G\ndisks: {scsi0: 'local:1'}\nguests_: []\n"},
			[]string{"line 5: field memroy not found", "line 7: field guests_ not found"}},
		{"negative and huge sizes", map[string]string{"a.yaml": good + "memory: -1\ncores: -2\ndisks: {scsi0: 'local-lvm:99999999', scsi1: 'local:x,size=1e999T'}\n"},
			[]string{"memory: \"-1\" is not a whole number", "cores: -2 is outside 1-8192", "disks.scsi0: 99999999 GiB is more than 1048576 GiB", "disks.scsi1:"}},
		{"huge memory", map[string]string{"a.yaml": good + "memory: 5000GiB\n"}, []string{"memory: 5120000 MiB is more than the 4194304 MiB (4 TiB)"}},
		{"duplicate VMIDs in one directory", map[string]string{"a.yaml": good, "b.yml": good, "c.yaml": "guests:\n- " + strings.ReplaceAll(good, "\n", "\n  ")},
			[]string{"b.yml: guest pve1/101: already given in a.yaml", "c.yaml, guests[0]: guest pve1/101: already given in a.yaml"}},
		{"not YAML", map[string]string{"a.yaml": "host: [pve1\n", "b.yaml": "vmid: 1\n"},
			[]string{"a.yaml: yaml: line", "b.yaml: guest ?/1: host:"}},
		{"not a mapping", map[string]string{"a.yaml": "- 1\n- 2\n"}, []string{"a.yaml: line 1: cannot unmarshal !!seq into a guest or a guests: list"}},
		{"too many options", map[string]string{"a.yaml": good + "options:\n" + func() string {
			var b strings.Builder
			for i := range 300 {
				fmt.Fprintf(&b, "  usb%d: host=1-1\n", i)
			}
			return b.String()
		}()}, []string{"options: 300 are more than 256"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			specs, err := Load(dir)
			if err == nil {
				t.Fatalf("accepted: %+v", specs)
			}
			msg := strings.ReplaceAll(err.Error(), dir+"/", "")
			if !strings.HasPrefix(msg, "invalid desired state, nothing was sent") {
				t.Errorf("error = %q, want it to say nothing was sent", msg)
			}
			for _, want := range tt.want {
				if !strings.Contains(msg, want) {
					t.Errorf("error = %s\nwant it to contain %q", msg, want)
				}
			}
		})
	}
}

func TestLoadSpecsRefusesAHugeFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.yaml")
	if err := os.WriteFile(path, []byte("# "+strings.Repeat("x", MaxFileSize)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "larger than 16 MiB") {
		t.Errorf("error = %v, want the size refused", err)
	}
}

// FuzzDecode reads arbitrary desired-state files as felhomctl plan and
// apply do: never a panic, and every problem names the file it is in.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("host: pve1\nvmid: 101\nkind: qemu\nstate: running\nmemory: 2GiB\ndisks: {scsi0: 'local-lvm:32'}\ntags: [prod]\n"))
	f.Add([]byte("guests:\n- {host: pve1, vmid: 101, kind: lxc, state: stopped, disks: {rootfs: 'local:4'}, ostemplate: 'local:vztmpl/x.tar.zst', options: {net0: 'name=eth0,bridge=vmbr0'}}\n- {host: pve1, vmid: 101, state: absent}\n"))
	f.Add([]byte("host: pve1\nvmid: abc\n---\nhost: pve1\nvmid: 102\nkind: qemu\nstate: running\nmemroy: 1\n---\n- 1\n"))
	f.Add([]byte("a: &a [*a, *a]\nb: &b [*a, *a]\nhost: *b\n"))
	f.Add([]byte("host: pve1\nvmid: 103\nkind: qemu\nstate: running\nmemory: 99999999999999999999GiB\ndisks: {scsi0: 'local:x,size=NaN'}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		specs, problems := Decode(data, "f.yaml")
		_, err := Check(specs, problems)
		if err == nil {
			return
		}
		lines := strings.Split(err.Error(), "\n")
		for _, line := range lines[1:] {
			if line = strings.TrimPrefix(line, "  "); !strings.HasPrefix(line, "f.yaml") {
				t.Errorf("problem %q does not name its file", line)
			}
		}
	})
}
