package activities

import (
	"errors"
	"testing"

	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/workflows"
)

// The outcome of a job the guest workflow ran is final: a refusal keeps its
// type and gate code, a failure its type; only not reaching the server is
// retried.
func TestJobOutcome(t *testing.T) {
	tests := []struct {
		name          string
		err           error
		wantType      string
		wantCode      string
		wantRetryable bool
	}{
		{"refused by the gate", temporal.NewNonRetryableApplicationError("replayed", workflows.ErrTypeGateRejection, nil, "replay"),
			workflows.ErrTypeGateRejection, "replay", false},
		{"failed step", temporal.NewApplicationError("task failed", ErrTypeTaskFailed), ErrTypeTaskFailed, "", false},
		{"not a job for this guest", temporal.NewNonRetryableApplicationError("other guest", workflows.ErrTypeInvalidJob, nil),
			workflows.ErrTypeInvalidJob, "", false},
		{"server unreachable", errors.New("connection refused"), "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := jobOutcome(tt.err)
			var appErr *temporal.ApplicationError
			if !errors.As(err, &appErr) {
				if !tt.wantRetryable || err != tt.err {
					t.Fatalf("outcome %v, want it as it came", err)
				}
				return
			}
			if appErr.Type() != tt.wantType || appErr.NonRetryable() == tt.wantRetryable {
				t.Errorf("outcome %v: type %s, non-retryable %v; want %s, %v", err, appErr.Type(), appErr.NonRetryable(), tt.wantType, !tt.wantRetryable)
			}
			var code string
			if appErr.HasDetails() {
				_ = appErr.Details(&code)
			}
			if code != tt.wantCode {
				t.Errorf("code %q, want %q", code, tt.wantCode)
			}
		})
	}
	if jobOutcome(nil) != nil {
		t.Error("no error became one")
	}
	if !isUnknownUpdate(errors.New("unknown update run-job. KnownUpdates=[approve set-desired]")) || isUnknownUpdate(errors.New("unknown update approve")) {
		t.Error("isUnknownUpdate does not tell a workflow without the run-job handler")
	}
}
