package gate_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/felhom/felhom-agent/gate"
)

func ExampleCanonicalize() {
	blob, err := gate.Canonicalize(gate.Op{
		Op:        gate.OpGuestDestroy,
		HostID:    "pve1",
		GuestID:   "101",
		Params:    map[string]any{"purge": true, "disks": []any{"scsi0"}},
		Nonce:     "4f1c",
		NotBefore: time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC),
		ExpiresAt: time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC),
		KeyID:     "ops",
	})
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s\n", blob)
	// Output:
	// {"expires_at":"2026-11-23T09:00:00Z","guest_id":"101","host_id":"pve1","key_id":"ops","nonce":"4f1c","not_before":"2026-11-23T08:00:00Z","op":"guest.destroy","params":{"disks":["scsi0"],"purge":true}}
}

func ExampleGate_Decide() {
	v, err := gate.NewVerifier(gate.VerifierConfig{
		HostID: "pve1",
		Nonces: gate.NewMemoryNonceStore(), // an agent uses OpenFileNonceStore
		// Signers: from gate.ParseSigners(operationalLines, recoveryLines)
	})
	if err != nil {
		panic(err)
	}
	g := gate.New(v, slog.New(slog.DiscardHandler))
	ctx := context.Background()

	stop := gate.Action{Op: gate.OpGuestStop, HostID: "pve1", GuestID: "101"}
	d, err := g.Decide(ctx, gate.Request{Action: stop})
	fmt.Println(d.Class, d.Allowed, d.Code, err)

	destroy := gate.Action{Op: gate.OpGuestDestroy, HostID: "pve1", GuestID: "101"}
	d, err = g.Decide(ctx, gate.Request{Action: destroy, Provenance: gate.Provenance{}})
	fmt.Println(d.Class, d.Allowed, d.Code, gate.Code(err))
	// Output:
	// benign true allowed_benign <nil>
	// destructive false pending_signature pending_signature
}
