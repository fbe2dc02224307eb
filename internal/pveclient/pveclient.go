// Package pveclient builds the go-proxmox client the agent talks to its
// Proxmox VE host with, from configuration: API URL, API token, TLS trust and
// a request timeout, and checks at startup that the URL and token work and
// that the token holds every privilege the agent needs (RequiredPrivileges).
//
// The client it builds differs from go-proxmox's defaults in two deliberate
// ways:
//
//   - No retries inside the client (go-proxmox's WithRetry is never used): it
//     re-sends POSTs after network errors, which duplicates a side effect that
//     happened before the connection dropped. Temporal's activity retry policy
//     is the only retry layer, and the activities make retries idempotent.
//   - Every non-2xx HTTP answer becomes an *HTTPError carrying the status code
//     and Proxmox's reason phrase (where Proxmox puts its error text, e.g.
//     "500 VM 101 is locked (backup)"). go-proxmox only turns 400/401/403/500/
//     501 into errors; a 595/596 or 502 with an empty body otherwise surfaces
//     as "unexpected end of JSON input", or as no error at all for calls
//     without a result target.
//
// Every answer is bounded: in time by Timeout, which counts until its body
// has been read (a server that sends its answer a byte at a time cannot
// hold a request longer), and in size by MaxResponseBytes (16 MiB unless
// set; go-proxmox reads a whole body into memory before decoding it), past
// which the request fails with ErrResponseTooLarge.
//
// It can also bound the requests in flight to the host (MaxConcurrent): a
// request waits for a free slot, its Timeout counting from when it has one,
// and KeepAlive is called before each request and while one waits, so that
// the activity issuing it can heartbeat.
package pveclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"
)

// DefaultTimeout bounds every HTTP request when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// DefaultMaxResponseBytes bounds an answer's body when
// Config.MaxResponseBytes is zero: the largest answer the agent reads, the
// node's guest listing, is about 400 bytes a guest, so this is some 40,000
// guests.
const DefaultMaxResponseBytes = 16 << 20

// ErrResponseTooLarge is a Proxmox answer whose body is larger than the
// client's MaxResponseBytes; its reading stops there.
var ErrResponseTooLarge = errors.New("proxmox answer too large")

// Config says how to reach one Proxmox VE host.
type Config struct {
	// URL of the API, e.g. "https://pve1.example:8006/api2/json". A URL
	// without a path gets "/api2/json" appended.
	URL string
	// TokenID is the API token id, "user@realm!tokenname".
	TokenID string
	// The token secret: TokenSecret itself, else the contents of
	// TokenSecretFile, else the environment variable named TokenSecretEnv.
	TokenSecret     string
	TokenSecretFile string
	TokenSecretEnv  string
	// CAFile is a PEM bundle the host's certificate must chain to. Without it
	// (and without RootCAs) the system roots are used.
	CAFile string
	// RootCAs is a programmatic alternative to CAFile (embedded simulator).
	RootCAs *x509.CertPool
	// InsecureSkipVerify turns certificate verification off; it has to be
	// asked for explicitly and cannot be combined with a CA.
	InsecureSkipVerify bool
	// Timeout bounds each HTTP request (DefaultTimeout when zero), from the
	// moment it has a slot until its answer is read.
	Timeout time.Duration
	// MaxResponseBytes bounds the body of one answer
	// (DefaultMaxResponseBytes when zero).
	MaxResponseBytes int64
	// MaxConcurrent bounds the requests in flight at once; zero or less is
	// no bound. A request beyond it waits for a slot, or for its context.
	// As many connections are kept open between requests.
	MaxConcurrent int
	// KeepAlive, when set, is called with a request's context just before the
	// request is sent and every KeepAliveInterval while it waits for a slot.
	KeepAlive func(ctx context.Context)
	// Observe, when set, is told of every request: its method, the HTTP
	// status (0 when no answer came) and how long it took, from the moment
	// it was sent (the wait for a slot is not counted).
	Observe func(method string, status int, took time.Duration)
}

// idleConnsUnbounded is how many idle connections to the host are kept
// open when MaxConcurrent sets no bound.
const idleConnsUnbounded = 32

// KeepAliveInterval is how often KeepAlive is called for a request waiting
// for a slot.
const KeepAliveInterval = 10 * time.Second

// ErrConfig wraps every configuration problem New reports.
var ErrConfig = errors.New("proxmox config")

// New validates cfg and builds the client. It does not contact the host; call
// Check for that.
func New(cfg Config) (*proxmox.Client, error) {
	base, err := apiURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.TokenID == "" {
		return nil, fmt.Errorf("%w: token id is required (user@realm!tokenname)", ErrConfig)
	}
	if at, bang := strings.Index(cfg.TokenID, "@"), strings.LastIndex(cfg.TokenID, "!"); at <= 0 || bang < at || bang == len(cfg.TokenID)-1 {
		return nil, fmt.Errorf("%w: token id %q is not of the form user@realm!tokenname", ErrConfig, cfg.TokenID)
	}
	secret, err := tokenSecret(cfg)
	if err != nil {
		return nil, err
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case cfg.InsecureSkipVerify && (cfg.CAFile != "" || cfg.RootCAs != nil):
		return nil, fmt.Errorf("%w: insecure TLS and a CA are mutually exclusive", ErrConfig)
	case cfg.InsecureSkipVerify:
		tlsConf.InsecureSkipVerify = true
	case cfg.CAFile != "":
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: read CA file: %w", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate", ErrConfig, cfg.CAFile)
		}
		tlsConf.RootCAs = pool
	case cfg.RootCAs != nil:
		tlsConf.RootCAs = cfg.RootCAs
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	maxBody := cfg.MaxResponseBytes
	if maxBody <= 0 {
		maxBody = DefaultMaxResponseBytes
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	// Keep a connection per request slot open between bursts: the standard
	// transport keeps two per host, so every burst of activities would pay
	// its TLS handshakes again, on both sides.
	tr.MaxIdleConnsPerHost = idleConnsUnbounded
	if cfg.MaxConcurrent > 0 {
		tr.MaxIdleConnsPerHost = cfg.MaxConcurrent
	}
	hc := &http.Client{
		// The timeout is the limiter's, not http.Client's: a request waiting
		// for a slot has not started yet.
		Transport: newLimitTransport(&statusTransport{base: tr, observe: cfg.Observe, maxBody: maxBody}, cfg.MaxConcurrent, timeout, cfg.KeepAlive),
		// The API never redirects; following one would re-send the token.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return proxmox.NewClient(base,
		proxmox.WithHTTPClient(hc),
		proxmox.WithAPIToken(cfg.TokenID, secret),
		proxmox.WithUserAgent("felhom-agent"),
	), nil
}

func apiURL(raw string) (string, error) {
	if raw == "" {
		return "", fmt.Errorf("%w: URL is required (https://HOST:8006/api2/json)", ErrConfig)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%w: URL %q: %w", ErrConfig, raw, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return "", fmt.Errorf("%w: URL %q: scheme must be https", ErrConfig, raw)
	}
	if u.Host == "" {
		return "", fmt.Errorf("%w: URL %q has no host", ErrConfig, raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%w: URL %q must not have a query or fragment", ErrConfig, raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	if u.Path == "" {
		u.Path = "/api2/json"
	}
	return u.String(), nil
}

func tokenSecret(cfg Config) (string, error) {
	switch {
	case cfg.TokenSecret != "":
		return cfg.TokenSecret, nil
	case cfg.TokenSecretFile != "":
		b, err := os.ReadFile(cfg.TokenSecretFile)
		if err != nil {
			return "", fmt.Errorf("%w: read token secret file: %w", ErrConfig, err)
		}
		s := strings.TrimSpace(string(b))
		if s == "" {
			return "", fmt.Errorf("%w: token secret file %s is empty", ErrConfig, cfg.TokenSecretFile)
		}
		return s, nil
	case cfg.TokenSecretEnv != "":
		s := strings.TrimSpace(os.Getenv(cfg.TokenSecretEnv))
		if s == "" {
			return "", fmt.Errorf("%w: environment variable %s (token secret) is empty or unset", ErrConfig, cfg.TokenSecretEnv)
		}
		return s, nil
	}
	return "", fmt.Errorf("%w: token secret is required (secret, secret file or environment variable)", ErrConfig)
}

// HTTPError is a non-2xx answer from the Proxmox API.
type HTTPError struct {
	Method     string
	Path       string
	StatusCode int
	// Message is Proxmox's error text: the reason phrase of the status line,
	// followed by the per-parameter errors of a 400.
	Message string
	Body    []byte
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("proxmox %s %s: %d %s", e.Method, e.Path, e.StatusCode, e.Message)
}

// Is lets errors.Is(err, proxmox.ErrNotAuthorized) keep working for 401/403.
func (e *HTTPError) Is(target error) bool {
	return target == proxmox.ErrNotAuthorized && (e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden)
}

type statusTransport struct {
	base    http.RoundTripper
	observe func(method string, status int, took time.Duration)
	maxBody int64
}

func (t *statusTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	res, err := t.base.RoundTrip(req)
	if t.observe != nil {
		status := 0
		if err == nil {
			status = res.StatusCode
		}
		t.observe(req.Method, status, time.Since(start))
	}
	if err != nil {
		return res, err
	}
	if res.StatusCode >= 200 && res.StatusCode < 300 {
		if res.ContentLength > t.maxBody {
			res.Body.Close()
			return nil, fmt.Errorf("%w: %s %s: %d bytes announced, more than %d", ErrResponseTooLarge,
				req.Method, strings.TrimPrefix(req.URL.Path, "/api2/json"), res.ContentLength, t.maxBody)
		}
		res.Body = &boundedBody{ReadCloser: res.Body, left: t.maxBody,
			what: req.Method + " " + strings.TrimPrefix(req.URL.Path, "/api2/json"), max: t.maxBody}
		return res, nil
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	msg := strings.TrimSpace(strings.TrimPrefix(res.Status, strconv.Itoa(res.StatusCode)))
	if msg == "" {
		msg = http.StatusText(res.StatusCode)
	}
	if res.StatusCode == http.StatusBadRequest {
		if details := badRequestDetails(body); details != "" {
			msg += ": " + details
		}
	}
	return nil, &HTTPError{
		Method:     req.Method,
		Path:       strings.TrimPrefix(req.URL.Path, "/api2/json"),
		StatusCode: res.StatusCode,
		Message:    msg,
		Body:       body,
	}
}

// boundedBody fails a read past max bytes, so that a huge answer cannot
// fill the worker's memory.
type boundedBody struct {
	io.ReadCloser
	left, max int64
	what      string
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly max bytes from a longer one.
		var one [1]byte
		if n, err := b.ReadCloser.Read(one[:]); n == 0 {
			return 0, err
		}
		return 0, fmt.Errorf("%w: %s: more than %d bytes", ErrResponseTooLarge, b.what, b.max)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// Check contacts the host and fails with a clear message when the URL is
// wrong, the certificate is not trusted, the token is rejected or lacks a
// privilege the agent needs (a *MissingPrivilegesError naming each), or node
// is not a node of this host. Meant for startup.
func Check(ctx context.Context, c *proxmox.Client, node string) error {
	var v proxmox.Version
	if err := c.Get(ctx, "/version", &v); err != nil {
		return describe("check Proxmox API", err)
	}
	if v.Version == "" {
		return errors.New("check Proxmox API: /version answered without a version: is the URL a Proxmox VE API (…/api2/json)?")
	}
	if node == "" {
		return nil
	}
	if err := CheckPrivileges(ctx, c, node); err != nil {
		return err
	}
	var st map[string]any
	if err := c.Get(ctx, "/nodes/"+url.PathEscape(node)+"/status", &st); err != nil {
		return describe(fmt.Sprintf("check node %q", node), err)
	}
	if st == nil {
		return fmt.Errorf("check node %q: no status returned: is %q the name of this Proxmox node?", node, node)
	}
	return nil
}

func describe(what string, err error) error {
	var he *HTTPError
	var ue *url.Error
	var certErr *tls.CertificateVerificationError
	var unk x509.UnknownAuthorityError
	var host x509.HostnameError
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.As(err, &he) && (he.StatusCode == 401 || he.StatusCode == 403):
		return fmt.Errorf("%s: the API token was rejected (%d %s): check the token id and secret, and the token's privileges: %w",
			what, he.StatusCode, he.Message, err)
	case errors.As(err, &he) && (he.StatusCode == 404 || he.StatusCode == 501):
		return fmt.Errorf("%s: no such API path (%d %s): is the URL the Proxmox VE API (https://HOST:8006/api2/json)?: %w",
			what, he.StatusCode, he.Message, err)
	case errors.As(err, &he):
		return fmt.Errorf("%s: %w", what, err)
	case errors.As(err, &certErr), errors.As(err, &unk), errors.As(err, &host):
		return fmt.Errorf("%s: the host's TLS certificate is not trusted: configure its CA file, or allow insecure TLS explicitly: %w", what, err)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("%s: cannot resolve the host name in the URL: %w", what, err)
	case errors.As(err, &opErr):
		return fmt.Errorf("%s: cannot connect to the URL's host and port: %w", what, err)
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ue) && ue.Timeout()):
		return fmt.Errorf("%s: timed out: %w", what, err)
	case strings.Contains(err.Error(), "invalid character") || strings.Contains(err.Error(), "cannot unmarshal"):
		return fmt.Errorf("%s: the answer is not Proxmox API JSON: is the URL the Proxmox VE API (https://HOST:8006/api2/json)?: %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// badRequestDetails renders Proxmox's per-parameter errors of a 400
// ({"errors":{"memory":"value must be at least 16"}}) in a stable order.
func badRequestDetails(body []byte) string {
	var b struct {
		Errors map[string]string `json:"errors"`
	}
	if json.Unmarshal(body, &b) != nil || len(b.Errors) == 0 {
		return ""
	}
	keys := make([]string, 0, len(b.Errors))
	for k := range b.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + ": " + strings.TrimSpace(b.Errors[k])
	}
	return strings.Join(parts, "; ")
}
