package pvesim

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TLSMode selects how the simulator serves.
type TLSMode int

const (
	// TLSSelfSigned serves HTTPS with a fresh self-signed certificate, like a
	// freshly installed Proxmox node. HTTPClient trusts exactly that certificate.
	TLSSelfSigned TLSMode = iota
	// TLSOff serves plain HTTP, for local tooling that cannot load a CA.
	TLSOff
)

// Config configures a simulated node. The zero value is usable.
type Config struct {
	// Node is the node name (default "pve1").
	Node string
	// Addr is the listen address (default "127.0.0.1:0").
	Addr string
	// TLS selects HTTPS with a self-signed certificate (default) or plain HTTP.
	TLS TLSMode
	// TokenID is the one valid API token id, USER@REALM!TOKENNAME
	// (default "root@pam!felhom").
	TokenID string
	// TokenSecret is its secret (default: a random UUID).
	TokenSecret string
	// TaskDuration is how long every task runs before it stops (default 0:
	// tasks finish at once).
	TaskDuration time.Duration
	// TaskDurations overrides TaskDuration per task type ("qmshutdown",
	// "qmrestore", "vzdump"...).
	TaskDurations map[string]time.Duration
	// TaskDurationFunc, when set, decides every task's duration instead of
	// TaskDuration and TaskDurations: it is called once per task, as the
	// task starts running (after it got the guest's lock), with the task
	// type and the guest's VMID (0 for a task on no guest). A benchmark
	// draws random durations with it and sums them per guest.
	TaskDurationFunc func(typ string, vmid int) time.Duration
	// LockTimeout is how long a call waits for a guest's config lock held by
	// another task before failing with "got timeout" (default 10s, as pve).
	LockTimeout time.Duration
	// Logger receives one line per request (default: discard).
	Logger *slog.Logger
	// Clock is the node's clock for task start and end times (UPIDs, task
	// status and list); default time.Now. A test sets it to place a task
	// before or after a moment without waiting for the wall clock.
	Clock func() time.Time
	// RebootRestartDelay is how long qmeventd takes to start a VM again
	// after its reboot task stopped it, with StrictPVE (default 1s; a
	// negative value: at once after the task).
	RebootRestartDelay time.Duration
	// StatsInterval is pvestatd's cycle, with StrictPVE: how old the
	// figures /cluster/resources lists may be (default 10s; a negative
	// value: always current).
	StatsInterval time.Duration
	// HADelay is how long the HA stack takes to act on a start or stop
	// request of an HA-managed guest (default 5s; a negative value: at
	// once, as the request's task ends).
	HADelay time.Duration
	// AuthFailureDelay is how long pveproxy holds back a 401, with
	// StrictPVE (default 3s, as pve-http-server; a negative value: none).
	AuthFailureDelay time.Duration
	// TokenACL are the API token's access control entries (SetTokenACL);
	// nil gives it every privilege.
	TokenACL []ACL
	// StateFile, when set, keeps the node's state across restarts: Start
	// loads it from there if the file exists (Restored), and the state is
	// written there after every change. Its API token secret is kept too,
	// unless TokenSecret names another.
	StateFile string
	// StrictPVE answers exactly as pve also where the simulator is kinder
	// by default (see "Kinder than pve" in the package doc): running tasks
	// listed as "RUNNING", an unknown task a 400 "no such task", volume
	// DELETE without the web UI's guard, storage errors for missing volumes
	// and "can't find file" for a missing restore archive.
	StrictPVE bool
	// RecordReads keeps every GET besides the mutating requests, for Reads:
	// a test or benchmark that counts the calls an agent makes sets it. Off
	// by default, so that a long-running simulator does not grow with every
	// task poll.
	RecordReads bool
}

// Server is a running simulated Proxmox VE node.
type Server struct {
	cfg      Config
	ln       net.Listener
	srv      *http.Server
	client   *http.Client
	certPEM  []byte
	rootCAs  *x509.CertPool
	url      string
	log      *slog.Logger
	closed   chan struct{}
	closeOne sync.Once
	tasksWG  sync.WaitGroup

	mu      sync.Mutex
	guests  map[int]*guest
	flocks  map[int]*flock
	tasks   map[string]*task
	taskSeq uint32
	volumes map[string]*volume
	ha      map[int]string         // HA resources: requested state by VMID
	acl     []ACL                  // the token's; nil: every privilege
	stats   map[int]map[string]any // pvestatd's last figures by VMID (StrictPVE)
	statsAt time.Time

	restored  bool          // the state came from Config.StateFile
	dirty     chan struct{} // the state changed since the last save
	saverDone chan struct{}
	requests  []Request
	reads     []Request    // with RecordReads
	calls     atomic.Int64 // every API request received, reads included
	taskPolls atomic.Int64 // GETs of a task's status or of the active tasks
	faults    []*activeFault
	bootTime  time.Time // real time of the last boot, for pstart
	// bootClock is the last boot on Config.Clock, the node's uptime's
	// origin: a day before Start, then each RebootNode.
	bootClock time.Time
}

// Start starts a simulated node listening on cfg.Addr.
func Start(cfg Config) (*Server, error) {
	if cfg.Node == "" {
		cfg.Node = "pve1"
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.TokenID == "" {
		cfg.TokenID = "root@pam!felhom"
	}
	if !strings.Contains(cfg.TokenID, "!") || !strings.Contains(cfg.TokenID, "@") {
		return nil, fmt.Errorf("pvesim: token id %q is not USER@REALM!TOKENNAME", cfg.TokenID)
	}
	if cfg.LockTimeout == 0 {
		cfg.LockTimeout = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.RebootRestartDelay == 0 {
		cfg.RebootRestartDelay = time.Second
	}
	if cfg.StatsInterval == 0 {
		cfg.StatsInterval = defaultStatsInterval
	}
	if cfg.HADelay == 0 {
		cfg.HADelay = 5 * time.Second
	}
	if cfg.AuthFailureDelay == 0 {
		cfg.AuthFailureDelay = 3 * time.Second
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	s := &Server{
		cfg:      cfg,
		log:      logger,
		closed:   make(chan struct{}),
		guests:   map[int]*guest{},
		flocks:   map[int]*flock{},
		tasks:    map[string]*task{},
		volumes:  map[string]*volume{},
		ha:       map[int]string{},
		acl:      cfg.TokenACL,
		bootTime: time.Now(),
	}
	s.bootClock = cfg.Clock().Add(-24 * time.Hour)
	if cfg.StateFile != "" {
		if err := s.loadState(); err != nil {
			return nil, err
		}
		s.dirty, s.saverDone = make(chan struct{}, 1), make(chan struct{})
	}
	if s.cfg.TokenSecret == "" {
		s.cfg.TokenSecret = randomUUID()
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("pvesim: listen %s: %w", cfg.Addr, err)
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		// HTTP/2 has no Hijacker; error replies and dropped connections need it.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	// Callers send many requests at once (the benchmark's direct loop); keep
	// their connections open between bursts, as pveclient does.
	transport := &http.Transport{ForceAttemptHTTP2: false, MaxIdleConnsPerHost: 64}
	scheme := "http"
	if cfg.TLS == TLSSelfSigned {
		cert, pool, err := selfSignedCert(ln.Addr())
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("pvesim: certificate: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{
			Certificates: []tls.Certificate{cert},
			NextProtos:   []string{"http/1.1"},
			MinVersion:   tls.VersionTLS12,
		})
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		s.rootCAs = pool
		s.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
		scheme = "https"
	}
	s.ln = ln
	s.client = &http.Client{Transport: transport, Timeout: 30 * time.Second}
	s.url = fmt.Sprintf("%s://%s/api2/json", scheme, ln.Addr().String())

	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("pvesim: serve", "err", err)
		}
	}()
	if s.dirty != nil {
		go s.saveLoop()
		s.changed() // a new node's first state, and the token it will keep
	}
	return s, nil
}

// URL is the API base URL, e.g. "https://127.0.0.1:PORT/api2/json", as
// go-proxmox's NewClient takes it.
func (s *Server) URL() string { return s.url }

// Addr is the address the simulator listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Node is the simulated node's name.
func (s *Server) Node() string { return s.cfg.Node }

// TokenID is the valid API token id (USER@REALM!TOKENNAME).
func (s *Server) TokenID() string { return s.cfg.TokenID }

// TokenSecret is the valid API token secret.
func (s *Server) TokenSecret() string { return s.cfg.TokenSecret }

// HTTPClient returns a client that trusts the simulator's certificate. It is
// a new client each call, with a 30s timeout and no retries.
func (s *Server) HTTPClient() *http.Client {
	c := *s.client
	return &c
}

// CertificatePEM is the simulator's self-signed certificate in PEM, for a
// client's CA file; nil with TLSOff.
func (s *Server) CertificatePEM() []byte { return append([]byte(nil), s.certPEM...) }

// RootCAs is a pool holding only the simulator's certificate; nil with TLSOff.
func (s *Server) RootCAs() *x509.CertPool {
	if s.rootCAs == nil {
		return nil
	}
	return s.rootCAs.Clone()
}

// Close stops the listener, aborts running tasks and waits for them.
func (s *Server) Close() error {
	var err error
	s.closeOne.Do(func() {
		close(s.closed)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = s.srv.Shutdown(ctx)
		if err != nil {
			err = s.srv.Close()
		}
		s.tasksWG.Wait()
		if s.dirty != nil {
			<-s.saverDone
			if serr := s.saveState(); serr != nil && err == nil {
				err = fmt.Errorf("pvesim: save state: %w", serr)
			}
		}
	})
	return err
}

// sleep waits for d, returning false when the server closes first.
func (s *Server) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.closed:
		return false
	case <-ctx.Done():
		return false
	}
}

// hold waits until h is released, returning false when the client went
// away or the server closed first. A hold without a hook never ends before
// that.
func (s *Server) hold(ctx context.Context, h *Hook) bool {
	var release <-chan struct{}
	if h != nil {
		release = h.release
	}
	select {
	case <-release:
		return true
	case <-s.closed:
		return false
	case <-ctx.Done():
		return false
	}
}

func randomUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
