package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"go.temporal.io/sdk/testsuite"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pvesim"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// Planning is a fixed point: for any guest and any desired state, running
// the plan's actions against the simulator through the real activities and
// planning again gives an empty plan.
func TestApplyingAPlanThenPlanningAgainIsEmpty(t *testing.T) {
	host := uniqueHost("pve-prop")
	// Tasks finish at once: the property is about the plans, not the waits.
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: host})
	must(t, err)
	t.Cleanup(func() { sim.Close() })
	var h *worker.Host
	cfg := agentConfig(t, host, sim, t.TempDir(), newOperatorKey(t, "ed25519").Pub)
	h, err = worker.OpenHost(context.Background(), cfg, testLogger(t), sim.RootCAs(), nil)
	must(t, err)
	defer h.Close()
	acts := h.Activities(nil)

	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(acts)
	observe := func(vmid int) workflows.Observation {
		v, err := env.ExecuteActivity(acts.ObserveGuest, workflows.ObserveInput{VMID: vmid})
		must(t, err)
		var obs workflows.Observation
		must(t, v.Get(&obs))
		return obs
	}
	planFor := func(spec desired.Spec, obs workflows.Observation) desired.Plan {
		return desired.Make(spec, obs.Guest, func(op string) bool {
			return gate.Classify(gate.Action{Op: op, HostID: host, GuestID: fmt.Sprint(spec.VMID)}, gate.Provenance{}, time.Now()) == gate.Destructive
		})
	}

	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	for i := range 40 {
		vmid := 300 + i
		if rng.IntN(3) > 0 { // the guest exists already, in some state
			must(t, sim.AddVM(pvesim.Guest{
				VMID: vmid, Name: fmt.Sprintf("g%d", vmid), Status: pick("running", "stopped"),
				MemoryMiB: 256 * (1 + rng.IntN(16)), Cores: 1 + rng.IntN(8), Tags: pick("", "a", "a;b", "web;prod"),
				Disks: map[string]string{"scsi0": fmt.Sprintf("local-lvm:vm-%d-disk-0,size=8G", vmid)},
			}))
		}
		spec := desired.Spec{
			Host: host, VMID: vmid, Kind: desired.QEMU, Name: pick("", fmt.Sprintf("n%d", vmid)),
			State:  desired.State(pick("running", "stopped")),
			Memory: pick("512", "1GiB", "1536MiB", fmt.Sprintf("%dB", 1<<20*(16+rng.IntN(4081))+rng.IntN(1<<20))),
			Cores:  1 + rng.IntN(8),
			Tags:   []string{pick("a", "b", "web"), pick("prod", "a")},
			Disks:  map[string]string{"scsi0": "local-lvm:8"},
		}
		spec, err := desired.Normalise(spec)
		must(t, err)

		first := planFor(spec, observe(vmid))
		for _, a := range first.Actions {
			if a.Destructive {
				t.Fatalf("guest %d: plan %+v holds a destructive action for a non-destructive spec", vmid, first)
			}
			_, err := env.ExecuteActivity(acts.ExecuteAction, workflows.ExecuteInput{Action: a})
			if err != nil {
				t.Fatalf("guest %d: %s: %v", vmid, a.Op, err)
			}
		}
		if again := planFor(spec, observe(vmid)); !again.Empty() {
			t.Errorf("guest %d: after applying %v, planning again gives %+v", vmid, ops(first), again.Actions)
		}
	}
}

func ops(p desired.Plan) []string {
	var out []string
	for _, a := range p.Actions {
		out = append(out, a.Op)
	}
	return out
}
