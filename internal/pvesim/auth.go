package pvesim

import (
	"crypto/subtle"
	"net/http"
	"strings"
)

// authenticate checks the API token header the way pveproxy does:
// "Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET" (pve also accepts a
// space instead of the first "="). Tickets (cookies) are not simulated.
func (s *Server) authenticate(r *http.Request) *apiError {
	h := r.Header.Get("Authorization")
	if h == "" {
		return &apiError{Status: http.StatusUnauthorized, Message: "No ticket"}
	}
	var rest string
	switch {
	case strings.HasPrefix(h, "PVEAPIToken="):
		rest = strings.TrimPrefix(h, "PVEAPIToken=")
	case strings.HasPrefix(h, "PVEAPIToken "):
		rest = strings.TrimPrefix(h, "PVEAPIToken ")
	default:
		return &apiError{Status: http.StatusUnauthorized, Message: "No ticket"}
	}
	id, secret, ok := strings.Cut(strings.TrimSpace(rest), "=")
	if !ok || !strings.Contains(id, "!") {
		return s.tokenRejected()
	}
	idOK := subtle.ConstantTimeCompare([]byte(id), []byte(s.cfg.TokenID)) == 1
	secretOK := subtle.ConstantTimeCompare([]byte(secret), []byte(s.cfg.TokenSecret)) == 1
	if !idOK || !secretOK {
		return s.tokenRejected()
	}
	return nil
}

// tokenRejected is the 401 for a token that does not verify: pve-manager
// answers every such failure "Authentication failed!" since early 2026
// (the reason goes to its log); older versions passed verify_token's
// "invalid token value!" on.
func (s *Server) tokenRejected() *apiError {
	msg := "invalid token value!"
	if s.cfg.StrictPVE {
		msg = "Authentication failed!"
	}
	return &apiError{Status: http.StatusUnauthorized, Message: msg}
}

// tokenUser is the user part of a UPID for work done with the token, e.g.
// "root@pam!felhom", as pve writes it.
func (s *Server) tokenUser() string { return s.cfg.TokenID }
