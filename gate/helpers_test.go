package gate

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/felhom/felhom-agent/internal/testtool"
)

// sshKeygen is looked up on PATH.
const sshKeygen = "ssh-keygen"

func needSSHKeygen(t testing.TB) {
	t.Helper()
	testtool.Need(t, sshKeygen)
}

// testKey is a key pair made by the real ssh-keygen.
type testKey struct {
	path   string // private key file; path+".pub" is the public key
	signer ssh.Signer
	pub    ssh.PublicKey
	line   string // authorized_keys line
}

func genKey(t testing.TB, typ string, bits int) testKey {
	t.Helper()
	return genKeyIn(t, t.TempDir(), typ, bits)
}

func genKeyIn(t testing.TB, dir, typ string, bits int) testKey {
	t.Helper()
	needSSHKeygen(t)
	f, err := os.CreateTemp(dir, "id_"+typ)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	os.Remove(f.Name())
	path := f.Name()
	args := []string{"-q", "-t", typ, "-N", "", "-C", typ + "@test", "-f", path}
	if bits > 0 {
		args = append(args, "-b", itoa(bits))
	}
	if out, err := exec.Command(sshKeygen, args...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	line, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return testKey{path: path, signer: signer, pub: signer.PublicKey(), line: strings.TrimSpace(string(line))}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// keygenSign signs blob with ssh-keygen -Y sign in namespace ns.
func keygenSign(t testing.TB, k testKey, ns string, blob []byte) []byte {
	t.Helper()
	cmd := exec.Command(sshKeygen, "-Y", "sign", "-q", "-f", k.path, "-n", ns)
	cmd.Stdin = bytes.NewReader(blob)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("ssh-keygen -Y sign: %v\n%s", err, errb.String())
	}
	return out.Bytes()
}

// keygenVerify runs ssh-keygen -Y verify and returns its error and output.
func keygenVerify(t testing.TB, pubLine string, sig, blob []byte) (string, error) {
	t.Helper()
	dir := t.TempDir()
	allowed := filepath.Join(dir, "allowed_signers")
	if err := os.WriteFile(allowed, []byte("op@test "+pubLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sigPath := filepath.Join(dir, "op.sig")
	if err := os.WriteFile(sigPath, sig, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshKeygen, "-Y", "verify", "-f", allowed, "-I", "op@test", "-n", Namespace, "-s", sigPath)
	cmd.Stdin = bytes.NewReader(blob)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// signRaw builds an armored SSHSIG with full control over the envelope, for
// the cases ssh-keygen will not produce.
func signRaw(t testing.TB, s ssh.Signer, ns, hash, alg string, blob []byte) []byte {
	t.Helper()
	data, err := SignedData(ns, hash, blob)
	if err != nil {
		t.Fatal(err)
	}
	var sig *ssh.Signature
	if alg != "" {
		sig, err = s.(ssh.AlgorithmSigner).SignWithAlgorithm(rand.Reader, data, alg)
	} else {
		sig, err = s.Sign(rand.Reader, data)
	}
	if err != nil {
		t.Fatal(err)
	}
	env := Signature{PublicKey: s.PublicKey().Marshal(), Namespace: ns, HashAlgorithm: hash, Sig: ssh.Marshal(sig)}
	return Armor(env.Marshal())
}

func mustCanon(t testing.TB, op Op) []byte {
	t.Helper()
	b, err := Canonicalize(op)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sharedDir holds files that outlive a single test, such as the keys of
// testKeys.
var sharedDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gate-test")
	if err != nil {
		panic(err)
	}
	sharedDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
