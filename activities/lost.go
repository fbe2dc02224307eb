package activities

import (
	"context"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
)

// Lost tasks. A task whose node went down under it (a reboot, a crash)
// ends "unexpected status" and leaves the guest as its worker had it: a
// create leaves a config that holds only the lock "create" (the disks it
// allocated are unreferenced), a destroy that had freed the disks leaves
// one that holds only the lock "destroyed". Proxmox refuses every change
// to a locked guest, and only root@pam may skip the lock (skiplock), which
// an API token never is: such a remnant is for root on the node to clear.
// Every step that meets one refuses it, before the gate, naming the
// commands.

// lockTask are the task types that hold a guest's config lock while they
// run, by lock.
var lockTask = map[string][]string{
	"create":    {"create", "restore"},
	"destroyed": {"destroy"},
}

// lostTaskRemnant returns a non-retryable ProxmoxInterrupted error when g
// is what a lost create or destroy left: locked "create" or "destroyed"
// while no task of that kind runs for it, seen twice a poll apart, so that
// a task just forking is not taken for a lost one. It is nil for any other
// guest, one whose lock a task holds included.
func (a *Proxmox) lostTaskRemnant(ctx context.Context, what string, g Guest) error {
	if _, ok := lockTask[g.Lock]; !g.Exists || !ok {
		return nil
	}
	for look := 0; look < 2; look++ {
		if look > 0 {
			if err := a.pause(ctx); err != nil {
				return err
			}
			now, err := a.readGuest(ctx, g.VMID, g.Kind)
			if err != nil || !now.Exists || now.Lock != g.Lock {
				return err
			}
		}
		if upid, err := a.lockHolder(ctx, g); err != nil || upid != "" {
			return err
		}
	}
	return temporal.NewNonRetryableApplicationError(remnantAdvice(what, g, a.Node), ErrTypeInterrupted, nil)
}

// lockHolder returns a running task of this node that holds g's lock
// "create" or "destroyed", "" for none.
func (a *Proxmox) lockHolder(ctx context.Context, g Guest) (string, error) {
	for _, action := range lockTask[g.Lock] {
		upid, err := a.inFlight(ctx, g.VMID, taskType(g.Kind, action), false)
		if err != nil || upid != "" {
			return upid, err
		}
	}
	return "", nil
}

// remnantAdvice says what a lost task left and how root clears it.
func remnantAdvice(what string, g Guest, node string) string {
	tool := "qm"
	if g.Kind == KindLXC {
		tool = "pct"
	}
	if g.Lock == "destroyed" {
		return fmt.Sprintf("%s: a destroy of guest %d was interrupted (its node lost the task) after it freed the disks; "+
			"what is left is a config locked \"destroyed\", which only root can remove: on node %s run "+
			"`%s unlock %d && %s destroy %d --purge`, then send the guest's workflow the reconcile signal, which reads it again", what, g.VMID, node, tool, g.VMID, tool, g.VMID)
	}
	return fmt.Sprintf("%s: a create of guest %d was interrupted (its node lost the task); what is left is a config "+
		"locked \"create\" without the agent's instance marker, and the disks the create had allocated. Only root can "+
		"remove it: on node %s check `pvesm list STORAGE --vmid %d` of each storage for volumes to keep, then run "+
		"`%s unlock %d && %s destroy %d --purge --destroy-unreferenced-disks 1`; the next reconcile creates the guest again",
		what, g.VMID, node, g.VMID, tool, g.VMID, tool, g.VMID)
}

// pause waits one poll interval.
func (a *Proxmox) pause(ctx context.Context) error {
	interval := a.PollInterval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	t := time.NewTimer(interval)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
