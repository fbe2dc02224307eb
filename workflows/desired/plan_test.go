package desired

import (
	"reflect"
	"testing"
)

// verbClassifier is a stand-in for the gate's classifier with no provenance:
// only the data-destroying ops are destructive.
func verbClassifier(op string) bool {
	return op == OpDestroy || op == OpDetach || op == OpShrink
}

func ops(p Plan) []string {
	var out []string
	for _, a := range p.Actions {
		out = append(out, a.Op)
	}
	return out
}

func TestMake(t *testing.T) {
	base := func() Spec {
		s, err := Normalise(validSpec())
		if err != nil {
			panic(err)
		}
		return s
	}
	same := Observed{Exists: true, Kind: QEMU, Status: "running", Name: "web", MemoryMiB: 2048, Cores: 2,
		Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=32G"}, Tags: []string{"web", "prod"}}
	with := func(edit func(*Observed)) Observed {
		o := same
		o.Disks = map[string]string{"scsi0": same.Disks["scsi0"]}
		edit(&o)
		return o
	}
	spec := func(edit func(*Spec)) Spec { s := base(); edit(&s); return s }

	tests := []struct {
		name       string
		spec       Spec
		obs        Observed
		wantOps    []string
		wantParams map[string]any // params of the first action
		wantNotes  int
	}{
		{"converged", base(), same, nil, nil, 0},
		{"missing, running", base(), Observed{}, []string{OpCreate, OpStart}, nil, 0},
		{"missing, stopped", spec(func(s *Spec) { s.State = Stopped }), Observed{}, []string{OpCreate}, nil, 0},
		{"absent and gone", spec(func(s *Spec) { s.State = Absent }), Observed{}, nil, nil, 0},
		{"absent, running", spec(func(s *Spec) { s.State = Absent }), same, []string{OpDestroy}, map[string]any{"kind": "qemu"}, 0},
		{"stopped guest", base(), with(func(o *Observed) { o.Status = "stopped" }), []string{OpStart}, map[string]any{}, 0},
		{"stop a running guest", spec(func(s *Spec) { s.State = Stopped }), same, []string{OpShutdown}, nil, 0},
		{"memory in MiB", base(), with(func(o *Observed) { o.MemoryMiB = 1024 }), []string{OpConfig}, map[string]any{"memory": 2048}, 0},
		{"non-aligned memory converges", spec(func(s *Spec) { s.MemoryMiB = 2049 }), with(func(o *Observed) { o.MemoryMiB = 2049 }), nil, nil, 0},
		{"config before start", base(), with(func(o *Observed) { o.Status = "stopped"; o.Cores = 1 }), []string{OpConfig, OpStart}, map[string]any{"cores": 2}, 0},
		{"tags in another order", base(), with(func(o *Observed) { o.Tags = []string{"prod", "web", "web"} }), nil, nil, 0},
		{"tags differ", base(), with(func(o *Observed) { o.Tags = nil }), []string{OpConfig}, map[string]any{"tags": "prod;web"}, 0},
		{"rename", base(), with(func(o *Observed) { o.Name = "old" }), []string{OpConfig}, map[string]any{"name": "web"}, 0},
		{"extra disk is detached", base(), with(func(o *Observed) { o.Disks["scsi1"] = "local-lvm:vm-101-disk-1,size=8G" }), []string{OpDetach}, map[string]any{"disk": "scsi1"}, 0},
		{"new disk is added", spec(func(s *Spec) { s.Disks["scsi1"] = "local-lvm:8" }), same, []string{OpConfig}, map[string]any{"scsi1": "local-lvm:8"}, 0},
		{"smaller disk is noted, not planned", spec(func(s *Spec) { s.Disks["scsi0"] = "local-lvm:16" }), same, nil, nil, 1},
		{"the steps beside a smaller disk still run", spec(func(s *Spec) { s.Disks["scsi0"] = "local-lvm:16"; s.Cores = 4 }), with(func(o *Observed) { o.Status = "stopped" }),
			[]string{OpConfig, OpStart}, map[string]any{"cores": 4}, 1},
		{"larger disk is noted", spec(func(s *Spec) { s.Disks["scsi0"] = "local-lvm:64" }), same, nil, nil, 1},
		{"kind mismatch is noted", spec(func(s *Spec) { s.Kind = LXC }), same, nil, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Make(tt.spec, tt.obs, verbClassifier)
			if !reflect.DeepEqual(ops(p), tt.wantOps) {
				t.Fatalf("ops = %v, want %v (plan %+v)", ops(p), tt.wantOps, p)
			}
			if len(p.Notes) != tt.wantNotes {
				t.Errorf("notes = %q, want %d", p.Notes, tt.wantNotes)
			}
			for _, a := range p.Actions {
				if a.Host != "pve1" || a.Guest != "101" {
					t.Errorf("action %s targets %s/%s, want pve1/101", a.Op, a.Host, a.Guest)
				}
				if a.Destructive != verbClassifier(a.Op) {
					t.Errorf("action %s labelled destructive=%v", a.Op, a.Destructive)
				}
			}
			if tt.wantParams != nil && !reflect.DeepEqual(p.Actions[0].Params, tt.wantParams) {
				t.Errorf("params = %v, want %v", p.Actions[0].Params, tt.wantParams)
			}
		})
	}
}

// Runs recorded before a larger disk became a note replay the plans they
// made: MakeWithShrink still plans the shrink.
func TestMakeWithShrinkPlansTheShrinkAsRecorded(t *testing.T) {
	s, err := Normalise(validSpec())
	if err != nil {
		t.Fatal(err)
	}
	s.Disks["scsi0"] = "local-lvm:16"
	obs := Observed{Exists: true, Kind: QEMU, Status: "running", Name: "web", MemoryMiB: 2048, Cores: 2,
		Disks: map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=32G"}, Tags: []string{"web", "prod"}}
	p := MakeWithShrink(s, obs, verbClassifier)
	if !reflect.DeepEqual(ops(p), []string{OpShrink}) || len(p.Notes) != 0 {
		t.Fatalf("plan = %+v, want one disk.shrink and no note", p)
	}
	if want := map[string]any{"disk": "scsi0", "size_gib": 16}; !reflect.DeepEqual(p.Actions[0].Params, want) || !p.Actions[0].Destructive {
		t.Errorf("action = %+v, want a destructive shrink with %v", p.Actions[0], want)
	}
}
