package activities

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/pveclient"
	"github.com/felhom/felhom-agent/internal/pvesim"
)

// testMarker is an instance marker for ledger entries that tests write.
const testMarker = "0123456789abcdef0123456789abcdef"

// prov returns what the host knows about the live guest vmid: the gate's
// provenance from the ledger and the simulator.
func (h *harness) prov(vmid int) gate.Provenance {
	h.t.Helper()
	g, err := h.act.readGuest(context.Background(), vmid, "")
	if err != nil {
		h.t.Fatal(err)
	}
	return h.act.provenanceOf(g)
}

// recordCreate writes a confirmed create of vmid with marker into the
// ledger, as the create activity would have.
func (h *harness) recordCreate(vmid int, kind, marker string, scratch bool) {
	h.t.Helper()
	if err := h.ledger.BeginCreate(ledger.Entry{VMID: vmid, Kind: kind, Instance: marker, Scratch: scratch}); err != nil {
		h.t.Fatal(err)
	}
	if err := h.ledger.ConfirmCreate(vmid, marker, "", nil); err != nil {
		h.t.Fatal(err)
	}
}

const hostID = "pve1"

// harness is one simulated Proxmox node, the real go-proxmox client built by
// pveclient, a ledger and nonce store on disk, the real gate with an
// operator key made by ssh-keygen, and the activities wired to all of them.
type harness struct {
	t      testing.TB
	srv    *pvesim.Server
	act    *Proxmox
	ledger *ledger.Ledger
	suite  testsuite.WorkflowTestSuite
	keyDir string
	nonces *gate.FileNonceStore
	pinned *Host // see pinnedHost
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newHarness(t testing.TB, cfg pvesim.Config) *harness {
	t.Helper()
	cfg.StrictPVE = true
	if cfg.Node == "" {
		cfg.Node = "pve1"
	}
	if cfg.TaskDuration == 0 {
		cfg.TaskDuration = 20 * time.Millisecond
	}
	if cfg.LockTimeout == 0 {
		cfg.LockTimeout = 200 * time.Millisecond
	}
	if cfg.RebootRestartDelay == 0 {
		// qmeventd's start is queued as the reboot task ends, so a test
		// can wait for it (waitRestarted)
		cfg.RebootRestartDelay = -1
	}
	srv, err := pvesim.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	dir := t.TempDir()
	h := &harness{t: t, srv: srv, keyDir: dir}
	h.suite.SetLogger(log.NewStructuredLogger(quietLogger()))
	h.act = h.newActivities(filepath.Join(dir, "provenance.log"), filepath.Join(dir, "nonces.log"))
	return h
}

// newActivities builds the activities against the harness's simulator with
// the ledger and nonce store at the given paths.
func (h *harness) newActivities(ledgerPath, noncePath string) *Proxmox {
	t := h.t
	client, err := pveclient.New(pveclient.Config{
		URL: h.srv.URL(), TokenID: h.srv.TokenID(), TokenSecret: h.srv.TokenSecret(),
		RootCAs: h.srv.HTTPClient().Transport.(*http.Transport).TLSClientConfig.RootCAs,
		Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	led, err := ledger.Open(ledgerPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { led.Close() })
	h.ledger = led
	nonces, err := gate.OpenFileNonceStore(noncePath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nonces.Close() })
	h.nonces = nonces
	return &Proxmox{
		Client: client, Node: h.srv.Node(), HostID: hostID, Ledger: led,
		Gate: h.gate(nil), Log: quietLogger(), PollInterval: 5 * time.Millisecond,
	}
}

// gate is the real gate pinning the operator key (operational) and the
// recovery key, over the harness's nonce store, with clock now (time.Now
// when nil).
func (h *harness) gate(now func() time.Time) *gate.Gate {
	signers, err := gate.ParseSigners([]string{h.operatorKey()}, []string{h.recoveryKey()})
	if err != nil {
		h.t.Fatal(err)
	}
	v, err := gate.NewVerifier(gate.VerifierConfig{HostID: hostID, Signers: signers, Nonces: h.nonces, Now: now})
	if err != nil {
		h.t.Fatal(err)
	}
	return gate.New(v, quietLogger())
}

// setClock moves the host's clock, the gate's and the activities', to now.
func (h *harness) setClock(now func() time.Time) {
	h.act.Gate, h.act.Clock = h.gate(now), now
}

// operatorKey returns the operator's public key line, generating the key
// with ssh-keygen on first use.
func (h *harness) operatorKey() string { return h.key("operator") }

// recoveryKey returns the recovery key's public key line; the harness's
// gate pins it with the recovery role.
func (h *harness) recoveryKey() string { return h.key("recovery") }

// key returns the public key line of the key named name in the harness's key
// directory, generating it with ssh-keygen on first use.
func (h *harness) key(name string) string {
	key := filepath.Join(h.keyDir, name)
	if _, err := os.Stat(key); err != nil {
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name+"@test", "-f", key).CombinedOutput()
		if err != nil {
			h.t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		h.t.Fatal(err)
	}
	return strings.TrimSpace(string(pub))
}

// approve signs op with the operator key through ssh-keygen -Y sign, as
// felhom-sign's user would, valid from a minute ago for an hour.
func (h *harness) approve(op, guest string, params map[string]any) *gate.Approval {
	h.t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	return h.sign("operator", gate.Op{Op: op, HostID: hostID, GuestID: guest, Params: params,
		NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour), KeyID: "ops"})
}

// sign signs op with the key named keyName through ssh-keygen -Y sign. An
// empty nonce gets a random one.
func (h *harness) sign(keyName string, op gate.Op) *gate.Approval {
	h.t.Helper()
	h.key(keyName)
	if op.Nonce == "" {
		var n [12]byte
		rand.Read(n[:])
		op.Nonce = hex.EncodeToString(n[:])
	}
	blob, err := gate.Canonicalize(op)
	if err != nil {
		h.t.Fatal(err)
	}
	file := filepath.Join(h.t.TempDir(), "op.json")
	if err := os.WriteFile(file, blob, 0o600); err != nil {
		h.t.Fatal(err)
	}
	out, err := exec.Command("ssh-keygen", "-Y", "sign", "-n", gate.Namespace, "-f", filepath.Join(h.keyDir, keyName), file).CombinedOutput()
	if err != nil {
		h.t.Fatalf("ssh-keygen -Y sign: %v: %s", err, out)
	}
	sig, err := os.ReadFile(file + ".sig")
	if err != nil {
		h.t.Fatal(err)
	}
	return &gate.Approval{Blob: blob, Signature: sig}
}

// env is a fresh activity environment: a fresh attempt of an activity.
func (h *harness) env() *testsuite.TestActivityEnvironment {
	e := h.suite.NewTestActivityEnvironment()
	e.RegisterActivity(h.act)
	return e
}

// run executes one activity method in a fresh environment and decodes its
// result into T.
func run[T any](h *harness, fn any, in any) (T, error) {
	return runIn[T](h.env(), fn, in)
}

func runIn[T any](e *testsuite.TestActivityEnvironment, fn any, in any) (T, error) {
	var out T
	val, err := e.ExecuteActivity(fn, in)
	if err != nil {
		return out, err
	}
	if err := val.Get(&out); err != nil {
		return out, err
	}
	return out, nil
}

// resumeFrom is an environment whose activity finds p as the heartbeat a
// previous attempt recorded.
func (h *harness) resumeFrom(p Progress) *testsuite.TestActivityEnvironment {
	e := h.env()
	e.SetHeartbeatDetails(p)
	return e
}

// errType returns the application error type of err and whether it is
// retryable.
func errType(t *testing.T, err error) (typ string, retryable bool) {
	t.Helper()
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) {
		t.Fatalf("error %v (%T) is not an application error", err, err)
	}
	return appErr.Type(), !appErr.NonRetryable()
}

func wantErr(t *testing.T, err error, typ string, retryable bool) {
	t.Helper()
	if err == nil {
		t.Fatalf("got success, want %s error", typ)
	}
	gotTyp, gotRetry := errType(t, err)
	if gotTyp != typ || gotRetry != retryable {
		t.Fatalf("error = %v\n type %q retryable %v, want type %q retryable %v", err, gotTyp, gotRetry, typ, retryable)
	}
}

func (h *harness) addVM(g pvesim.Guest) {
	h.t.Helper()
	if err := h.srv.AddVM(g); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) addCT(g pvesim.Guest) {
	h.t.Helper()
	if err := h.srv.AddContainer(g); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) guest(vmid int) (pvesim.Guest, bool) { return h.srv.Guest(vmid) }

// mutations counts the recorded mutating requests matching method and a
// path.Match pattern.
func (h *harness) mutations(method, pattern string) int {
	return len(h.srv.RequestsMatching(method, pattern))
}
