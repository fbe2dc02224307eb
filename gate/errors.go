package gate

import "errors"

// Rejections. Every stage of the verify pipeline and every gate check has its
// own sentinel so a caller (and an auditor) can tell exactly why an op was
// refused; errors returned by this package wrap one of them, so errors.Is
// works and Code gives the stable string.
var (
	// ErrPendingSignature: a destructive action arrived without an approval.
	ErrPendingSignature = errors.New("destructive action needs an operator signature")
	// ErrBindingMismatch: the verified op does not name exactly the gated action.
	ErrBindingMismatch = errors.New("signed op does not match the action")
	// ErrRoleDenied: the signer's role may not approve this op.
	ErrRoleDenied = errors.New("signer role may not approve this op")

	// ErrArmor: the signature is not a well-formed armored SSHSIG envelope.
	ErrArmor = errors.New("malformed SSH signature")
	// ErrNamespace: the signature was made for another namespace than Namespace.
	ErrNamespace = errors.New("wrong signature namespace")
	// ErrPublicKey: the embedded public key cannot be parsed or is of a refused type.
	ErrPublicKey = errors.New("unusable signer public key")
	// ErrUnknownSigner: the key is not one of the pinned signer keys.
	ErrUnknownSigner = errors.New("signer key is not allowed")
	// ErrSignature: the signature does not verify over the received bytes.
	ErrSignature = errors.New("signature does not verify")
	// ErrBlob: the signed bytes are not a well-formed canonical op.
	ErrBlob = errors.New("malformed op")
	// ErrWrongHost: the op names another host.
	ErrWrongHost = errors.New("op is for another host")
	// ErrNotYetValid: the op's not_before is in the future.
	ErrNotYetValid = errors.New("op is not yet valid")
	// ErrExpired: the op's expires_at has passed.
	ErrExpired = errors.New("op has expired")
	// ErrValidityTooLong: the op is valid for longer than the host accepts,
	// or expires too far in the future (see CheckValidity).
	ErrValidityTooLong = errors.New("op validity is longer than this host accepts")
	// ErrReplay: the op's nonce was already used.
	ErrReplay = errors.New("op nonce already used")

	// ErrNonceStore: the nonce store could not record the nonce; the op is
	// refused because it cannot be made single-use.
	ErrNonceStore = errors.New("nonce store failure")
)

// codes maps each rejection to its stable snake_case code, in the order the
// checks run.
var codes = []struct {
	err  error
	code string
}{
	{ErrPendingSignature, "pending_signature"},
	{ErrArmor, "armor"},
	{ErrNamespace, "namespace"},
	{ErrPublicKey, "public_key"},
	{ErrUnknownSigner, "unknown_signer"},
	{ErrSignature, "signature"},
	{ErrBlob, "blob"},
	{ErrWrongHost, "wrong_host"},
	{ErrNotYetValid, "not_yet_valid"},
	{ErrExpired, "expired"},
	{ErrValidityTooLong, "validity_too_long"},
	{ErrRoleDenied, "role_denied"},
	{ErrBindingMismatch, "binding_mismatch"},
	{ErrReplay, "replay"},
	{ErrNonceStore, "nonce_store"},
}

// Codes of allowed decisions.
const (
	CodeAllowedBenign = "allowed_benign" // benign action, no signature needed
	CodeAllowedSigned = "allowed_signed" // destructive action with a verified, bound op
	// CodeAllowedAdmitted: a retry of an act this host admitted before (Readmit).
	CodeAllowedAdmitted = "allowed_admitted"
	// CodeApprovalConsumed is a Decision's ApprovalCode when a benign
	// action came with an approval that passed every check: its nonce is
	// spent, so it authorises nothing more.
	CodeApprovalConsumed = "approval_consumed"
)

// Code returns the stable snake_case code of err: "" for nil, one of the
// rejection codes ("pending_signature", "binding_mismatch", "role_denied",
// "armor", "namespace", "public_key", "unknown_signer", "signature", "blob",
// "wrong_host", "not_yet_valid", "expired", "validity_too_long", "replay",
// "nonce_store"), or
// "internal" for an error that is none of them.
func Code(err error) string {
	if err == nil {
		return ""
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "internal"
}
