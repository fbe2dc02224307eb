package gate

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/ssh"
)

// Role is what a pinned signer key may approve.
type Role string

const (
	// RoleOperational may approve ordinary destructive ops and planned
	// signer rotations.
	RoleOperational Role = "operational"
	// RoleRecovery may approve signer rotation only.
	RoleRecovery Role = "recovery"
)

// Signer is a pinned signer key and its role.
type Signer struct {
	Key     ssh.PublicKey
	Role    Role
	Comment string // from the configured line; for logs only
}

// VerifiedOp is a signed op whose signature verified. Verify returns one
// only when every stage passed, its nonce included.
type VerifiedOp struct {
	Op            Op
	Blob          []byte // the raw signed bytes
	Signer        Signer // the pinned entry that matched the signature's key
	Fingerprint   string // SHA256 fingerprint of the signer key
	SigAlgorithm  string // e.g. "ssh-ed25519", "rsa-sha2-512"
	HashAlgorithm string // "sha256" or "sha512"
}

// NonceStore makes an op single-use.
type NonceStore interface {
	// Use records nonce as used until expiresAt. It returns an error
	// wrapping ErrReplay if the nonce is already recorded. Any other error
	// means the nonce may or may not be recorded, and the op must not run.
	// A nil return means the record is durable for the store's kind.
	Use(ctx context.Context, nonce string, expiresAt time.Time) error
}

// AllowList is the set of pinned signer keys, matched by key material.
type AllowList struct {
	byKey map[string]pinned
}

type pinned struct {
	Signer
	fingerprint string
}

// NewAllowList pins signers. A key listed twice is an error, because its role
// would be ambiguous.
func NewAllowList(signers []Signer) (*AllowList, error) {
	a := &AllowList{byKey: make(map[string]pinned, len(signers))}
	for _, s := range signers {
		if s.Key == nil {
			return nil, errors.New("gate: signer without a key")
		}
		if s.Role != RoleOperational && s.Role != RoleRecovery {
			return nil, fmt.Errorf("gate: signer %s: unknown role %q", ssh.FingerprintSHA256(s.Key), s.Role)
		}
		k := string(s.Key.Marshal())
		if prev, dup := a.byKey[k]; dup {
			return nil, fmt.Errorf("gate: key %s is listed twice (%s and %s)", ssh.FingerprintSHA256(s.Key), prev.Role, s.Role)
		}
		a.byKey[k] = pinned{s, ssh.FingerprintSHA256(s.Key)}
	}
	return a, nil
}

// Len is the number of pinned keys.
func (a *AllowList) Len() int { return len(a.byKey) }

// SignatureCheck is the outcome of VerifySignature.
type SignatureCheck struct {
	Signer        Signer // the pinned entry that matched
	Fingerprint   string // SHA256 fingerprint of its key
	SigAlgorithm  string // e.g. "ssh-ed25519", "rsa-sha2-512"
	HashAlgorithm string // "sha256" or "sha512"
}

// VerifySignature runs the signature half of the pipeline over the raw
// received blob: parse armor → namespace → parse public key → allow-list →
// crypto.
func VerifySignature(armored, rawBlob []byte, allowed *AllowList) (SignatureCheck, error) {
	env, err := ParseArmor(armored)
	if err != nil {
		return SignatureCheck{}, err
	}
	if env.Namespace != Namespace {
		return SignatureCheck{}, fmt.Errorf("%w: %q, want %q", ErrNamespace, env.Namespace, Namespace)
	}
	pub, err := parseSignerKey(env.PublicKey)
	if err != nil {
		return SignatureCheck{}, err
	}
	p, ok := allowed.byKey[string(env.PublicKey)]
	if !ok {
		return SignatureCheck{}, fmt.Errorf("%w: %s %s", ErrUnknownSigner, pub.Type(), ssh.FingerprintSHA256(pub))
	}
	alg, err := verifyCrypto(p.Key, env, rawBlob)
	if err != nil {
		return SignatureCheck{}, err
	}
	return SignatureCheck{Signer: p.Signer, Fingerprint: p.fingerprint, SigAlgorithm: alg, HashAlgorithm: env.HashAlgorithm}, nil
}

// parseSignerKey parses the envelope's key and refuses kinds the gate does
// not accept: certificates, DSA and RSA under 2048 bits.
func parseSignerKey(wire []byte) (ssh.PublicKey, error) {
	pub, err := ssh.ParsePublicKey(wire)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPublicKey, err)
	}
	switch pub.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoSKED25519,
		ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoSKECDSA256:
	case ssh.KeyAlgoRSA:
		ck, ok := pub.(ssh.CryptoPublicKey)
		if !ok {
			return nil, fmt.Errorf("%w: unreadable RSA key", ErrPublicKey)
		}
		rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey)
		if !ok || rk.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%w: RSA keys must have at least 2048 bits", ErrPublicKey)
		}
	default:
		return nil, fmt.Errorf("%w: key type %s is not accepted", ErrPublicKey, pub.Type())
	}
	return pub, nil
}

// verifyCrypto checks env's signature over rawBlob exactly as received.
func verifyCrypto(pub ssh.PublicKey, env *Signature, rawBlob []byte) (string, error) {
	var sig ssh.Signature
	if err := ssh.Unmarshal(env.Sig, &sig); err != nil {
		return "", fmt.Errorf("%w: malformed inner signature: %v", ErrSignature, err)
	}
	switch kt := pub.Type(); kt {
	case ssh.KeyAlgoRSA:
		// x/crypto would also accept a SHA-1 "ssh-rsa" signature here.
		if sig.Format != ssh.KeyAlgoRSASHA256 && sig.Format != ssh.KeyAlgoRSASHA512 {
			return "", fmt.Errorf("%w: RSA signature algorithm %q refused, want rsa-sha2-256 or rsa-sha2-512", ErrSignature, sig.Format)
		}
	default:
		if sig.Format != kt {
			return "", fmt.Errorf("%w: signature algorithm %q for a %s key", ErrSignature, sig.Format, kt)
		}
	}
	switch pub.Type() {
	case ssh.KeyAlgoSKED25519, ssh.KeyAlgoSKECDSA256:
		// Security-key signatures end in flags and a counter. The gate
		// requires user presence (a touch) even where ssh-keygen would not.
		// The counter is not tracked: the nonce already makes an op single-use.
		if len(sig.Rest) != 5 {
			return "", fmt.Errorf("%w: security-key signature without flags and counter", ErrSignature)
		}
		if sig.Rest[0]&0x01 == 0 {
			return "", fmt.Errorf("%w: security-key signature without the user-presence flag", ErrSignature)
		}
	default:
		if len(sig.Rest) != 0 {
			return "", fmt.Errorf("%w: %d trailing bytes after signature", ErrSignature, len(sig.Rest))
		}
	}
	data, err := SignedData(Namespace, env.HashAlgorithm, rawBlob)
	if err != nil {
		return "", err
	}
	if err := pub.Verify(data, &sig); err != nil {
		return "", fmt.Errorf("%w: %v", ErrSignature, err)
	}
	return sig.Format, nil
}

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	HostID  string           // this host; an op for another host is rejected
	Signers []Signer         // pinned keys with roles (see ParseSigners)
	Nonces  NonceStore       // host-local; required
	Now     func() time.Time // clock; nil means time.Now
	// MaxValidity caps how long an op may be valid: expires_at - not_before,
	// and how far expires_at lies ahead of now. Zero means
	// DefaultMaxValidity; more than MaxValidityLimit is an error.
	MaxValidity time.Duration
}

// Verifier runs the complete signed-op pipeline for one host.
type Verifier struct {
	hostID      string
	allowed     *AllowList
	nonces      NonceStore
	now         func() time.Time
	maxValidity time.Duration
}

// NewVerifier checks cfg and returns a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.HostID == "" {
		return nil, errors.New("gate: verifier needs the host id")
	}
	if cfg.Nonces == nil {
		return nil, errors.New("gate: verifier needs a nonce store")
	}
	allowed, err := NewAllowList(cfg.Signers)
	if err != nil {
		return nil, err
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	maxValidity := cfg.MaxValidity
	switch {
	case maxValidity == 0:
		maxValidity = DefaultMaxValidity
	case maxValidity < 0 || maxValidity > MaxValidityLimit:
		return nil, fmt.Errorf("gate: max validity %s is outside (0, %s]", maxValidity, MaxValidityLimit)
	}
	return &Verifier{hostID: cfg.HostID, allowed: allowed, nonces: cfg.Nonces, now: now, maxValidity: maxValidity}, nil
}

// Verify runs the pipeline, in this order, each stage able to reject an op
// whose signature is valid:
//
//	parse armor → namespace → parse public key → allow-list (by key material;
//	key_id is advisory) → crypto over rawBlob as received → parse blob →
//	target host → time window (including the maximum validity) → nonce
//
// The nonce is recorded last, so an op that fails any other stage never
// burns its nonce. The returned error wraps the sentinel of the failing stage.
func (v *Verifier) Verify(ctx context.Context, armored, rawBlob []byte) (*VerifiedOp, error) {
	vop, err := v.verify(ctx, armored, rawBlob, nil)
	if err != nil {
		return nil, err
	}
	return vop, nil
}

// reverify runs the pipeline of verify without the time window and the
// nonce stage, for an approval the host admitted before (Gate.Readmit).
func (v *Verifier) reverify(armored, rawBlob []byte, check func(*VerifiedOp) error) (*VerifiedOp, error) {
	vop, err := v.authenticate(armored, rawBlob)
	if err != nil {
		return vop, err
	}
	return vop, check(vop)
}

// authenticate runs the stages up to and including the target host.
func (v *Verifier) authenticate(armored, rawBlob []byte) (*VerifiedOp, error) {
	sc, err := VerifySignature(armored, rawBlob, v.allowed)
	if err != nil {
		return nil, err
	}
	op, err := ParseOp(rawBlob)
	if err != nil {
		return nil, err
	}
	vop := &VerifiedOp{
		Op:            op,
		Blob:          rawBlob,
		Signer:        sc.Signer,
		Fingerprint:   sc.Fingerprint,
		SigAlgorithm:  sc.SigAlgorithm,
		HashAlgorithm: sc.HashAlgorithm,
	}
	if op.HostID != v.hostID {
		return vop, fmt.Errorf("%w: op is for host %q, this is %q", ErrWrongHost, op.HostID, v.hostID)
	}
	return vop, nil
}

// verify is Verify with extra checks (the gate's role and binding) run after
// the time window and before the nonce is burnt. Past the crypto stage it
// returns the op even with an error, for the audit record.
func (v *Verifier) verify(ctx context.Context, armored, rawBlob []byte, check func(*VerifiedOp) error) (*VerifiedOp, error) {
	vop, err := v.authenticate(armored, rawBlob)
	if err != nil {
		return vop, err
	}
	op := vop.Op
	now := v.now()
	if now.Before(op.NotBefore) {
		return vop, fmt.Errorf("%w: not before %s, now %s", ErrNotYetValid, op.NotBefore.Format(TimeLayout), now.UTC().Format(TimeLayout))
	}
	if !now.Before(op.ExpiresAt) {
		return vop, fmt.Errorf("%w: expired at %s, now %s", ErrExpired, op.ExpiresAt.Format(TimeLayout), now.UTC().Format(TimeLayout))
	}
	if err := CheckValidity(op, now, v.maxValidity); err != nil {
		return vop, err
	}
	if check != nil {
		if err := check(vop); err != nil {
			return vop, err
		}
	}
	if err := v.nonces.Use(ctx, op.Nonce, op.ExpiresAt); err != nil {
		if errors.Is(err, ErrReplay) {
			return vop, err
		}
		return vop, fmt.Errorf("%w: %v", ErrNonceStore, err)
	}
	return vop, nil
}
