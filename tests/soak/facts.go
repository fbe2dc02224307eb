package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/internal/appendlog"
	"github.com/felhom/felhom-agent/internal/historyfacts"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

type workflowExecutionInfo = workflowpb.WorkflowExecutionInfo

// guestFinals reads, for every guest the soak sent a desired state, what
// Proxmox holds (the fact) and what its workflow says (phase, pending act).
func (f *fleet) guestFinals(ctx context.Context) []guestFinal {
	var out []guestFinal
	for _, g := range f.guests {
		g.mu.Lock()
		if g.spec == nil {
			g.mu.Unlock()
			continue
		}
		spec, _ := desired.Normalise(*g.spec)
		gf := guestFinal{Host: g.host.id, VMID: g.vmid, Desired: &spec, Confirmed: g.confirmed == g.version}
		g.mu.Unlock()
		if pg, ok := g.host.sim.Guest(g.vmid); ok {
			gf.Exists, gf.Kind, gf.Status, gf.Lock = true, string(pg.Kind), pg.Status, pg.Lock
			gf.MemoryMiB, gf.Cores = pg.MemoryMiB, pg.Cores
			// A running VM takes memory and cores at its next start; the
			// agent reads the pending value, as Proxmox shows it.
			if v, ok := pg.Pending["memory"]; ok {
				fmt.Sscan(v, &gf.MemoryMiB)
			}
			if v, ok := pg.Pending["cores"]; ok {
				fmt.Sscan(v, &gf.Cores)
			}
			gf.DiskGiB = map[string]int{}
			for k, v := range pg.Disks {
				if vol, err := desired.ParseVolume(v); err == nil {
					gf.DiskGiB[k] = vol.SizeGiB
				}
			}
		}
		st, err := f.queryStatus(ctx, g.host.id, g.vmid, 10*time.Second)
		if err != nil {
			gf.QueryErr = firstLine(err.Error())
		} else {
			gf.Phase, gf.LastError = st.Phase, st.LastError
			if st.Pending != nil {
				gf.PendingOp = st.Pending.Action.Op
			}
		}
		out = append(out, gf)
	}
	return out
}

// workflowFacts describes every open workflow (pending activities, open
// timers from its history) and lists the ones closed abnormally.
func (f *fleet) workflowFacts(ctx context.Context) ([]workflowFinal, []closedWorkflow, error) {
	phase := map[string]string{}
	for _, g := range f.guestFinals(ctx) {
		phase[workflows.GuestWorkflowID(g.Host, g.VMID)] = g.Phase
	}
	open, err := f.list(ctx, "ExecutionStatus = 'Running'")
	if err != nil {
		return nil, nil, err
	}
	var finals []workflowFinal
	for _, e := range open {
		id, run := e.GetExecution().GetWorkflowId(), e.GetExecution().GetRunId()
		wf := workflowFinal{ID: id, Type: e.GetType().GetName(), Phase: phase[id]}
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		desc, err := f.tc.DescribeWorkflowExecution(dctx, id, run)
		cancel()
		if err != nil {
			wf.Err = firstLine(err.Error())
			finals = append(finals, wf)
			continue
		}
		if desc.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			continue // closed since the listing (continued as new)
		}
		wf.PendingActivities = len(desc.GetPendingActivities())
		wf.WorkflowTaskPending = desc.GetPendingWorkflowTask() != nil
		if wf.OpenTimers, err = f.openTimers(ctx, id, run); err != nil {
			wf.Err = firstLine(err.Error())
		}
		finals = append(finals, wf)
	}
	bad, err := f.list(ctx, "ExecutionStatus = 'Terminated' OR ExecutionStatus = 'TimedOut' OR ExecutionStatus = 'Failed'")
	if err != nil {
		return nil, nil, err
	}
	var closed []closedWorkflow
	for _, e := range bad {
		closed = append(closed, closedWorkflow{ID: e.GetExecution().GetWorkflowId(), Status: e.GetStatus().String()})
	}
	return finals, closed, nil
}

func (f *fleet) list(ctx context.Context, query string) ([]*workflowExecutionInfo, error) {
	var out []*workflowExecutionInfo
	var token []byte
	for {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := f.tc.ListWorkflow(lctx, &workflowservice.ListWorkflowExecutionsRequest{Query: query, NextPageToken: token, PageSize: 500})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list workflows %q: %w", query, err)
		}
		out = append(out, resp.GetExecutions()...)
		if token = resp.GetNextPageToken(); len(token) == 0 {
			return out, nil
		}
	}
}

// openTimers counts the timers a run started that neither fired nor were
// cancelled.
func (f *fleet) openTimers(ctx context.Context, id, run string) (int, error) {
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	it := f.tc.GetWorkflowHistory(hctx, id, run, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var evs []*historypb.HistoryEvent
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			return 0, err
		}
		evs = append(evs, ev)
	}
	return historyfacts.OpenTimers(evs), nil
}

// hostFacts reads what happened on a host whose worker is stopped: the
// simulator's request log with each task's exit status, the gate's audit
// records from the worker's log, and every admission its ledger held.
func (f *fleet) hostFacts(h *host) (*hostEvidence, error) {
	he := &hostEvidence{Requests: h.sim.Requests(), TaskExit: map[string]string{}}
	h.chaos.mu.Lock()
	he.Reboots = append([]time.Time(nil), h.chaos.reboots...)
	h.chaos.mu.Unlock()
	for _, r := range he.Requests {
		if r.UPID == "" {
			continue
		}
		exit, err := taskExit(h, r.UPID)
		if err != nil {
			return nil, err
		}
		he.TaskExit[r.UPID] = exit
	}
	var err error
	if he.Decisions, err = readDecisions(h.log); err != nil {
		return nil, err
	}
	if he.Admissions, err = readAdmissions(h); err != nil {
		return nil, err
	}
	return he, nil
}

// taskExit asks the simulator, as a client would, for a task's exit
// status; "" while it runs.
func taskExit(h *host, upid string) (string, error) {
	var body struct {
		Data struct {
			Status     string `json:"status"`
			ExitStatus string `json:"exitstatus"`
		} `json:"data"`
	}
	err := simGet(h, "/nodes/"+h.sim.Node()+"/tasks/"+url.PathEscape(upid)+"/status", &body)
	var status *httpStatusError
	if errors.As(err, &status) {
		return "unknown task (" + status.status + ")", nil
	}
	return body.Data.ExitStatus, err
}

type httpStatusError struct{ status string }

func (e *httpStatusError) Error() string { return e.status }

// simGet GETs path (below the API root) from the host's simulator with its
// API token and decodes the JSON answer into out.
func simGet(h *host, path string, out any) error {
	req, err := http.NewRequest(http.MethodGet, h.sim.URL()+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "PVEAPIToken="+h.sim.TokenID()+"="+h.sim.TokenSecret())
	resp, err := h.sim.HTTPClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &httpStatusError{resp.Status}
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// readDecisions reads the gate's audit records ("gate decision") from a
// worker's JSON log.
func readDecisions(path string) ([]gateDecision, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var out []gateDecision
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !strings.Contains(string(line), `"gate decision"`) {
			continue
		}
		var rec struct {
			Time       time.Time `json:"time"`
			Msg        string    `json:"msg"`
			Allowed    bool      `json:"allowed"`
			Code       string    `json:"code"`
			Approval   string    `json:"approval_code"`
			Op         string    `json:"op"`
			HostID     string    `json:"host_id"`
			GuestID    string    `json:"guest_id"`
			Params     string    `json:"params"`
			Provenance struct {
				AgentCreated bool `json:"agent_created"`
			} `json:"provenance"`
			Signed struct {
				Nonce string `json:"nonce"`
			} `json:"signed"`
		}
		if err := json.Unmarshal(line, &rec); err != nil || rec.Msg != "gate decision" {
			continue // a line cut short by a kill
		}
		out = append(out, gateDecision{Time: rec.Time, Allowed: rec.Allowed, Code: rec.Code, Op: rec.Op, Host: rec.HostID,
			Guest: rec.GuestID, Params: rec.Params, AgentCreated: rec.Provenance.AgentCreated, Nonce: rec.Signed.Nonce, ApprovalCode: rec.Approval})
	}
	return out, sc.Err()
}

// readAdmissions replays every copy of the host's ledger (taken before each
// worker start, which compacts it) and the ledger itself, and returns each
// admission once, as it was admitted.
func readAdmissions(h *host) ([]ledger.Admission, error) {
	files, _ := filepath.Glob(filepath.Join(h.snapDir(), "*-provenance.log"))
	sort.Strings(files)
	final := filepath.Join(h.snapDir(), "final-provenance.log")
	if err := copyFile(h.ledgerPath(), final); err != nil && !os.IsNotExist(err) {
		return nil, err
	} else if err == nil {
		files = append(files, final)
	}
	byKey := map[string]ledger.Admission{}
	var order []string
	for _, file := range files {
		l, err := appendlog.Open(file, "FLHMLDG1", appendlog.Options{}, func(rec []byte) error {
			var r struct {
				Op        string            `json:"op"`
				Key       string            `json:"key"`
				Admission *ledger.Admission `json:"admission"`
			}
			if err := json.Unmarshal(rec, &r); err != nil {
				return err
			}
			// Only admissions: an intent ("admit_intended", written before
			// the gate is asked, for any approval that comes with a
			// destructive act) admits nothing until an "admitted" record
			// promotes it.
			if r.Admission != nil && r.Op == "admitted" {
				if _, seen := byKey[r.Admission.Key]; !seen {
					order = append(order, r.Admission.Key)
					byKey[r.Admission.Key] = *r.Admission
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("ledger copy %s: %w", file, err)
		}
		_ = l.Close()
	}
	out := make([]ledger.Admission, 0, len(order))
	for _, k := range order {
		out = append(out, byKey[k])
	}
	return out, nil
}
