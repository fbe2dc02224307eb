package tests

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/worker"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// runJob signs action with key through ssh-keygen and runs it as a signed
// job; it returns the gate's refusal code, "" when the job succeeded.
func runJob(t *testing.T, c client.Client, host string, key operatorKey, action desired.Action) string {
	t.Helper()
	return runJobRecorded(t, c, host, key, action, "")
}

// runJobRecorded is runJob that records the job's history under name
// (unless name is empty; see recordHistory).
func runJobRecorded(t *testing.T, c client.Client, host string, key operatorKey, action desired.Action, name string) string {
	t.Helper()
	op := opFor(workflows.OpTemplate{Op: action.Op, HostID: host, GuestID: action.Guest, Params: action.Params})
	approval := signWithSSHKeygen(t, key, op)
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: workflows.JobWorkflowID(op.Nonce), TaskQueue: workflows.TaskQueue(host),
	}, workflows.SignedJobWorkflow, workflows.SignedJobInput{Host: host, Action: action, Approval: approval})
	must(t, err)
	err = run.Get(context.Background(), nil)
	if name != "" {
		recordHistory(t, c, run.GetID(), "", name)
	}
	if err == nil {
		return ""
	}
	if code := jobRejection(err); code != "" {
		return code
	}
	t.Fatalf("job %s failed: %v", action.Op, err)
	return ""
}

func TestSignerRotationIsRoleScopedAndDurable(t *testing.T) {
	host := uniqueHost("pve-rotate")
	sim := startSim(t, host)
	must(t, sim.AddVolume("local-lvm:vm-901-disk-0", 1<<30))
	must(t, sim.AddVolume("local-lvm:vm-902-disk-0", 1<<30))
	oldOps, recovery, newOps := newOperatorKey(t, "ed25519"), newOperatorKey(t, "ecdsa"), newOperatorKey(t, "rsa")
	dir := t.TempDir()
	sameStores := func(c *worker.Config) {
		c.NonceStore = filepath.Join(dir, "nonces.log")
		c.ProvenanceLedger = filepath.Join(dir, "provenance.log")
		c.PinnedSigners = filepath.Join(dir, "signers.json")
		c.Signers.Recovery = []string{recovery.Pub}
	}
	a := startAgentWith(t, host, sim, sameStores, oldOps.Pub)
	wipe := func(vol, guest string) desired.Action {
		return desired.Action{Op: gate.OpVolumeWipe, Host: host, Guest: guest, Params: map[string]any{"volume": vol}}
	}
	rotate := desired.Action{Op: gate.OpSignersRotate, Host: host, Params: map[string]any{
		"operational": []any{newOps.Pub}, "recovery": []any{recovery.Pub},
	}}

	// The recovery key may rotate signers and nothing else.
	if code := runJob(t, a.client, host, recovery, wipe("local-lvm:vm-901-disk-0", "901")); code != "role_denied" {
		t.Fatalf("recovery key on a volume wipe: %q, want role_denied", code)
	}
	if code := runJobRecorded(t, a.client, host, recovery, rotate, "job-on-host-rotate"); code != "" {
		t.Fatalf("rotation signed by the recovery key refused: %s", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "signers.json")); err != nil {
		t.Fatalf("rotated keys not on disk: %v", err)
	}
	if code := runJob(t, a.client, host, oldOps, wipe("local-lvm:vm-901-disk-0", "901")); code != "unknown_signer" {
		t.Fatalf("old operational key after rotation: %q, want unknown_signer", code)
	}
	if code := runJob(t, a.client, host, newOps, wipe("local-lvm:vm-901-disk-0", "901")); code != "" {
		t.Fatalf("new operational key refused: %s", code)
	}

	// After a restart with the old keys still in the configuration, the
	// rotated set is what the host trusts.
	a.stop()
	a = startAgentWith(t, host, sim, sameStores, oldOps.Pub)
	if code := runJob(t, a.client, host, oldOps, wipe("local-lvm:vm-902-disk-0", "902")); code != "unknown_signer" {
		t.Fatalf("old operational key after restart: %q, want unknown_signer", code)
	}
	if code := runJob(t, a.client, host, newOps, wipe("local-lvm:vm-902-disk-0", "902")); code != "" {
		t.Fatalf("new operational key refused after restart: %s", code)
	}
	for _, v := range sim.Volumes() {
		if v == "local-lvm:vm-901-disk-0" || v == "local-lvm:vm-902-disk-0" {
			t.Errorf("volume %s survived its approved wipe", v)
		}
	}
}
