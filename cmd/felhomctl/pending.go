package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/felhom/felhom-agent/internal/visibility"
	"github.com/felhom/felhom-agent/workflows"
)

const pendingHelp = `Usage: felhomctl pending [--host H] [flags]

Lists every running workflow with an action waiting for an operator's
signature (the visibility query FelhomPendingSignature = true, the same one
the Web UI and "temporal workflow list --query" use), with the exact action
read from each workflow's pending query, why it is planned, and how long it
has waited. Approve one with "felhomctl approve WORKFLOW_ID".

Visibility is eventually consistent: an action that became pending a moment
ago may show up a second later.
`

// pendingItem is one line of pending's output; JSON field names are stable.
type pendingItem struct {
	WorkflowID    string         `json:"workflow_id"`
	Op            string         `json:"op"`
	HostID        string         `json:"host_id"`
	GuestID       string         `json:"guest_id"`
	Params        map[string]any `json:"params"`
	Reason        string         `json:"reason"`
	Since         time.Time      `json:"since"`
	WaitedSeconds int64          `json:"waited_seconds"`
	LastRejection string         `json:"last_rejection,omitempty"`
}

func (c *command) pending(args []string) error {
	fs := c.newFlagSet("pending", pendingHelp)
	host := fs.String("host", "", "only this host `ID`")
	if _, err := c.parseFlags(fs, args, 0); err != nil {
		return err
	}
	if strings.ContainsAny(*host, `'"\`) {
		return usageErrorf("--host %q: not a host id", *host)
	}
	ctx, cancel := c.context()
	defer cancel()
	tc, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer tc.Close()

	items, err := c.listPending(ctx, tc, *host)
	if err != nil {
		return err
	}
	if c.json() {
		return writeList(c, "pending", items)
	}
	if len(items) == 0 {
		fmt.Fprintln(c.stdout, "No action is waiting for a signature.")
		return nil
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKFLOW ID\tOP\tPARAMS\tREASON\tWAITING")
	for _, it := range items {
		reason := it.Reason
		if it.LastRejection != "" {
			reason += " (last approval rejected: " + it.LastRejection + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", it.WorkflowID, it.Op, paramsText(it.Params), reason, waited(time.Duration(it.WaitedSeconds)*time.Second))
	}
	return tw.Flush()
}

// pendingQuery is the visibility query of pending: the shared query (only
// running workflows), optionally of one host.
func pendingQuery(host string) string {
	q := visibility.PendingApprovalsQuery
	if host != "" {
		q += " AND " + visibility.Host + " = '" + host + "'"
	}
	return q
}

func (c *command) listPending(ctx context.Context, tc client.Client, host string) ([]pendingItem, error) {
	var ids []string
	req := &workflowservice.ListWorkflowExecutionsRequest{Namespace: c.clientOptions.Namespace, Query: pendingQuery(host), PageSize: 100}
	for {
		resp, err := tc.ListWorkflow(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("list workflows (%s): %w", req.Query, err)
		}
		for _, e := range resp.GetExecutions() {
			ids = append(ids, e.GetExecution().GetWorkflowId())
		}
		if len(resp.GetNextPageToken()) == 0 {
			break
		}
		req.NextPageToken = resp.GetNextPageToken()
	}
	now := time.Now()
	items := []pendingItem{}
	for _, id := range ids {
		var p *workflows.PendingAction
		if err := c.query(ctx, tc, id, workflows.QueryPending, &p); err != nil {
			if errors.Is(err, errNoWorkflow) {
				continue
			}
			return nil, err
		}
		if p == nil {
			// Approved or re-planned since the listing.
			continue
		}
		items = append(items, pendingItem{
			WorkflowID: id, Op: p.OpTemplate.Op, HostID: p.OpTemplate.HostID, GuestID: p.OpTemplate.GuestID,
			Params: p.OpTemplate.Params, Reason: p.Action.Reason, Since: p.Since,
			WaitedSeconds: int64(now.Sub(p.Since).Seconds()), LastRejection: p.LastRejection,
		})
	}
	slices.SortFunc(items, func(a, b pendingItem) int { return a.Since.Compare(b.Since) })
	return items, nil
}

// waited is a duration as people read it: 45s, 12m, 3h20m, 2d4h.
func waited(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}
