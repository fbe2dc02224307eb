package gate

import (
	"fmt"
	"time"
)

// Approvals stay readable in workflow history until they expire, so the host
// refuses ops that would stay valid for long: an op signed for years is a
// standing permission, not an approval of one act.
const (
	// DefaultMaxValidity is the longest validity the host accepts unless
	// configured otherwise.
	DefaultMaxValidity = 24 * time.Hour
	// MaxValidityLimit is the most a host may be configured to accept.
	MaxValidityLimit = 7 * 24 * time.Hour
)

// CheckValidity refuses op, with an error wrapping ErrValidityTooLong, when
// its validity (expires_at - not_before) exceeds max or its expires_at lies
// more than max after now. Signing tools call it with their own clock
// before signing; the verifier calls it in its time-window stage.
func CheckValidity(op Op, now time.Time, max time.Duration) error {
	if span := op.ExpiresAt.Sub(op.NotBefore); span > max {
		return fmt.Errorf("%w: valid for %s (not_before %s, expires_at %s), at most %s is accepted",
			ErrValidityTooLong, span, op.NotBefore.Format(TimeLayout), op.ExpiresAt.Format(TimeLayout), max)
	}
	if ahead := op.ExpiresAt.Sub(now); ahead > max {
		return fmt.Errorf("%w: expires_at %s is %s ahead, at most %s is accepted",
			ErrValidityTooLong, op.ExpiresAt.Format(TimeLayout), ahead.Round(time.Second), max)
	}
	return nil
}
