package pvesim

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const apiRoot = "/api2/json"

// call is one API request being served.
type call struct {
	r      *http.Request
	method string
	path   string   // relative to apiRoot
	segs   []string // path segments
	params url.Values
	fault  *Fault // a task-level or lock fault for this call
	upid   string // task started by this call
	served bool   // its route ran and succeeded
}

func (c *call) param(name string) string { return c.params.Get(name) }

func (c *call) has(name string) bool { _, ok := c.params[name]; return ok }

func (c *call) flag(name string) bool {
	switch strings.ToLower(c.params.Get(name)) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

// guestID is the VMID the request is about, 0 when none.
func (c *call) guestID() int {
	if len(c.segs) >= 4 && c.segs[0] == "nodes" && (c.segs[2] == "qemu" || c.segs[2] == "lxc") {
		if id, err := strconv.Atoi(c.segs[3]); err == nil {
			return id
		}
	}
	if id, err := strconv.Atoi(c.params.Get("vmid")); err == nil {
		return id
	}
	return 0
}

// ServeHTTP serves the Proxmox VE API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	s.calls.Add(1)
	rel, ok := strings.CutPrefix(r.URL.Path, apiRoot)
	if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) {
		writeError(w, &apiError{Status: http.StatusNotImplemented,
			Message: fmt.Sprintf("Method '%s %s' not implemented", r.Method, r.URL.Path)})
		return
	}
	if rel == "" {
		rel = "/"
	}
	c := &call{r: r, method: r.Method, path: rel}
	if t := strings.Trim(rel, "/"); t != "" {
		c.segs = strings.Split(t, "/")
	}
	params, perr := readParams(r)
	c.params = params
	if r.Method == http.MethodGet && len(c.segs) >= 3 && c.segs[0] == "nodes" && c.segs[2] == "tasks" &&
		(len(c.segs) == 5 && c.segs[4] == "status" || len(c.segs) == 3 && params.Get("source") == "active") {
		s.taskPolls.Add(1)
	}

	mutating := r.Method != http.MethodGet && r.Method != http.MethodHead
	recIdx := -1
	vmid := c.guestID()
	if mutating {
		recIdx = s.record(Request{Method: r.Method, Path: rel, Form: cloneValues(params), Time: start, VMID: vmid})
	} else if s.cfg.RecordReads {
		s.recordRead(Request{Method: r.Method, Path: rel, Form: cloneValues(params), Time: start, VMID: vmid})
	}
	status, faultKind := s.serve(w, c, vmid, perr, recIdx)
	if mutating {
		s.changed()
	}
	s.log.Debug("pvesim request", "method", r.Method, "path", rel, "status", status,
		"fault", string(faultKind), "upid", c.upid, "elapsed", time.Since(start))
}

// serve answers the call and returns the HTTP status sent (0: dropped). The
// request record is completed before the client can see any reply, so a
// test reading Requests after a call sees its outcome.
func (s *Server) serve(w http.ResponseWriter, c *call, vmid int, perr error, recIdx int) (int, FaultKind) {
	var kind FaultKind
	var hook *Hook
	reply := func(status int, data any, aerr *apiError) (int, FaultKind) {
		s.finishRecord(recIdx, status, c.upid, kind, c.served)
		switch {
		case status == 0:
			dropConnection(w)
		case data != nil && aerr == nil && (kind == FaultRawReply || kind == FaultRawReplyAfter):
			writeRaw(w, data.(rawBody))
		case aerr != nil:
			writeError(w, aerr)
		default:
			writeJSON(w, data)
		}
		hook.doneNow()
		return status, kind
	}
	if e := s.authenticate(c.r); e != nil {
		if s.cfg.StrictPVE && !s.sleep(c.r.Context(), s.cfg.AuthFailureDelay) {
			return reply(0, nil, nil)
		}
		return reply(e.Status, nil, e)
	}
	if perr != nil {
		e := &apiError{Status: http.StatusBadRequest, Message: "Parameter verification failed.",
			Errors: map[string]string{"body": perr.Error()}}
		return reply(e.Status, nil, e)
	}
	if e := s.checkPermission(c); e != nil {
		return reply(e.Status, nil, e)
	}
	f := s.takeFault(c.method, c.path, vmid)
	if f != nil {
		kind, hook = f.Kind, f.Hook
		if f.Kind != FaultHoldAfter && f.Kind != FaultHoldTask {
			hook.hitNow()
		}
		if f.Kind != FaultDelayAfter && !s.sleep(c.r.Context(), f.Delay) {
			return reply(0, nil, nil)
		}
		if f.Kind == FaultHold && !s.hold(c.r.Context(), hook) {
			return reply(0, nil, nil)
		}
		switch f.Kind {
		case FaultHTTPError:
			e := f.httpError()
			return reply(e.Status, nil, e)
		case FaultDropBefore:
			return reply(0, nil, nil)
		case FaultRawReply:
			return reply(http.StatusOK, rawBody(f.Message), nil)
		case FaultTaskError, FaultTaskWarnings, FaultLockTimeout, FaultSlowTask, FaultHoldTask:
			c.fault = f
		}
	}
	data, aerr := s.safeRoute(c)
	c.served = aerr == nil
	if f != nil && f.Kind == FaultDropAfter {
		return reply(0, nil, nil)
	}
	if f != nil && f.Kind == FaultDelayAfter && !s.sleep(c.r.Context(), f.Delay) {
		return reply(0, nil, nil)
	}
	if f != nil && f.Kind == FaultHoldAfter {
		hook.hitNow()
		if !s.hold(c.r.Context(), hook) {
			return reply(0, nil, nil)
		}
	}
	if f != nil && f.Kind == FaultRawReplyAfter {
		return reply(http.StatusOK, rawBody(f.Message), nil)
	}
	if f != nil && f.Kind == FaultHTTPErrorAfter {
		e := f.httpError()
		return reply(e.Status, nil, e)
	}
	if aerr != nil {
		return reply(aerr.Status, nil, aerr)
	}
	return reply(http.StatusOK, data, nil)
}

// readParams merges the query string and the body (JSON, as go-proxmox
// sends it, or form-encoded, as pvesh and curl do) into one set of strings.
func readParams(r *http.Request) (url.Values, error) {
	params := url.Values{}
	for k, vs := range r.URL.Query() {
		params[k] = vs
	}
	if r.Body == nil {
		return params, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return params, err
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return params, nil
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/json":
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			return params, fmt.Errorf("invalid JSON body: %w", err)
		}
		for k, v := range m {
			if s, ok := jsonParam(v); ok {
				params.Set(k, s)
			}
		}
	default:
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return params, fmt.Errorf("invalid form body: %w", err)
		}
		for k, vs := range form {
			params[k] = vs
		}
	}
	return params, nil
}

func jsonParam(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", false
	case string:
		return x, true
	case bool:
		if x {
			return "1", true
		}
		return "0", true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return "", false
		}
		return string(b), true
	}
}

func notImplemented(c *call) *apiError {
	return &apiError{Status: http.StatusNotImplemented,
		Message: fmt.Sprintf("Method '%s %s%s' not implemented", c.method, apiRoot, c.path)}
}

// safeRoute turns a panic in an endpoint into a 500, so one simulator bug
// shows up as a failed call instead of a dropped connection that looks like
// an injected fault.
func (s *Server) safeRoute(c *call) (data any, aerr *apiError) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("pvesim: endpoint panicked", "method", c.method, "path", c.path, "panic", r)
			data, aerr = nil, errf("pvesim internal error: %v", r)
		}
	}()
	return s.route(c)
}

// route dispatches a call to its endpoint.
func (s *Server) route(c *call) (any, *apiError) {
	seg := c.segs
	n := len(seg)
	get := c.method == http.MethodGet
	if n == 0 {
		if !get {
			return nil, notImplemented(c)
		}
		return []map[string]string{{"subdir": "version"}, {"subdir": "cluster"}, {"subdir": "nodes"},
			{"subdir": "storage"}, {"subdir": "access"}, {"subdir": "pools"}}, nil
	}
	switch {
	case n == 1 && seg[0] == "version" && get:
		return s.versionInfo(), nil
	case seg[0] == "cluster":
		return s.routeCluster(c)
	case n == 2 && seg[0] == "access" && seg[1] == "permissions" && get:
		return s.permissionsReply(c), nil
	case seg[0] == "nodes":
		if n == 1 {
			if get {
				return s.nodeList(), nil
			}
			return nil, notImplemented(c)
		}
		if seg[1] != s.cfg.Node {
			return nil, errf("no such cluster node '%s'", seg[1])
		}
		return s.routeNode(c)
	}
	return nil, notImplemented(c)
}

func (s *Server) routeNode(c *call) (any, *apiError) {
	seg := c.segs
	n := len(seg)
	get := c.method == http.MethodGet
	if n == 2 {
		if get {
			return dirIndex("qemu", "lxc", "status", "storage", "tasks", "version", "vzdump"), nil
		}
		return nil, notImplemented(c)
	}
	switch seg[2] {
	case "status":
		if n == 3 && get {
			return s.nodeStatus(), nil
		}
	case "version":
		if n == 3 && get {
			return s.versionInfo(), nil
		}
	case "qemu":
		return s.routeGuest(c, KindQEMU)
	case "lxc":
		return s.routeGuest(c, KindLXC)
	case "tasks":
		return s.routeTasks(c)
	case "storage":
		return s.routeStorage(c)
	case "vzdump":
		if n == 3 && c.method == http.MethodPost {
			return s.vzdump(c)
		}
	}
	return nil, notImplemented(c)
}

func dirIndex(names ...string) []map[string]string {
	out := make([]map[string]string, len(names))
	for i, n := range names {
		out[i] = map[string]string{"subdir": n}
	}
	return out
}
