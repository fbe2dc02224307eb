package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/workflows"
)

const applyHelp = `Usage: felhomctl apply -f FILE|DIR [flags]

Validates every guest's desired state locally first: one invalid spec and
nothing is sent (exit 2), with the file, the guest and the field named.
Then sends each spec to its guest workflow (guest/HOST/VMID on task queue
felhom-host-HOST) with Update-With-Start: the workflow is started when it
does not run yet, and validates the spec again before it takes it. Prints,
per guest, "accepted (generation N)" or "rejected: REASON"; exits 1 when any
guest was rejected. Applying the same file again is harmless: it only bumps
the generation.
` + specFormatDoc

// applyResult is one guest's answer; JSON field names are stable.
type applyResult struct {
	WorkflowID string `json:"workflow_id"`
	Host       string `json:"host"`
	VMID       int    `json:"vmid"`
	Accepted   bool   `json:"accepted"`
	Generation int    `json:"generation,omitempty"`
	Error      string `json:"error,omitempty"`
}

func (c *command) apply(args []string) error {
	specs, err := c.specsFlag("apply", applyHelp, args)
	if err != nil {
		return err
	}
	ctx, cancel := c.context()
	defer cancel()
	tc, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer tc.Close()

	var results []applyResult
	rejected := 0
	for _, g := range specs {
		r := applyResult{WorkflowID: g.WorkflowID(), Host: g.Spec.Host, VMID: g.Spec.VMID}
		gen, err := c.sendSpec(ctx, tc, g)
		if err != nil {
			if errors.As(err, new(*waitTimeout)) {
				return err
			}
			if !isRejection(err) {
				return fmt.Errorf("%s: %w", r.WorkflowID, err)
			}
			r.Error = rejectionText(err)
			rejected++
		} else {
			r.Accepted, r.Generation = true, gen
		}
		results = append(results, r)
		if !c.json() {
			if r.Accepted {
				fmt.Fprintf(c.stdout, "%s: accepted (generation %d)\n", r.WorkflowID, r.Generation)
			} else {
				fmt.Fprintf(c.stdout, "%s: rejected: %s\n", r.WorkflowID, r.Error)
			}
		}
	}
	if c.json() {
		if err := writeJSON(c.stdout, struct {
			Results []applyResult `json:"results"`
		}{results}); err != nil {
			return err
		}
	}
	if rejected > 0 {
		return errReported
	}
	return nil
}

// sendSpec sends one spec with Update-With-Start and waits for the
// workflow's answer.
func (c *command) sendSpec(ctx context.Context, tc client.Client, g guestSpec) (int, error) {
	var res workflows.SetDesiredResult
	err := c.waitWithProgress(ctx, g.WorkflowID(), nil, func(ctx context.Context) (err error) {
		res, err = workflows.SendDesired(ctx, tc, g.Spec, workflows.GuestInput{})
		return err
	})
	return res.Generation, err
}

// isRejection reports whether err is the workflow's answer (a validator or
// handler error) rather than a failure to reach it.
func isRejection(err error) bool {
	var appErr *temporal.ApplicationError
	return errors.As(err, &appErr)
}

func rejectionText(err error) string {
	var appErr *temporal.ApplicationError
	msg := err.Error()
	if errors.As(err, &appErr) {
		msg = appErr.Message()
	}
	// Joined field errors come one per line; a verdict is one line.
	return strings.ReplaceAll(msg, "\n", "; ")
}
