package gate

import (
	"context"
	"log/slog"
)

// audit writes one structured record per decision. The record is a signal
// for operators and alerting; the decision never depends on it.
func (g *Gate) audit(ctx context.Context, req Request, d Decision, err error) {
	a := req.Action
	attrs := []slog.Attr{
		slog.Bool("allowed", d.Allowed),
		slog.String("code", d.Code),
		slog.String("class", string(d.Class)),
		slog.String("op", a.Op),
		slog.String("host_id", a.HostID),
		slog.String("guest_id", a.GuestID),
		slog.Group("provenance",
			slog.Bool("agent_created", req.Provenance.AgentCreated),
			slog.Bool("scratch", req.Provenance.Scratch),
			slog.Bool("in_use", req.Provenance.InUse)),
		slog.Bool("approval", req.Approval != nil),
	}
	if req.RequireRole != "" {
		attrs = append(attrs, slog.String("require_role", string(req.RequireRole)))
	}
	if params, perr := CanonicalJSON(a.Params); perr == nil {
		attrs = append(attrs, slog.String("params", string(params)))
	}
	if v := d.Op; v != nil {
		attrs = append(attrs, slog.Group("signed",
			slog.String("signer", v.Fingerprint),
			slog.String("role", string(v.Signer.Role)),
			slog.String("key_id", v.Op.KeyID),
			slog.String("nonce", v.Op.Nonce),
			slog.String("sig_alg", v.SigAlgorithm),
			slog.Time("expires_at", v.Op.ExpiresAt)))
	}
	if d.ApprovalCode != "" {
		attrs = append(attrs, slog.String("approval_code", d.ApprovalCode))
	}
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	if d.ApprovalErr != nil {
		// A benign act ran, but the approval that came with it was refused.
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("approval_error", d.ApprovalErr.Error()))
	}
	g.log.LogAttrs(ctx, level, "gate decision", attrs...)
	if g.observe != nil {
		g.observe(d)
	}
}
