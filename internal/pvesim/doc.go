// Package pvesim is an in-memory Proxmox VE node that speaks the
// /api2/json REST API the way pveproxy does, for tests, benchmarks and
// `felhom-dev`. It is driven with the real go-proxmox client.
//
// What it simulates, on one node (default "pve1"):
//
//   - API-token authentication ("Authorization: PVEAPIToken=USER@REALM!ID=SECRET");
//     a missing or wrong token is a 401 ("No ticket", "invalid token value!";
//     with StrictPVE "Authentication failed!", as pve-manager says since
//     early 2026, after Config.AuthFailureDelay, 3s as pveproxy holds back
//     every 401).
//   - QEMU VMs and LXC containers: power state, config (memory in MiB, cores,
//     name/hostname, tags, description, disks / rootfs, protection, lock,
//     any other key verbatim), the config digest (SHA-1 of the config text)
//     with its optimistic-concurrency check, QEMU pending changes on a
//     running VM for every key qemu-server neither fast-plugs (name, tags,
//     description, protection, onboot...) nor hot-plugs with its default
//     hotplug "network,disk,usb" (scsi/virtio disks, NICs, cpulimit...):
//     GET config returns pending values unless current=1, and they are
//     applied at the next start or reboot. LXC likewise, with
//     pve-container's fast-plug and hot-plug sets (memory, swap, cores,
//     hostname, NICs, new mount points...).
//   - Listings: /cluster/resources?type=vm, /nodes/{node}/qemu and
//     /nodes/{node}/lxc, plus /cluster/nextid. With StrictPVE the figures of
//     /cluster/resources are pvestatd's: up to Config.StatsInterval (10s)
//     old on Config.Clock, status "unknown" and nothing else for a guest
//     the last cycle did not see, refreshed at RefreshStats; which guests
//     exist, their lock, tags and HA state are live. The figures are shaped
//     as vmstatus makes them: "VM <id>" / "CT<id>" for an unnamed guest,
//     the memory the guest runs with (not a pending change), maxcpu
//     sockets×cores capped at the node's 16 CPUs (vcpus when set; LXC:
//     cores, else cpulimit, else the node's CPUs).
//   - Create, restore over an existing guest (QEMU archive+force, LXC
//     restore+force), start, stop, shutdown (forceStop, timeout), reboot,
//     destroy (purge, destroy-unreferenced-disks), vzdump backups that hold
//     the "backup" lock while they run, and volumes on two storages
//     ("local": backups; "local-lvm": images) with DELETE of a volume;
//     disks detach to unusedN on config delete (freed with force=1, or when
//     an unusedN entry is deleted) and through PUT .../qemu/{vmid}/unlink;
//     PUT .../resize grows a disk in a "resize" task and, as in pve, never
//     shrinks one ("shrinking disks is not supported", "unable to shrink
//     disk size"), so disk.shrink has no API path.
//   - Asynchronous tasks with real UPIDs
//     (UPID:node:PID:PSTART:STARTTIME:type:id:user:), running for
//     Config.TaskDuration (or Config.TaskDurationFunc), then stopped with exitstatus "OK", "WARNINGS: n"
//     or an error text; task status, log, list and stop endpoints.
//   - pve's locking: a task holds the guest's config lock (flock) while it
//     runs (waiters are served first come, first served, from the moment
//     their call was accepted); other changes wait up to Config.LockTimeout
//     and fail with "can't lock file '/var/lock/qemu-server/lock-101.conf' -
//     got timeout". A config lock ("backup", "create"...) refuses changes
//     with "VM is locked (backup)" / "CT is locked (backup)". As in pve,
//     asynchronous calls fork first and wait for the flock, and check the
//     config lock, inside their task, so these come back as failed tasks:
//     QEMU start, stop, shutdown, reboot and destroy, and the QEMU config
//     POST, which also checks lock and digest once before forking and
//     again in the task ("checksum mismatch (file change by other user?)").
//     A stop or shutdown of a VM that does not run ends OK before any lock
//     check. Synchronous calls (config PUT) wait in the request and answer
//     500.
//   - pve's error shape: the message is the reason phrase of the status
//     line ("HTTP/1.1 500 VM is locked (backup)"), written on the hijacked
//     connection because net/http cannot set a reason phrase. A missing guest
//     is a 500 "Configuration file 'nodes/pve1/qemu-server/999.conf' does not
//     exist". Parameter errors are 400 "Parameter verification failed." with
//     an "errors" map.
//   - Fault injection (Inject) per method+path pattern and/or per guest for N
//     requests: HTTP errors (500/595/596/403... with a message; 59x with an
//     empty body as pveproxy sends them), slow requests (before or after
//     the side effect, for client timeouts either side of it), failing or
//     "WARNINGS" task exit statuses, slow tasks, connections dropped before
//     or after the side effect, config-lock timeouts, raw reply bodies
//     (malformed UPIDs, data null) for go-proxmox's panics, and requests
//     held before or after their side effect until the test releases them.
//     A Hook on a fault says when it hit and when its request was answered,
//     and TaskDone when a task stopped, so tests wait on events, not on time.
//   - A record of every mutating request (Requests, RequestsMatching,
//     ResetRequests) with its form values, answer status and task UPID.
//
// The failures operators of Proxmox automation meet, and how to produce them:
//
//   - lock timeouts under parallel updates: a long TaskDuration with a short
//     LockTimeout, or FaultLockTimeout;
//   - "WARNINGS: n" exit statuses: FaultTaskWarnings;
//   - "already running" on a retried start: FaultDropAfter on the start, then
//     start again (QEMU fails in the task, LXC with an immediate 500);
//   - VMID races on /cluster/nextid: AddVM/AddContainer the returned id
//     before the create (pve does not reserve ids either);
//   - protected guests: Guest.Protection (destroy and restore are refused,
//     so is removing a VM's drive or unused volume, in the config task for
//     a POST, and removing or setting a container's mount point; shutdown
//     is not, as in pve);
//   - lost tasks: RebootNode, a node going down under its tasks: each reads
//     "unexpected status" afterwards, a create leaves its guest locked
//     "create" without its config (marker, name) and with its allocated
//     disks, a destroy leaves a config locked "destroyed" after freeing the
//     disks, and the node's uptime (/nodes/{node}/status, on
//     Config.Clock; a day at Start) starts again from zero; FaultHoldTask
//     holds a task where the reboot should hit it;
//   - 596 while pvedaemon is busy: FaultHTTPError with Status 596; a 596
//     for a call pvedaemon went on to execute (pveproxy gives up after
//     30 s): FaultHTTPErrorAfter;
//   - a POST that took effect although the client saw an error:
//     FaultDropAfter, or FaultDelayAfter with a client timeout; one that did
//     not: FaultDropBefore, FaultDelay with a client timeout, or
//     FaultHTTPError.
//
// Where it follows pve rather than what go-proxmox v0.8.2 expects:
//
//   - PUT /nodes/{node}/lxc/{vmid}/config returns data null (no task), so
//     go-proxmox's Container.Config returns a nil *Task and no error.
//   - QEMU "memory" in config is a string ("2048"; a property string since
//     qemu-server 8); LXC "memory" is a number. A QEMU memory set as
//     "current=N" is stored and returned verbatim, which go-proxmox cannot
//     parse (StringOrInt).
//   - Errors carry the message only in the reason phrase; go-proxmox turns
//     500/501 into errors.New(res.Status). 595/596 have an empty body, so
//     go-proxmox reports "unexpected end of JSON input", or nothing at all
//     for calls without a result target (e.g. VirtualMachine.ConfigSync).
//   - Exit status "WARNINGS: n" is a success in pve; go-proxmox's Task marks
//     it IsFailed.
//   - go-proxmox's WithRetry re-sends a POST that has a body after a dropped
//     connection, so an acted-on request is sent twice (FaultDropAfter and
//     Requests show it); a POST without a body is not re-sent.
//   - pve's own message texts are kept, typos and all: QEMU restore over a
//     protected VM fails with "unable to restore VM 101 - - protection mode
//     enabled", and an LXC reboot of a stopped container says "VM 101 not
//     running".
//
// Known differences from a real node:
//
//   - One node, no cluster, replication, pools, firewall, snapshots,
//     clones, migration, cloud-init, agent, console, or ticket (cookie)
//     login; unknown endpoints answer 501 "Method '...' not implemented".
//     HA only as far as a guest's power goes (SetHA): a start, stop or
//     shutdown of an HA resource is an "hastart"/"hastop" task that records
//     the request and ends, and the guest changes after Config.HADelay (or
//     at ApplyHA), out of band; /cluster/ha is not served.
//   - Tasks are not processes: effects happen at the end of the task's
//     duration; a shutdown of a guest that ignores ACPI fails (or, with
//     forceStop, stops, ending "WARNINGS: 1") at the end of the task
//     duration, not after the requested timeout. With StrictPVE a QEMU
//     reboot task ends with the VM stopped, and qmeventd's start (a qmstart
//     task of root@pam) follows after Config.RebootRestartDelay. DELETE of a task ends it with "interrupted by
//     signal" ("received interrupt" with StrictPVE, as pve's worker dies in
//     its signal handler).
//   - A guest being created exists (config with lock "create") from the POST
//     on, as pve's create_and_lock_config makes it; a failed create removes
//     it and a failed restore only drops the lock, as in pve. The config is
//     written whole at the end of the task; pve-container writes an LXC
//     config once earlier (after detecting the OS), so a real container
//     create lost late can carry its config without the lock.
//   - Kinder than pve by default for now (callers must not rely on it;
//     Config.StrictPVE turns all of it off): the
//     volume DELETE refuses an image whose guest exists ("Cannot remove
//     image, a guest with VMID '101' exists!"), a check only pve's web UI
//     makes: the real API frees a stopped guest's disk and fails the imgdel
//     task for a running guest's ("lvremove ... in use"). A missing volume
//     (GET or DELETE) is "volume '...' does not exist" where pve reports the
//     storage tool's error (or, for a gone thin volume, deletes nothing and
//     succeeds). Running tasks in the task list have no status where pve
//     says "RUNNING". A restore from a missing archive says "volume '...'
//     does not exist" where pve says "can't find file '...'". The status or
//     log of an unknown task is a 500 "unable to open file ..." where pve
//     answers the status with a 400 {"upid": "no such task"} and the log
//     with a 200 whose only line is "unable to open file - No such file or
//     directory". A QEMU reboot restarts the VM within its task. A 401 comes
//     at once. Values are checked for their type only, where pve checks
//     their formats too (pveschema: names, network devices, OS types, tags,
//     booleans...), and a create writes memory, cores, sockets and ostype
//     defaults (a container's cores) that pve leaves unset.
//   - The task list's source=active holds running tasks only; pve also keeps
//     recently finished ones there until they are archived.
//   - Permissions are the API token's own ACL (Config.TokenACL,
//     SetTokenACL; none: every privilege), as for a privilege-separated
//     token, with pve's rule that the deepest applying entry wins. Checked:
//     VM.Audit (guest reads; /cluster/resources and the guest lists leave
//     out silently what the token cannot audit), VM.PowerMgmt, VM.Allocate
//     (create, destroy), the VM.Config.* privilege of each config key,
//     Datastore.AllocateSpace for a new disk's storage, Datastore.Audit and
//     Datastore.Allocate for storage content, Sys.Audit on the node (node
//     status, other users' tasks: without it the task list holds the
//     token's own tasks only); a refusal is pve's 403 "Permission check
//     failed (/vms/101, VM.Audit)", before the handler runs, whether the
//     guest exists or not. GET /access/permissions answers the token's
//     effective privileges. Users, groups, roles, pools and the user side
//     of a privilege-separated token are not modelled.
//   - An unknown node name is a 500 with pve-cluster's "no such cluster node
//     'x'"; pveproxy's exact status for it was not verified.
package pvesim
