package pveclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
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
