package temporalclient_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"

	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/temporalclient"
)

func TestFrontends(t *testing.T) {
	tests := []struct {
		address string
		want    []string // nil: an error
	}{
		{"127.0.0.1:7233", []string{"127.0.0.1:7233"}},
		{"a.example:7233,b.example:7233", []string{"a.example:7233", "b.example:7233"}},
		{" a.example:7233 , b.example:7234", []string{"a.example:7233", "b.example:7234"}},
		{"dns:///temporal.example:7233", []string{"temporal.example:7233"}},
		{"temporal.example", nil},
		{"a.example:7233,", nil},
		{"a.example:7233,b.example", nil},
		{"dns:///temporal.example", nil},
		{"", nil},
	}
	for _, tt := range tests {
		t.Run(tt.address, func(t *testing.T) {
			got, err := temporalclient.Frontends(tt.address)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("Frontends(%q) = %v, want an error", tt.address, got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("Frontends(%q) = %v, %v; want %v", tt.address, got, err, tt.want)
			}
		})
	}
}

// With several frontends, a dead one is skipped: every call reaches the
// live one. One dead frontend alone fails the dial.
func TestDialSkipsAFrontendThatIsDown(t *testing.T) {
	srv := devservertest.Start(t)
	const dead = "127.0.0.1:1"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)

	c, err := temporalclient.Dial(ctx, temporalclient.Config{Address: dead + "," + srv.FrontendAddr(), Namespace: srv.Namespace()}, log, nil)
	if err != nil {
		t.Fatalf("dial %s and %s: %v", dead, srv.FrontendAddr(), err)
	}
	defer c.Close()
	for i := range 10 {
		if _, err := c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: srv.Namespace()}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}

	short, cancelShort := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancelShort()
	if c, err := temporalclient.Dial(short, temporalclient.Config{Address: dead, Namespace: srv.Namespace()}, log, nil); err == nil {
		c.Close()
		t.Fatalf("dial of only %s succeeded", dead)
	}
}
