package pveclient

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"
)

// limitTransport holds a request until one of its slots is free, then sends
// it with its timeout; the slot is released when the answer's body is
// closed, since the answer is being read until then.
type limitTransport struct {
	base      http.RoundTripper
	slots     chan struct{} // nil: no bound
	timeout   time.Duration
	keepAlive func(ctx context.Context)
}

func newLimitTransport(base http.RoundTripper, maxConcurrent int, timeout time.Duration, keepAlive func(context.Context)) *limitTransport {
	t := &limitTransport{base: base, timeout: timeout, keepAlive: keepAlive}
	if maxConcurrent > 0 {
		t.slots = make(chan struct{}, maxConcurrent)
	}
	return t
}

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.acquire(req.Context()); err != nil {
		return nil, err
	}
	t.beat(req.Context())
	ctx, cancel := context.WithTimeout(req.Context(), t.timeout)
	res, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel()
		t.release()
		return nil, err
	}
	res.Body = &releasingBody{ReadCloser: res.Body, done: func() { cancel(); t.release() }}
	return res, nil
}

// acquire waits for a slot, keeping the caller alive while it waits.
func (t *limitTransport) acquire(ctx context.Context) error {
	if t.slots == nil {
		return nil
	}
	select {
	case t.slots <- struct{}{}:
		return nil
	default:
	}
	tick := time.NewTicker(KeepAliveInterval)
	defer tick.Stop()
	for {
		t.beat(ctx)
		select {
		case t.slots <- struct{}{}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (t *limitTransport) release() {
	if t.slots != nil {
		<-t.slots
	}
}

func (t *limitTransport) beat(ctx context.Context) {
	if t.keepAlive != nil {
		t.keepAlive(ctx)
	}
}

// releasingBody runs done once, when the body is closed.
type releasingBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}
