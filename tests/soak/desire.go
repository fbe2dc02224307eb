package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// lxcTemplate is the container template every container is created from.
const lxcTemplate = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"

// guest is one VMID of a host and the desired state the soak wants for it.
type guest struct {
	host *host
	vmid int
	kind desired.Kind

	mu   sync.Mutex
	spec *desired.Spec // nil: never sent
	// version counts changes of spec; confirmed is the version felhomctl
	// apply last got accepted.
	version, confirmed int
	// changedAt is when spec last changed.
	changedAt time.Time
}

// newGuests puts guests on the hosts: about two thirds exist on the
// simulator at the start (with a desired state that matches them or asks
// for a change), the rest are VMIDs with nothing on them yet.
func newGuests(rng *rand.Rand, hosts []*host, total int) ([]*guest, error) {
	var out []*guest
	for i := range total {
		h := hosts[i%len(hosts)]
		g := &guest{host: h, vmid: 1000 + i, kind: desired.QEMU}
		if rng.IntN(5) == 0 {
			g.kind = desired.LXC
		}
		if rng.IntN(3) < 2 {
			mem := 256 * (1 + rng.IntN(8))
			cores := 1 + rng.IntN(4)
			status := "stopped"
			if rng.IntN(2) == 0 {
				status = "running"
			}
			pg := pvesim.Guest{VMID: g.vmid, Name: fmt.Sprintf("g%d", g.vmid), Status: status, MemoryMiB: mem, Cores: cores}
			var err error
			if g.kind == desired.LXC {
				pg.Disks = map[string]string{"rootfs": fmt.Sprintf("local-lvm:vm-%d-disk-0,size=4G", g.vmid)}
				err = h.sim.AddContainer(pg)
			} else {
				pg.Disks = map[string]string{"scsi0": fmt.Sprintf("local-lvm:vm-%d-disk-0,size=8G", g.vmid)}
				err = h.sim.AddVM(pg)
			}
			if err != nil {
				return nil, err
			}
			spec := baseSpec(g, desired.State(status), mem, cores)
			g.setSpec(&spec)
		}
		out = append(out, g)
	}
	return out, nil
}

// baseSpec is a full desired state of g: a VM with an 8 GiB disk, or a
// container with a 4 GiB root file system.
func baseSpec(g *guest, state desired.State, memMiB, cores int) desired.Spec {
	s := desired.Spec{Host: g.host.id, VMID: g.vmid, Kind: g.kind, Name: fmt.Sprintf("g%d", g.vmid), State: state,
		Memory: fmt.Sprint(memMiB), Cores: cores}
	if g.kind == desired.LXC {
		s.Disks = map[string]string{"rootfs": fmt.Sprintf("local-lvm:%d", 4)}
		s.OSTemplate = lxcTemplate
	} else {
		s.Disks = map[string]string{"scsi0": fmt.Sprintf("local-lvm:%d", 8)}
	}
	return s
}

func (g *guest) setSpec(s *desired.Spec) {
	g.spec = s
	g.version++
	g.changedAt = time.Now()
}

// change picks a random change of g's desired state and returns its kind.
func (g *guest) change(rng *rand.Rand) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.spec == nil || g.spec.State == desired.Absent {
		st := desired.Running
		if rng.IntN(3) == 0 {
			st = desired.Stopped
		}
		s := baseSpec(g, st, 256*(1+rng.IntN(8)), 1+rng.IntN(4))
		g.setSpec(&s)
		return "create"
	}
	s := *g.spec
	s.Disks = cloneMap(s.Disks)
	var what string
	switch n := rng.IntN(100); {
	case n < 40:
		what = "resize"
		// Memory or cores: disks are not grown by the agent yet (a larger
		// disk in the spec is a conflict), and never shrunk.
		if rng.IntN(2) == 0 {
			s.Memory = fmt.Sprint(256 * (1 + rng.IntN(8)))
		} else {
			s.Cores = 1 + rng.IntN(4)
		}
	case n < 57:
		what, s.State = "stop", desired.Stopped
	case n < 75:
		what, s.State = "start", desired.Running
	default:
		what = "absent"
		s = desired.Spec{Host: g.host.id, VMID: g.vmid, State: desired.Absent}
	}
	g.setSpec(&s)
	return what
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// applier sends desired states with the real `felhomctl apply`, one run at
// a time per host.
type applier struct {
	ctl     string // felhomctl binary
	address string // the soak's own way to the Temporal server
	dir     string

	mu                            sync.Mutex
	runs, sent, accepted, refused int
	failedRuns                    int
}

// applyResult is one guest's line of `felhomctl apply --output json`.
type applyResult struct {
	Host       string `json:"host"`
	VMID       int    `json:"vmid"`
	Accepted   bool   `json:"accepted"`
	Generation int    `json:"generation"`
	Error      string `json:"error"`
}

// apply sends every unconfirmed desired state of guests (one host's) in one
// `felhomctl apply` run and marks those accepted as confirmed.
func (a *applier) apply(ctx context.Context, hostID string, guests []*guest, timeout time.Duration) error {
	type sent struct {
		g       *guest
		version int
	}
	var batch []sent
	var specs []desired.Spec
	for _, g := range guests {
		g.mu.Lock()
		if g.spec != nil && g.confirmed != g.version {
			batch = append(batch, sent{g, g.version})
			specs = append(specs, *g.spec)
		}
		g.mu.Unlock()
	}
	if len(batch) == 0 {
		return nil
	}
	data, err := yaml.Marshal(struct {
		Guests []desired.Spec `yaml:"guests"`
	}{specs})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.runs++
	file := filepath.Join(a.dir, fmt.Sprintf("%s-%d.yaml", hostID, a.runs))
	a.sent += len(batch)
	a.mu.Unlock()
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return err
	}
	defer os.Remove(file)
	cmd := exec.CommandContext(ctx, a.ctl, "--address", a.address, "--namespace", "default", "--disable-config-file",
		"--output", "json", "--command-timeout", timeout.String(), "apply", "-f", file)
	out, err := cmd.Output()
	var res struct {
		Results []applyResult `json:"results"`
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		a.mu.Lock()
		a.failedRuns++
		a.mu.Unlock()
		if err == nil {
			err = jerr
		}
		return fmt.Errorf("felhomctl apply (%d specs of %s): %w", len(batch), hostID, err)
	}
	byVMID := map[int]applyResult{}
	for _, r := range res.Results {
		byVMID[r.VMID] = r
	}
	for _, s := range batch {
		r, ok := byVMID[s.g.vmid]
		a.mu.Lock()
		switch {
		case ok && r.Accepted:
			a.accepted++
		case ok:
			a.refused++
		}
		a.mu.Unlock()
		if ok && r.Accepted {
			s.g.mu.Lock()
			if s.g.confirmed < s.version {
				s.g.confirmed = s.version
			}
			s.g.mu.Unlock()
		}
	}
	return nil
}
