package pveclient

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/testwait"
)

// blockingAPI answers /version only when released, counting the requests
// it is handling at once.
type blockingAPI struct {
	release  chan struct{}
	inFlight atomic.Int32
	maxSeen  atomic.Int32
	served   atomic.Int32
}

func (b *blockingAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	for {
		m := b.maxSeen.Load()
		if n <= m || b.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	b.served.Add(1)
	select {
	case <-b.release:
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"data":{"version":"8.2.4"}}`))
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.For(t, what, 10*time.Second, 5*time.Millisecond, cond)
}

type keepAliveKey struct{}

// At most MaxConcurrent requests are in flight; the others wait, calling
// KeepAlive with their own context, and go out as slots free up. A request
// whose context ends while it waits is never sent.
func TestMaxConcurrentRequests(t *testing.T) {
	api := &blockingAPI{release: make(chan struct{})}
	srv := httptest.NewTLSServer(api)
	defer srv.Close()
	var (
		mu     sync.Mutex
		alive  = map[int]int{} // request number -> KeepAlive calls
		client = must(New(Config{
			URL: srv.URL + "/api2/json", TokenID: "felhom@pve!agent", TokenSecret: "s", InsecureSkipVerify: true,
			MaxConcurrent: 2,
			KeepAlive: func(ctx context.Context) {
				mu.Lock()
				defer mu.Unlock()
				alive[ctx.Value(keepAliveKey{}).(int)]++
			},
		}))
	)
	aliveCalls := func() (requests, calls int) {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range alive {
			requests++
			calls += n
		}
		return requests, calls
	}

	const n = 5
	errs := make(chan error, n)
	for i := range n {
		go func() {
			var v map[string]any
			errs <- client.Get(context.WithValue(context.Background(), keepAliveKey{}, i), "/version", &v)
		}()
	}
	// Two are sent (a KeepAlive each, just before), three wait (a KeepAlive
	// each as they start waiting).
	waitUntil(t, "two requests in flight and three waiting", func() bool {
		reqs, calls := aliveCalls()
		return api.inFlight.Load() == 2 && reqs == n && calls >= n
	})

	// One more, whose caller gives up while it waits: it is never sent.
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), keepAliveKey{}, n))
	abandoned := make(chan error, 1)
	go func() { var v map[string]any; abandoned <- client.Get(ctx, "/version", &v) }()
	waitUntil(t, "the sixth request to wait", func() bool { reqs, _ := aliveCalls(); return reqs == n+1 })
	cancel()
	if err := <-abandoned; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned request: %v, want context.Canceled", err)
	}

	close(api.release)
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("request: %v", err)
		}
	}
	if m := api.maxSeen.Load(); m != 2 {
		t.Errorf("at most %d requests were in flight, want 2", m)
	}
	if s := api.served.Load(); s != n {
		t.Errorf("the API served %d requests, want %d (the abandoned one never sent)", s, n)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// rendezvousAPI answers /version once want requests are in flight at once,
// so that a round of want concurrent requests needs want connections; it
// counts the connections the client opens.
type rendezvousAPI struct {
	want     int32
	inFlight atomic.Int32
	mu       sync.Mutex
	release  chan struct{}
	opened   atomic.Int32
}

func (r *rendezvousAPI) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	release := r.release
	if r.inFlight.Add(1) == r.want {
		close(release)
		r.release = make(chan struct{})
		r.inFlight.Store(0)
	}
	r.mu.Unlock()
	select {
	case <-release:
	case <-req.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"data":{"version":"8.2.4"}}`))
}

// A burst of MaxConcurrent requests leaves its connections open for the
// next: a host's TLS handshakes are paid once, not after every burst (the
// standard transport keeps only two idle connections per host).
func TestConnectionsReusedAcrossBursts(t *testing.T) {
	for _, limit := range []int{2, 8, 32} {
		api := &rendezvousAPI{want: int32(limit), release: make(chan struct{})}
		srv := httptest.NewUnstartedServer(api)
		srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				api.opened.Add(1)
			}
		}
		srv.StartTLS()
		client := must(New(Config{
			URL: srv.URL + "/api2/json", TokenID: "felhom@pve!agent", TokenSecret: "s", InsecureSkipVerify: true,
			MaxConcurrent: limit,
		}))
		const rounds = 3
		for round := range rounds {
			errs := make(chan error, limit)
			for range limit {
				go func() { var v map[string]any; errs <- client.Get(context.Background(), "/version", &v) }()
			}
			for range limit {
				if err := <-errs; err != nil {
					t.Fatalf("limit %d, round %d: %v", limit, round, err)
				}
			}
		}
		if got := api.opened.Load(); got > int32(limit) {
			t.Errorf("limit %d: %d rounds of %d requests opened %d connections, want at most %d", limit, rounds, limit, got, limit)
		}
		srv.Close()
	}
}
