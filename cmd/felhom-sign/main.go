// Command felhom-sign canonicalises, signs and verifies felhom operations.
//
// An operator approves a destructive operation on a Proxmox host by signing
// the op's canonical blob with an SSH key (SSHSIG, namespace felhom-op-v1).
// The blob comes from the same canonicaliser the agent uses (package gate),
// so what is signed is byte for byte what the host verifies. Signatures are
// interchangeable with ssh-keygen -Y sign / -Y verify.
//
//	felhom-sign sign   --op guest.destroy --host pve1 --guest 101 --key ~/.ssh/id_ed25519 --blob op.json --sig op.sig
//	felhom-sign canon  --op-file op.json
//	felhom-sign verify --allowed-signers allowed_signers --blob op.json --sig op.sig
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/felhom/felhom-agent/gate"
	"github.com/felhom/felhom-agent/internal/sshkeys"
	"golang.org/x/crypto/ssh"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // signing or verification failed
	exitUsage   = 2 // bad command line or malformed op
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const mainUsage = `felhom-sign: sign operations for felhom-agent with an SSH key.

Usage:
  felhom-sign sign   [op flags] [--key FILE] [--blob FILE] [--sig FILE]
  felhom-sign canon  [op flags]
  felhom-sign verify --allowed-signers FILE --blob FILE --sig FILE [--host ID] [--at TIME]

Run "felhom-sign COMMAND --help" for the flags of a command.
`

// usageError is a command-line mistake; it exits with exitUsage.
type usageError struct{ error }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, mainUsage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "sign":
		err = runSign(args[1:], stdin, stdout, stderr)
	case "canon":
		err = runCanon(args[1:], stdin, stdout, stderr)
	case "verify":
		err = runVerify(args[1:], stdin, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, mainUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "felhom-sign: unknown command %q\n\n%s", args[0], mainUsage)
		return exitUsage
	}
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	}
	fmt.Fprintf(stderr, "felhom-sign %s: %v\n", args[0], err)
	var ue usageError
	var fe *gate.FieldError
	if errors.As(err, &ue) || errors.As(err, &fe) {
		return exitUsage
	}
	return exitFailure
}

// newFlagSet returns a flag set whose --help prints doc and the flags to
// stdout, and whose parse errors are usage errors.
func newFlagSet(name, doc string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fs.SetOutput(stdout)
		fmt.Fprint(stdout, doc)
		fmt.Fprintln(stdout, "\nFlags:")
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// opFlags are the flags that describe an op, shared by sign and canon.
type opFlags struct {
	fs                                    *flag.FlagSet
	file                                  string
	op, host, guest, params, nonce, keyID string
	notBefore, expiresAt                  string
	ttl, maxValidity                      time.Duration
}

const opFlagsDoc = `
The op comes from --op-file (a JSON object with the blob's keys: op, host_id,
guest_id, params, nonce, not_before, expires_at, key_id) and/or from flags;
a flag given on the command line overrides the file. Times are RFC 3339 in
whole seconds. A missing nonce is random, a missing not_before is now, a
missing expires_at is not_before + --ttl. An existing canonical blob given as
--op-file comes out byte for byte unchanged.

An op valid for longer than --max-validity (expires_at - not_before, or
expires_at - now) is refused with exit 2, as the hosts refuse it
(validity_too_long): 24h by default, the hosts' default signers.max_validity.
Raise it, up to 168h (7 days), only to match hosts configured to accept more.
`

func addOpFlags(fs *flag.FlagSet) *opFlags {
	o := &opFlags{fs: fs}
	fs.StringVar(&o.file, "op-file", "", "read the op from this JSON `FILE` (\"-\" for stdin)")
	fs.StringVar(&o.op, "op", "", "operation, e.g. guest.destroy, volume.wipe, signers.rotate")
	fs.StringVar(&o.host, "host", "", "host id the op is for, e.g. pve1")
	fs.StringVar(&o.guest, "guest", "", "guest VMID, e.g. 101 (empty for host-level ops)")
	fs.StringVar(&o.params, "params", "", "op parameters as a JSON object, e.g. '{\"purge\":true}'")
	fs.StringVar(&o.nonce, "nonce", "", "single-use nonce (default: 128 random bits in hex)")
	fs.StringVar(&o.notBefore, "not-before", "", "start of validity, RFC 3339 (default: now)")
	fs.StringVar(&o.expiresAt, "expires-at", "", "end of validity, RFC 3339 (default: not-before + ttl)")
	fs.DurationVar(&o.ttl, "ttl", time.Hour, "validity when --expires-at is not given")
	addMaxValidityFlag(fs, &o.maxValidity)
	fs.StringVar(&o.keyID, "key-id", "", "advisory name of the signing key (sign: default its SHA256 fingerprint)")
	return o
}

// opFile is the JSON form of an op in --op-file.
type opFile struct {
	Op        string          `json:"op"`
	HostID    string          `json:"host_id"`
	GuestID   string          `json:"guest_id"`
	Params    json.RawMessage `json:"params"`
	Nonce     string          `json:"nonce"`
	NotBefore string          `json:"not_before"`
	ExpiresAt string          `json:"expires_at"`
	KeyID     string          `json:"key_id"`
}

// build assembles the op. now is used for the default not_before.
func (o *opFlags) build(stdin io.Reader, now time.Time) (gate.Op, error) {
	var f opFile
	if o.file != "" {
		data, err := readInput(o.file, stdin)
		if err != nil {
			return gate.Op{}, err
		}
		d := json.NewDecoder(bytes.NewReader(data))
		d.DisallowUnknownFields()
		if err := d.Decode(&f); err != nil {
			return gate.Op{}, usageError{fmt.Errorf("op file %s: %v", o.file, err)}
		}
	}
	set := map[string]bool{}
	o.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	override := func(dst *string, flagName, v string) {
		if set[flagName] {
			*dst = v
		}
	}
	override(&f.Op, "op", o.op)
	override(&f.HostID, "host", o.host)
	override(&f.GuestID, "guest", o.guest)
	override(&f.Nonce, "nonce", o.nonce)
	override(&f.NotBefore, "not-before", o.notBefore)
	override(&f.ExpiresAt, "expires-at", o.expiresAt)
	override(&f.KeyID, "key-id", o.keyID)
	if set["params"] {
		f.Params = json.RawMessage(o.params)
	}
	if set["ttl"] && set["expires-at"] {
		return gate.Op{}, usageError{errors.New("give --ttl or --expires-at, not both")}
	}

	op := gate.Op{Op: f.Op, HostID: f.HostID, GuestID: f.GuestID, Nonce: f.Nonce, KeyID: f.KeyID}
	if op.Nonce == "" && !set["nonce"] {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return gate.Op{}, err
		}
		op.Nonce = hex.EncodeToString(b[:])
	}
	if len(bytes.TrimSpace(f.Params)) > 0 {
		d := json.NewDecoder(bytes.NewReader(f.Params))
		d.UseNumber()
		var p any
		if err := d.Decode(&p); err != nil {
			return gate.Op{}, &gate.FieldError{Field: "params", Reason: "invalid JSON: " + err.Error()}
		}
		m, ok := p.(map[string]any)
		if !ok && p != nil {
			return gate.Op{}, &gate.FieldError{Field: "params", Reason: "must be a JSON object"}
		}
		op.Params = m
	}
	var err error
	if f.NotBefore == "" {
		op.NotBefore = now.UTC().Truncate(time.Second)
	} else if op.NotBefore, err = parseTime("not_before", f.NotBefore); err != nil {
		return gate.Op{}, err
	}
	if f.ExpiresAt == "" {
		op.ExpiresAt = op.NotBefore.Add(o.ttl)
	} else if op.ExpiresAt, err = parseTime("expires_at", f.ExpiresAt); err != nil {
		return gate.Op{}, err
	}
	return op, nil
}

// addMaxValidityFlag adds --max-validity, the longest validity a made or
// verified op may have.
func addMaxValidityFlag(fs *flag.FlagSet, p *time.Duration) {
	fs.DurationVar(p, "max-validity", gate.DefaultMaxValidity, fmt.Sprintf("refuse ops valid for longer than this (the hosts' signers.max_validity; at most %s)", gate.MaxValidityLimit))
}

// checkValidity refuses op when the hosts would refuse it as valid for too
// long, or when max itself is more than any host accepts.
func checkValidity(op gate.Op, now time.Time, max time.Duration) error {
	if max <= 0 || max > gate.MaxValidityLimit {
		return usageError{fmt.Errorf("--max-validity %s: want more than 0 and at most %s", max, gate.MaxValidityLimit)}
	}
	if err := gate.CheckValidity(op, now, max); err != nil {
		detail := strings.TrimPrefix(err.Error(), gate.ErrValidityTooLong.Error()+": ")
		return usageError{fmt.Errorf("validity_too_long: %s; the hosts would refuse it: shorten --ttl or --expires-at, or raise --max-validity (at most %s) to match hosts whose signers.max_validity is larger", detail, gate.MaxValidityLimit)}
	}
	return nil
}

func parseTime(field, s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, &gate.FieldError{Field: field, Reason: fmt.Sprintf("%q is not an RFC 3339 time such as 2026-11-23T08:00:00Z", s)}
	}
	return t, nil
}

func readInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(stdin)
	}
	return os.ReadFile(name)
}

func writeOutput(name string, data []byte, stdout io.Writer) error {
	if name == "-" {
		_, err := stdout.Write(data)
		return err
	}
	return os.WriteFile(name, data, 0o644)
}

const canonDoc = `Usage: felhom-sign canon [op flags]

Prints the canonical blob of an op: exactly the bytes that are signed, with
no trailing newline. Sign it elsewhere with
  ssh-keygen -Y sign -n felhom-op-v1 -f KEY < blob > blob.sig
`

func runCanon(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("canon", canonDoc+opFlagsDoc, stdout, stderr)
	o := addOpFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	now := time.Now()
	op, err := o.build(stdin, now)
	if err != nil {
		return err
	}
	blob, err := gate.Canonicalize(op)
	if err != nil {
		return err
	}
	if err := checkValidity(op, now, o.maxValidity); err != nil {
		return err
	}
	_, err = stdout.Write(blob)
	return err
}

const signDoc = `Usage: felhom-sign sign [op flags] [--key FILE] [--blob FILE] [--sig FILE]

Canonicalises the op, signs it (SSHSIG, namespace felhom-op-v1, sha512) and
writes the blob and the armored signature. Both go to stdout by default: the
blob on its own line, then the signature. Give --blob and --sig to write
files; the host must receive the blob byte for byte.

The key is --key FILE: an unencrypted OpenSSH private key, or, through
ssh-agent (SSH_AUTH_SOCK), an encrypted private key or a public key file
whose private half the agent holds. Without --key the agent's only key is
used. RSA keys sign with rsa-sha2-512 (see --rsa-algorithm).
`

func runSign(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("sign", signDoc+opFlagsDoc, stdout, stderr)
	o := addOpFlags(fs)
	keyFile := fs.String("key", "", "private key `FILE`, or public key FILE of a key in ssh-agent")
	blobOut := fs.String("blob", "-", "write the canonical blob to `FILE` (\"-\" for stdout)")
	sigOut := fs.String("sig", "-", "write the armored signature to `FILE` (\"-\" for stdout)")
	rsaAlg := fs.String("rsa-algorithm", ssh.KeyAlgoRSASHA512, "signature algorithm for RSA keys: rsa-sha2-512 or rsa-sha2-256")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	now := time.Now()
	op, err := o.build(stdin, now)
	if err != nil {
		return err
	}
	// Refuse a malformed op, or one the hosts would refuse as valid for too
	// long, before touching any key.
	if _, err := gate.Canonicalize(op); err != nil {
		return err
	}
	if err := checkValidity(op, now, o.maxValidity); err != nil {
		return err
	}
	signer, err := loadSigner(context.Background(), *keyFile)
	if err != nil {
		return err
	}
	defer signer.Close()
	if op.KeyID == "" {
		op.KeyID = ssh.FingerprintSHA256(signer.Signer.PublicKey())
	}
	blob, err := gate.Canonicalize(op)
	if err != nil {
		return err
	}
	sig, err := gate.Sign(signer.Signer, blob, *rsaAlg)
	if err != nil {
		return err
	}
	if *blobOut == "-" && *sigOut == "-" {
		_, err = stdout.Write(append(append(blob, '\n'), sig...))
		return err
	}
	if err := writeOutput(*blobOut, blob, stdout); err != nil {
		return err
	}
	return writeOutput(*sigOut, sig, stdout)
}

// loadSigner finds the signing key: a private key file, or ssh-agent. The
// op's --key-id does not pick the agent key here: --key does.
func loadSigner(ctx context.Context, keyFile string) (*sshkeys.Key, error) {
	key, err := sshkeys.Load(ctx, keyFile, "")
	return key, keyHints.Explain(err)
}

var keyHints = sshkeys.Hints{Program: "felhom-sign", KeyFlag: "--key", Choose: "--key FILE"}

const verifyDoc = `Usage: felhom-sign verify --allowed-signers FILE --blob FILE --sig FILE [--host ID] [--at TIME]

Checks a signed op the way a host does, short of the nonce: the signature
(namespace felhom-op-v1, by a key in the allowed-signers or authorized_keys
FILE, over the blob exactly as stored), that the blob is a canonical op, its
target host when --host is given, and its validity window at --at (default
now), which may be at most --max-validity long. Prints the op on success;
exits 1 with the failing check otherwise.
`

func runVerify(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify", verifyDoc, stdout, stderr)
	allowedFile := fs.String("allowed-signers", "", "allowed_signers or authorized_keys `FILE` of trusted keys")
	blobFile := fs.String("blob", "", "the signed blob `FILE` (\"-\" for stdin)")
	sigFile := fs.String("sig", "", "the armored signature `FILE`")
	host := fs.String("host", "", "require the op to be for this host id")
	at := fs.String("at", "", "check the validity window at this RFC 3339 time instead of now")
	var maxValidity time.Duration
	addMaxValidityFlag(fs, &maxValidity)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if maxValidity <= 0 || maxValidity > gate.MaxValidityLimit {
		return usageError{fmt.Errorf("--max-validity %s: want more than 0 and at most %s", maxValidity, gate.MaxValidityLimit)}
	}
	for name, v := range map[string]string{"allowed-signers": *allowedFile, "blob": *blobFile, "sig": *sigFile} {
		if v == "" {
			return usageError{fmt.Errorf("--%s is required", name)}
		}
	}
	when := time.Now()
	if *at != "" {
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return usageError{fmt.Errorf("--at %q is not an RFC 3339 time", *at)}
		}
		when = t
	}
	allowedData, err := os.ReadFile(*allowedFile)
	if err != nil {
		return err
	}
	signers, err := gate.ParseSignersFile(allowedData, gate.RoleOperational)
	if err != nil {
		return fmt.Errorf("%s: %w", *allowedFile, err)
	}
	allowed, err := gate.NewAllowList(signers)
	if err != nil {
		return fmt.Errorf("%s: %w", *allowedFile, err)
	}
	blob, err := readInput(*blobFile, stdin)
	if err != nil {
		return err
	}
	sig, err := os.ReadFile(*sigFile)
	if err != nil {
		return err
	}
	check, err := gate.VerifySignature(sig, blob, allowed)
	if err != nil {
		return fmt.Errorf("%s: %w", gate.Code(err), err)
	}
	op, err := gate.ParseOp(blob)
	if err != nil {
		return fmt.Errorf("%s: %w", gate.Code(err), err)
	}
	if *host != "" && op.HostID != *host {
		return fmt.Errorf("wrong_host: op is for host %q, not %q", op.HostID, *host)
	}
	if when.Before(op.NotBefore) {
		return fmt.Errorf("not_yet_valid: op is valid from %s", op.NotBefore.Format(gate.TimeLayout))
	}
	if !when.Before(op.ExpiresAt) {
		return fmt.Errorf("expired: op expired at %s", op.ExpiresAt.Format(gate.TimeLayout))
	}
	if err := gate.CheckValidity(op, when, maxValidity); err != nil {
		return fmt.Errorf("%s: %w", gate.Code(err), err)
	}
	params, _ := gate.CanonicalJSON(op.Params)
	fmt.Fprintf(stdout, "Good %s signature by %s %s (%s, %s)\n", gate.Namespace,
		check.Signer.Key.Type(), ssh.FingerprintSHA256(check.Signer.Key), check.Signer.Comment, check.SigAlgorithm)
	fmt.Fprintf(stdout, "op=%s host=%s guest=%s params=%s nonce=%s key_id=%s valid %s .. %s\n",
		op.Op, op.HostID, op.GuestID, params, op.Nonce, op.KeyID,
		op.NotBefore.Format(gate.TimeLayout), op.ExpiresAt.Format(gate.TimeLayout))
	return nil
}
