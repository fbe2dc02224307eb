package worker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/felhom/felhom-agent/internal/visibility"
)

// watchGuests keeps the felhom_guests and felhom_pending_approvals gauges:
// at start and every drift_check_interval until ctx ends, it counts this
// host's running guest workflows by the phase and pending-signature search
// attributes they upsert.
func watchGuests(ctx context.Context, c client.Client, cfg Config, m *Metrics, log *slog.Logger) {
	tick := time.NewTicker(cfg.DriftCheckInterval)
	defer tick.Stop()
	for {
		byPhase, pending, err := countGuests(ctx, c, cfg.Temporal.Namespace, cfg.HostID)
		if err == nil {
			m.Guests(byPhase, pending)
		} else if ctx.Err() == nil {
			log.Warn("metrics: counting guest workflows failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func countGuests(ctx context.Context, c client.Client, namespace, hostID string) (map[string]int, int, error) {
	byPhase := map[string]int{}
	pending := 0
	req := &workflowservice.ListWorkflowExecutionsRequest{
		Namespace: namespace,
		Query:     fmt.Sprintf("%s = '%s' AND ExecutionStatus = 'Running'", visibility.Host, hostID),
		PageSize:  1000,
	}
	dc := converter.GetDefaultDataConverter()
	for {
		resp, err := c.ListWorkflow(ctx, req)
		if err != nil {
			return nil, 0, err
		}
		for _, e := range resp.GetExecutions() {
			if !strings.HasPrefix(e.GetExecution().GetWorkflowId(), "guest/") {
				continue
			}
			fields := e.GetSearchAttributes().GetIndexedFields()
			var phase string
			if p := fields[visibility.Phase]; p != nil {
				_ = dc.FromPayload(p, &phase)
			}
			byPhase[phase]++
			var waiting bool
			if p := fields[visibility.PendingSignature]; p != nil {
				_ = dc.FromPayload(p, &waiting)
			}
			if waiting {
				pending++
			}
		}
		if len(resp.GetNextPageToken()) == 0 {
			return byPhase, pending, nil
		}
		req.NextPageToken = resp.GetNextPageToken()
	}
}
