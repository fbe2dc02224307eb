// Package activities holds the Temporal activities that act on one Proxmox VE
// node through go-proxmox: reading and listing guests, power steps, config
// changes, creates, and the destructive executors (destroy, restore over an
// existing guest, volume wipe, disk detach/shrink), which run the gate
// themselves, on the host.
//
// Each exported method of *Proxmox is an activity taking (ctx, XInput) and
// returning (XResult, error), all JSON-serialisable. The worker registers
// *Host, whose methods the workflows call by name: one per operation a guest
// workflow runs (CreateGuest, StartGuest, ShutdownGuest, SetConfig,
// DetachDisk, DestroyGuest, RestoreBackup, WipeVolume; steps.go), each a thin
// translation to the *Proxmox activity that does the work; reads and
// listings; wake-ups; signed jobs (RunSignedJob, and RunGuestJob, which hands
// a job on a guest to that guest's workflow); and ExecuteAction, which runs
// any planned action and stays for workflow runs recorded before the
// per-operation activities. The Temporal server may call any of them with
// any input: none decides anything the executors do not decide again.
//
// # Mutations and crash resume
//
// A mutating activity POSTs, immediately records the task's UPID as its
// heartbeat (Progress), then polls the task status, heartbeating on every
// poll, until the task stops. Success is exit status "OK" or "WARNINGS: n"
// (Proxmox's own rule; go-proxmox's Task.Wait gets it wrong and ignores the
// context, so it is not used). A retried attempt reads the last heartbeat and
// resumes waiting on the recorded UPID instead of POSTing again. Where no UPID
// was recorded (the process died between the POST and the heartbeat, or the
// connection dropped after Proxmox acted), the activity first reads the
// guest's real state: start of a running guest, stop/shutdown of a stopped
// one, a config whose values are already set, a destroy of a VMID that is
// gone, are done without a request. If the state does not say done yet, it
// looks in the node's task list for a task of the same type on the same
// guest that is still running (for reboot and restore, which state cannot
// show, also one started since the activity was first scheduled) and waits
// on that one instead of posting. A config change or volume wipe only waits
// for such a task and then looks again, since it may be somebody else's.
//
// A power step is done when the guest's status says so: an HA-managed
// guest's start, stop or shutdown is an "hastart"/"hastop" task that only
// records the request with the HA stack, and a QEMU reboot task ends with
// the VM down (qmeventd starts it after). After its task, a power step
// polls the guest's status until it is as asked, for at most StateWait
// (plus a shutdown's timeout); a recorded hastart/hastop task is resumed
// like the step's own (settle.go).
//
// Every attempt heartbeats as it starts, repeating the previous attempt's
// Progress, and before Proxmox requests (HeartbeatInterceptor, KeepAlive,
// heartbeat.go). A new Progress is also sent straight to the server at once
// (HeartbeatInterceptor's client), so the server holds a task's UPID before
// the task is first polled; the same Progress again is sent at most every
// KeepAliveEvery, through the SDK's batching, which gives a heartbeat most of
// the heartbeat timeout to arrive before it cancels the attempt. Set the
// activity's HeartbeatTimeout well above KeepAliveEvery and the Proxmox
// client's timeout.
//
// Creates keep the host's provenance ledger in step (see Proxmox.create for
// the state-by-state reasoning): the create writes a random instance marker
// into the guest's description, a pending record with that marker is
// fsync'd before the POST, and it is confirmed (with the SMBIOS uuid and the
// volumes Proxmox gave the guest) once a guest carrying the marker exists. A
// retry never claims a guest that does not carry it.
//
// A recorded UPID is heartbeat detail, a claim: it is resumed only if it
// names this node's task of the step's own type for the step's guest.
//
// Proxmox checks a guest's config lock, and waits for its config flock,
// inside the task: a step under a vzdump's "backup" lock, or queued behind
// a long shutdown, comes back as a task that failed ("VM is locked
// (backup)", "can't lock file ... got timeout"), and a task whose node went
// down under it ends "unexpected status". Such a task did not do the step:
// the error is retryable, and the retry does not resume it but reads the
// guest's state and sends the request again if the state still asks for
// it (under the same admission, for an approved act). The task-list
// lookup never adopts such a task either. A lost create or destroy leaves
// its guest locked "create" or "destroyed", which no API token can clear:
// every step refuses such a remnant before the gate (ProxmoxInterrupted,
// not retryable) with the root commands that remove it, and a create keeps
// its pending ledger record for the create after that clean-up (lost.go).
//
// # The gate on the host
//
// Destructive executors take the operator's signed approval in their input and
// call the gate with the action exactly as they are about to perform it (op,
// host, guest, params computed from the guest's real state) and the provenance
// of the live guest instance (authorize.go states the contract). A rejection is
// a non-retryable application error whose type is the gate's code
// ("pending_signature", "binding_mismatch", "replay", ...). A guest with
// protection enabled is refused before the gate runs and before anything is
// stopped: its destroy, a restore over it, and a config change that detaches,
// frees or shrinks one of its disks (Proxmox would refuse the change after the
// approval was spent). An approval authorises one act on one guest instance:
// before the gate is asked, an intent (the approval's key, the action and the
// instance) is fsync'd in the ledger while the approval's nonce is still
// unspent; right after the gate spent the nonce, the intent becomes the
// admission, keyed by the signed bytes and bound to the action and the
// instance; it is marked Started before the act's first mutating request and
// Done after. A retry of that same act on that same instance is re-verified
// (everything but the time window and the nonce) and proceeds; a completed act
// is reported done and never run again. If the process dies between the gate
// spending the nonce and the admission reaching the disk, the retry finds the
// spent nonce and the intent for that act on that instance and completes the
// admission with the one approval; for any other act or instance the spent
// nonce stays a replay (authorize.go lists every interleaving).
//
// SetConfig takes the planner's "name" for a container as its "hostname".
//
// # Errors
//
// Errors are Temporal application errors with stable types (ErrType*):
// locks (in a request or in its task), lost tasks, 5xx, 595/596 and network
// errors are retryable; bad parameters,
// permission, protection, digest mismatch, a taken VMID and a missing guest
// (for any step but destroy) are not. A guest the API token cannot see is a
// ProxmoxPermission error, never a missing guest: Proxmox leaves such a
// guest out of its listings without a word, so a guest is always read
// directly (as a VM, then as a container) before it counts as absent
// (read.go, readStatus); no step on one guest lists the node. A panic
// inside go-proxmox is recovered into a retryable ProxmoxMalformed error.
//
// # Gated actions
//
//	guest.destroy  guest_id=VMID  params {"kind": "qemu"|"lxc"}
//	guest.restore  guest_id=VMID  params {"archive": VOLID[, "storage": STORAGE][, "kind": real kind, when the input names a kind]}
//	volume.wipe    guest_id=owner VMID from the volume name, or ""  params {"volume": VOLID}
//	               (also freeing a guest's unusedN disk: guest_id=that guest)
//	disk.detach    guest_id=VMID  params {"disk": KEY}
//	disk.shrink    guest_id=VMID  params {"disk": KEY, "size_gib": N}
//	guest.config   guest_id=VMID  params {KEY: VALUE..., "delete": "K1,K2"}, when a key is outside
//	               the allow-list (a benign change needs no signature)
package activities
