package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

const statusHelp = `Usage: felhomctl status HOST/VMID [flags]
       felhomctl status --host HOST VMID [flags]

Shows one guest as its workflow (guest/HOST/VMID) sees it: the desired and
the observed state, the phase (waiting_for_desired_state, converging,
converged, pending_signature, failed, conflict), the action waiting for a
signature, the last error and the last actions. --output json prints the
workflow's status query as it is, plus workflow_id.
`

// statusOutput is status's JSON output: the workflow's GuestStatus, whose
// JSON field names are part of the workflows contract.
type statusOutput struct {
	WorkflowID string `json:"workflow_id"`
	workflows.GuestStatus
}

func (c *command) status(args []string) error {
	fs := c.newFlagSet("status", statusHelp)
	host := fs.String("host", "", "host `ID`, when the guest is given as a bare VMID")
	pos, err := c.parseFlags(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErrorf("HOST/VMID is required, e.g. pve1/101")
	}
	h, vmid, err := parseGuestRef(pos[0], *host)
	if err != nil {
		return err
	}
	id := workflows.GuestWorkflowID(h, vmid)

	ctx, cancel := c.context()
	defer cancel()
	tc, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer tc.Close()
	st, err := c.queryStatus(ctx, tc, id)
	if errors.Is(err, errNoWorkflow) {
		return fmt.Errorf("%s does not exist: no desired state was ever sent for guest %s/%d (felhomctl apply)", id, h, vmid)
	}
	if err != nil {
		return err
	}
	if c.json() {
		return writeJSON(c.stdout, statusOutput{WorkflowID: id, GuestStatus: st})
	}
	c.printStatus(id, st)
	return nil
}

// parseGuestRef reads "HOST/VMID" or the workflow ID "guest/HOST/VMID", or
// "VMID" with --host.
func parseGuestRef(ref, host string) (string, int, error) {
	h, v, ok := strings.Cut(strings.TrimPrefix(ref, "guest/"), "/")
	switch {
	case ok && host != "" && host != h:
		return "", 0, usageErrorf("%q names host %s, --host says %s", ref, h, host)
	case !ok && host == "":
		return "", 0, usageErrorf("%q: give HOST/VMID, or --host HOST with a VMID", ref)
	case !ok:
		h, v = host, ref
	}
	vmid, err := strconv.Atoi(v)
	if err != nil || vmid < 100 || h == "" {
		return "", 0, usageErrorf("%q is not HOST/VMID (a VMID is a number from 100)", ref)
	}
	return h, vmid, nil
}

func (c *command) printStatus(id string, st workflows.GuestStatus) {
	w := c.stdout
	fmt.Fprintf(w, "%s\n", id)
	fmt.Fprintf(w, "  phase:      %s\n", st.Phase)
	fmt.Fprintf(w, "  generation: %d\n", st.Generation)
	if st.Desired != nil {
		d := st.Desired
		fmt.Fprintf(w, "  desired:    %s\n", guestLine(d.State == desired.Absent, string(d.State), d.Kind, d.Name, d.MemoryMiB, d.Cores, d.Tags))
	} else {
		fmt.Fprintf(w, "  desired:    none yet\n")
	}
	if o := st.Observed; o != nil {
		fmt.Fprintf(w, "  observed:   %s\n", guestLine(!o.Exists, o.Status, o.Kind, o.Name, o.MemoryMiB, o.Cores, o.Tags))
	} else {
		fmt.Fprintf(w, "  observed:   not observed yet\n")
	}
	if p := st.Pending; p != nil {
		fmt.Fprintf(w, "  pending:    %s %s: %s, waiting %s for a signature (felhomctl approve %s)\n",
			p.OpTemplate.Op, paramsText(p.OpTemplate.Params), p.Action.Reason, waited(time.Since(p.Since)), id)
		if p.LastRejection != "" {
			fmt.Fprintf(w, "              last approval rejected: %s\n", p.LastRejection)
		}
	}
	if st.LastError != "" {
		fmt.Fprintf(w, "  last error: %s\n", st.LastError)
	}
	if len(st.Recent) == 0 {
		fmt.Fprintf(w, "  last actions: none\n")
		return
	}
	fmt.Fprintf(w, "  last actions:\n")
	recent := st.Recent
	if len(recent) > 10 {
		recent = recent[len(recent)-10:]
	}
	for _, r := range recent {
		line := fmt.Sprintf("    %s  %-8s %s %s", r.At.UTC().Format(time.RFC3339), r.Result, r.Action.Op, paramsText(r.Action.Params))
		if r.Detail != "" {
			line += ": " + r.Detail
		}
		fmt.Fprintln(w, line)
	}
}

func guestLine(absent bool, state string, kind desired.Kind, name string, mem, cores int, tags []string) string {
	if absent {
		return "absent"
	}
	s := fmt.Sprintf("%s %s", state, kind)
	if name != "" {
		s += " name=" + name
	}
	s += fmt.Sprintf(" memory=%dMiB cores=%d", mem, cores)
	if len(tags) > 0 {
		s += " tags=" + strings.Join(tags, ";")
	}
	return s
}
