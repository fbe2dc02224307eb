package webui_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/felhom/felhom-agent/internal/devserver/devservertest"
	"github.com/felhom/felhom-agent/internal/webui"
)

func TestMain(m *testing.M) { devservertest.Main(m) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestUIServesPagesAndNamespacesOfTheFrontend(t *testing.T) {
	srv := devservertest.Start(t)
	ui, err := webui.Start(context.Background(), webui.Config{TemporalAddr: srv.FrontendAddr(), Namespace: srv.Namespace()})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer ui.Stop()

	code, body := get(t, ui.URL()+"/")
	if code != http.StatusOK || !strings.Contains(strings.ToLower(body), "<html") {
		t.Fatalf("GET / = %d, body does not look like the UI's page: %.200s", code, body)
	}
	code, body = get(t, ui.URL()+"/api/v1/namespaces")
	if code != http.StatusOK || !strings.Contains(body, `"default"`) {
		t.Fatalf("GET /api/v1/namespaces = %d %.300s, want the default namespace", code, body)
	}
}

func TestTakenAddressFailsClearly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = webui.Start(context.Background(), webui.Config{Addr: l.Addr().String(), TemporalAddr: "127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("Start on a taken address: err = %v, want one naming %s", err, l.Addr())
	}
}
