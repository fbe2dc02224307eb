package pvesim

import (
	"net/url"
	"time"
)

// Request is one mutating request (POST, PUT, DELETE) as the simulator
// received it, whatever its outcome.
type Request struct {
	Method string
	// Path is relative to the API root, e.g. "/nodes/pve1/qemu/101/status/start".
	Path string
	// Form holds the query and body parameters, JSON bodies flattened to strings.
	Form url.Values
	Time time.Time
	// VMID is the guest the request is about (from the path or a vmid
	// parameter), 0 when none.
	VMID int
	// Status is the HTTP status answered; 0 when the connection was dropped.
	Status int
	// UPID is the task the request started, if any.
	UPID string
	// Fault names the injected fault kind that hit this request, if any.
	Fault FaultKind
	// Served is whether the request's route ran and succeeded, so that its
	// side effect happened (for a task, that it started: its exit status
	// says the rest), whatever the client was answered: true under a fault
	// "after" the side effect only when the route itself did not refuse
	// the request (a locked guest, say).
	Served bool
}

func (s *Server) record(r Request) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, r)
	return len(s.requests) - 1
}

func (s *Server) finishRecord(i int, status int, upid string, fault FaultKind, served bool) {
	if i < 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i >= len(s.requests) {
		return // reset meanwhile
	}
	s.requests[i].Status = status
	s.requests[i].UPID = upid
	s.requests[i].Served = served
	if fault != "" {
		s.requests[i].Fault = fault
	}
}

// Requests returns every mutating request received since start (or the last
// ResetRequests), oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		r.Form = cloneValues(r.Form)
		out[i] = r
	}
	return out
}

// RequestsMatching returns the recorded requests with this method ("" for
// any) whose path matches pattern, as Fault.Path matches: "*" is one path
// segment, a trailing "/**" any further ones, "" everything.
func (s *Server) RequestsMatching(method, pattern string) []Request {
	var out []Request
	for _, r := range s.Requests() {
		if matchRequest(method, pattern, r.Method, r.Path) {
			out = append(out, r)
		}
	}
	return out
}

// Calls is how many API requests the simulator received since start, of
// every method (reads, task polls and unauthenticated ones included);
// unlike Requests it is not reset.
func (s *Server) Calls() int64 { return s.calls.Load() }

// TaskPolls is how many of the Calls read a task's status
// (GET /nodes/{node}/tasks/{upid}/status) or listed the node's active tasks
// (GET /nodes/{node}/tasks?source=active), since start.
func (s *Server) TaskPolls() int64 { return s.taskPolls.Load() }

// ResetRequests forgets the recorded requests and reads.
func (s *Server) ResetRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
	s.reads = nil
}

func (s *Server) recordRead(r Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads = append(s.reads, r)
}

// Reads returns every GET received since start (or the last ResetRequests),
// oldest first, when Config.RecordReads is set; nil otherwise. Status and
// UPID are not filled in.
func (s *Server) Reads() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.reads))
	for i, r := range s.reads {
		r.Form = cloneValues(r.Form)
		out[i] = r
	}
	return out
}

// ReadsMatching returns the recorded reads whose path matches pattern, as
// RequestsMatching does.
func (s *Server) ReadsMatching(pattern string) []Request {
	var out []Request
	for _, r := range s.Reads() {
		if matchRequest("", pattern, r.Method, r.Path) {
			out = append(out, r)
		}
	}
	return out
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}
