// Package gate is the agent's security core: it decides whether an action
// on a Proxmox guest may run, and for destructive actions it verifies the
// operator's SSH signature over that exact operation on the host itself. It
// imports nothing from Temporal; whatever the control plane or workflow
// history says, a destructive action runs only if Decide allows it here.
//
// # Decision
//
// Classify puts an action in one of two classes by provenance and
// data-bearing-ness, on the host's clock. Start, stop, shutdown, reboot and
// create are Benign; guest.config is Benign only for allow-listed keys
// (name, hostname, memory, cores, tags, onboot) and new disk allocations
// ("STORAGE:SIZE_GIB"). Destroying or overwriting a guest's data
// (guest.destroy, guest.restore, volume.wipe, disk.detach, disk.shrink) is
// Destructive unless the host's provenance says the data is not a
// customer's: the agent created this very guest instance as scratch, or
// (guest.destroy only) it is the compensating rollback of the agent's own
// create, never started and within RollbackWindow of it. volume.wipe is
// benign only for a volume that the agent's create allocated for a scratch
// instance, never a backup. signers.rotate and every unknown op are
// Destructive.
//
// Gate.Decide allows a Benign action unsigned; an approval that comes with
// it is still verified, and spent when it holds (see "Admissions"). A
// Destructive action needs an
// Approval (raw blob + armored SSHSIG) that passes the Verifier, whose signer
// role permits the op (a recovery key may only rotate signers; an
// operational key may approve any destructive op, including a planned
// rotation; Request.RequireRole narrows that further) and whose op, host,
// guest and params name exactly the action (Bind). Without an approval the
// answer is ErrPendingSignature. Every decision is written as one slog
// record ("gate decision"); the record is a signal, never the guard.
//
// # Contract with the executors
//
// The gate decides from what its caller passes, so its guarantees hold only
// if the executors (package activities, all in activities/authorize.go and
// the executor beside it) keep to this:
//
//   - Action is the act exactly as it will be sent to Proxmox, computed from
//     the guest as Proxmox shows it now (its real kind, the volume it names),
//     never copied from the activity's input. A guest.config action carries
//     the keys as they will be set, and "delete" when keys are removed; it
//     holds a disk key only when the live guest has no such disk (a change
//     to an existing disk is refused before the gate).
//   - Provenance comes from the host's ledger, counted only for the guest
//     instance it recorded (the live guest carries the create's marker), and
//     from Proxmox (InUse when the guest runs). Nothing in it comes from the
//     hub or from Temporal: no workflow or run id is consulted anywhere.
//   - RequireRole is RoleRecovery for a signers.rotate that changes the
//     recovery keys.
//   - Readmit is called only for an approval the host admitted before with
//     Decide, durably recorded (in the ledger) together with the action and
//     the guest instance it was admitted for, and only for that same action
//     on that same instance. A Readmit skips the time window and the nonce,
//     which the admission passed and spent; everything else runs again.
//   - An approval that came with an act Decide allows as Benign is never
//     admitted: Decide spent it already when it verified
//     (Decision.ApprovalCode is CodeApprovalConsumed), and the act runs
//     whatever its ApprovalCode says, since it needs no signature. The
//     executor passes every approval it received to the gate, benign act or
//     not, so that none outlives the act it was given for.
//
// # Admissions
//
// An approval authorises one act on one guest instance. Decide admits it
// once and burns its nonce; the executor records the admission before it
// sends anything, marks it Started right before the act's first mutating
// request and Done when the act completed (or failed for good after it
// started). A retry of the same act may then finish a Started act even
// after the op expired; an admission whose act never started lapses with
// the op; a Done one authorises nothing more. Admissions are keyed by the
// signed bytes, never by ids the Temporal server hands out.
//
// The executor records an intent to admit before it calls Decide, and only
// while Gate.NonceSpent says the nonce is unspent, under one lock with that
// Decide. Decide still spends the nonce last, after every other stage. A
// worker killed after Decide spent the nonce and before the admission was
// written leaves the intent: the retry's Decide answers ErrReplay, and the
// executor may then Readmit the approval for the intent's act on the
// intent's guest instance, because the host-local nonce store can only have
// been spent, after that intent, by this host's Decide of this approval.
// NonceSpent grants nothing: it parses the blob without verifying it and
// looks the nonce up.
//
// An approval delivered for an act that is Benign when it arrives (the
// rollback of a fresh create, say) is consumed by that act too: Decide runs
// the whole pipeline on it, role and binding included, and spends its nonce
// when everything holds. The op names a guest by VMID, not an instance, so an
// approval left unspent there would be admitted for the next instance at that
// VMID, a started customer guest, within its validity. The benign act runs
// whether or not its approval verifies; Decision.ApprovalCode and the audit
// record's approval_code say which ("approval_consumed", or the refusal's
// code with approval_error), and a refused approval keeps its nonce unused
// like every rejection. A nonce store failure does not block the benign act
// (refusing it would not record the nonce either); the approval may then stay
// unspent, but the failed store refuses every destructive act until it is
// reopened. Not closed by this: an approval that a hostile Temporal server
// withholds from the host and keeps for a later instance of the guest was
// never seen here; only an op that named the guest instance would close it.
//
// # Verify pipeline
//
// Verifier.Verify runs, in this order, each stage with its own error:
//
//	parse armor        ErrArmor          envelope magic, version 1, no trailing bytes, sha256/sha512
//	namespace          ErrNamespace      must be the constant Namespace ("felhom-op-v1")
//	parse public key   ErrPublicKey      ed25519, sk-ssh-ed25519, ECDSA P-256/384/521, sk-ecdsa, RSA ≥ 2048 bits
//	allow-list         ErrUnknownSigner  by key material; key_id in the blob is advisory only
//	crypto             ErrSignature      ssh.PublicKey.Verify over the raw received bytes
//	parse blob         ErrBlob           the bytes must be exactly a canonical op
//	target             ErrWrongHost      host_id must be this host
//	time window        ErrNotYetValid    not_before <= now
//	                   ErrExpired        now < expires_at
//	                   ErrValidityTooLong expires_at - not_before and expires_at - now
//	                                     within the cap (24 h by default, 7 days at most)
//	nonce              ErrReplay         recorded last, so a rejected op never burns its nonce
//
// The gate adds its role (ErrRoleDenied) and binding (ErrBindingMismatch)
// checks after the time window and before the nonce, so a validly signed op
// presented for the wrong action is refused without being used up.
//
// SECURITY.md at the top of the repository is the threat model: the actors
// (hub, Temporal server, network, operator laptop, keys, Proxmox), what each
// can and cannot make a host do, and which code enforces each line.
//
// The signed data follows OpenSSH's PROTOCOL.sshsig and is always built with
// the Namespace constant and an empty reserved field, as OpenSSH does. RSA
// signatures must be rsa-sha2-256 or rsa-sha2-512; a legacy SHA-1 "ssh-rsa"
// signature is refused even though x/crypto would accept it. Security-key
// (sk-*) signatures must carry the user-presence flag: stricter than
// ssh-keygen -Y verify, which accepts a signature made without a touch.
//
// # Canonical op blob
//
// An op is signed as one byte string, produced only by Canonicalize (and
// CanonicalJSON for any other value). The form is RFC 8785, the JSON
// Canonicalization Scheme, restricted to integers:
//
//   - UTF-8, no byte order mark, no whitespace between tokens, no trailing
//     newline.
//   - Object keys sorted by their UTF-16 code units (byte order for ASCII
//     keys), at every level including inside params; no duplicate keys.
//   - Strings escape only '"', '\\' and U+0000..U+001F: \b \f \n \r \t
//     where JSON has a short escape, \u00xx (lower-case hex) otherwise.
//     Everything else, including '/', '<', non-ASCII and U+2028, is written
//     as itself. Strings must be valid UTF-8.
//   - Numbers are integers in ±(2^53-1) written as the shortest decimal
//     (no '+', no leading zeros, no fraction or exponent, never -0). A
//     non-integer, non-finite or larger number is rejected: send it as a
//     string.
//   - An op is an object with exactly the keys expires_at, guest_id,
//     host_id, key_id, nonce, not_before, op, params. Times are RFC 3339 UTC
//     whole seconds ("2026-11-23T08:00:00Z"); params is an object ({} when
//     empty); guest_id is "" or a decimal VMID; nonce is 1..255 bytes
//     without control characters; expires_at is after not_before.
//
// For example:
//
//	{"expires_at":"2026-11-23T09:00:00Z","guest_id":"101","host_id":"pve1","key_id":"ops","nonce":"4f1c","not_before":"2026-11-23T08:00:00Z","op":"guest.destroy","params":{"purge":true}}
//
// The verifier checks the signature over the bytes it received and never
// re-canonicalises them; ParseOp then refuses any blob that is not exactly
// the canonical form of the op it carries, so no two parsers can read two
// different ops out of one signed blob.
//
// # Nonce stores
//
// Replay protection keys on the blob's nonce, never on signature bytes: an
// armored signature can be re-encoded without breaking it. A nonce stays
// used until its op's expires_at, across restarts.
//
// MemoryNonceStore is for tests and tools. FileNonceStore is the agent's
// durable store, kept in an internal/appendlog log: each nonce is synced to
// disk before Use returns, the log is replayed on open (a torn tail is
// truncated, damage before the tail refuses to open with
// ErrNonceLogCorrupt), locked against a second process
// (ErrNonceLogLocked), and after a failed write or sync refuses every Use
// until reopened (ErrNonceLogClosed). It grows until Compact, which drops
// only entries that expired before a given cutoff; the owner of the store
// calls it, e.g. at start with a cutoff a day in the past. See
// nonce_file.go for the record format.
package gate
