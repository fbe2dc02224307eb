package main

import (
	"os"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/activities/ledger"
)

// The ledger holds intents (written before the gate is asked, for any
// approval that comes with a destructive act, forged ones included) beside
// admissions; only an admission counts as one, an intent once promoted.
func TestReadAdmissionsSkipsIntents(t *testing.T) {
	h := &host{dir: t.TempDir()}
	if err := os.MkdirAll(h.snapDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := ledger.Open(h.ledgerPath())
	if err != nil {
		t.Fatal(err)
	}
	ad := func(key string) ledger.Admission {
		return ledger.Admission{Key: key, Action: "act-" + key, VMID: 101, Instance: "i1", ExpiresAt: time.Now().Add(time.Hour)}
	}
	for _, step := range []error{
		l.Intend(ad("refused")), l.Drop("refused"), // the gate refused it
		l.Intend(ad("admitted")), l.Admit(ad("admitted")), // promoted
		l.Intend(ad("left")), // a crash before Decide
	} {
		if step != nil {
			t.Fatal(step)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := readAdmissions(h)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Key != "admitted" || got[0].State != ledger.Admitted {
		t.Fatalf("admissions %+v, want only the promoted one", got)
	}
}
