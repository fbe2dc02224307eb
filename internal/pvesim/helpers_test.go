package pvesim_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	proxmox "github.com/luthermonson/go-proxmox"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// rawReply is what a plain net/http client saw.
type rawReply struct {
	Status     string // full status line after the protocol, e.g. "500 VM is locked (backup)"
	StatusCode int
	Body       []byte
	Data       json.RawMessage
}

// raw sends a request with net/http, for what go-proxmox does not expose
// (reason phrases, bodies, endpoints it has no call for).
func raw(t *testing.T, srv *pvesim.Server, method, path string, form url.Values, auth string) rawReply {
	t.Helper()
	var body io.Reader
	if form != nil && method != http.MethodGet && method != http.MethodDelete {
		body = strings.NewReader(form.Encode())
	} else if form != nil {
		path += "?" + form.Encode()
	}
	req, err := http.NewRequestWithContext(context.Background(), method, srv.URL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if auth == "" {
		auth = "PVEAPIToken=" + srv.TokenID() + "=" + srv.TokenSecret()
	}
	if auth != "-" {
		req.Header.Set("Authorization", auth)
	}
	res, err := srv.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	out := rawReply{Status: res.Status, StatusCode: res.StatusCode, Body: b}
	var env struct {
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(b, &env) == nil {
		out.Data = env.Data
	}
	return out
}

func vmOf(t *testing.T, client *proxmox.Client, vmid int) *proxmox.VirtualMachine {
	t.Helper()
	node, err := client.Node(context.Background(), "pve1")
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	vm, err := node.VirtualMachine(context.Background(), vmid)
	if err != nil {
		t.Fatalf("vm %d: %v", vmid, err)
	}
	return vm
}

func ctOf(t *testing.T, client *proxmox.Client, vmid int) *proxmox.Container {
	t.Helper()
	node, err := client.Node(context.Background(), "pve1")
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	ct, err := node.Container(context.Background(), vmid)
	if err != nil {
		t.Fatalf("ct %d: %v", vmid, err)
	}
	return ct
}

func nodeOf(t *testing.T, client *proxmox.Client) *proxmox.Node {
	t.Helper()
	node, err := client.Node(context.Background(), "pve1")
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	return node
}

// postTask POSTs through go-proxmox's generic client call and returns the task.
func postTask(t *testing.T, client *proxmox.Client, path string, params map[string]any) (*proxmox.Task, error) {
	t.Helper()
	var upid proxmox.UPID
	err := client.Post(context.Background(), path, params, &upid)
	if err != nil {
		return nil, err
	}
	return proxmox.NewTask(upid, client), nil
}

// finished waits for a task and returns its exit status.
func finished(t *testing.T, task *proxmox.Task) string {
	t.Helper()
	waitTask(t, task)
	return task.ExitStatus
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// waitTaskDone waits until the simulator's task upid has stopped.
func waitTaskDone(t *testing.T, srv *pvesim.Server, upid string) {
	t.Helper()
	done, ok := srv.TaskDone(upid)
	if !ok {
		t.Fatalf("no task %s", upid)
	}
	<-done
}

func itoa(i int) string { return strconv.Itoa(i) }
