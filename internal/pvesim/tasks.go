package pvesim

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// task is one pve worker task.
type task struct {
	upid      string
	typ       string
	id        string
	user      string
	vmid      int
	pid       uint32
	pstart    uint32
	start     time.Time
	end       time.Time
	running   bool
	exit      string
	log       []string
	cancel    chan struct{}
	cancelled bool
	done      chan struct{} // closed when the task stops
	lost      bool          // its node went down under it (RebootNode)
	cleanup   func()
	waiter    *lockWaiter
}

// taskSpec says what a task does. run is called with s.mu held once the
// task has its guest's config lock and has run for its duration; the error
// it returns becomes the exit status. warnings > 0 makes a successful task
// stop with "WARNINGS: n".
type taskSpec struct {
	typ      string
	vmid     int    // guest whose config lock the task holds, 0 for none
	kind     Kind   // of that guest, for the lock file name
	id       string // UPID id field; defaults to the vmid
	logStart []string
	// check runs with s.mu held as soon as the task has the config lock,
	// where pve checks locks and power state; an error ends the task.
	check func(t *task) error
	run   func(t *task) (warnings int, err error)
	// cleanup runs with s.mu held when the task stops, however it stops,
	// unless its node went down under it (RebootNode).
	cleanup func()
	// lost leaves, with s.mu held, what the task's worker had done when
	// the node went down under it after its checks passed: a create's
	// allocated disks, a destroy's freed ones.
	lost func(t *task)
}

// startTask creates a running task of the API token and its worker, and
// returns the UPID. Must be called without s.mu held.
func (s *Server) startTask(c *call, spec taskSpec) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startTaskLocked(c, s.tokenUser(), spec)
}

// startTaskLocked is startTask for a task of user, with s.mu held.
func (s *Server) startTaskLocked(c *call, user string, spec taskSpec) string {
	now, started := time.Now(), s.cfg.Clock()
	s.taskSeq++
	id := spec.id
	if id == "" && spec.vmid != 0 {
		id = strconv.Itoa(spec.vmid)
	}
	t := &task{
		typ:     spec.typ,
		id:      id,
		user:    user,
		vmid:    spec.vmid,
		pid:     0x1000 + s.taskSeq*7,
		pstart:  uint32(now.Sub(s.bootTime)/(10*time.Millisecond)) + 0x100000,
		start:   started,
		running: true,
		cancel:  make(chan struct{}),
		done:    make(chan struct{}),
		log:     append([]string(nil), spec.logStart...),
		cleanup: spec.cleanup,
	}
	if spec.vmid != 0 {
		t.waiter = s.enqueueLock(spec.vmid)
	}
	t.upid = fmt.Sprintf("UPID:%s:%08X:%08X:%08X:%s:%s:%s:", s.cfg.Node, t.pid, t.pstart, started.Unix(), t.typ, t.id, t.user)
	s.tasks[t.upid] = t
	s.pruneTasks()
	s.tasksWG.Add(1)

	fault := c.fault
	c.upid = t.upid
	go s.runTask(t, spec, fault)
	return t.upid
}

// maxTasks bounds the task history of a long-running `felhom-dev`;
// pve rotates its task index too.
const maxTasks = 10000

// pruneTasks forgets the oldest finished tasks once there are more than
// maxTasks. s.mu held.
func (s *Server) pruneTasks() {
	if len(s.tasks) <= maxTasks {
		return
	}
	done := make([]*task, 0, len(s.tasks))
	for _, t := range s.tasks {
		if !t.running {
			done = append(done, t)
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i].end.Before(done[j].end) })
	// drop a tenth at a time so the sort is rare
	for _, t := range done[:max(0, min(len(done), len(s.tasks)-maxTasks*9/10))] {
		delete(s.tasks, t.upid)
	}
}

func (s *Server) runTask(t *task, spec taskSpec, fault *Fault) {
	defer s.tasksWG.Done()
	if spec.vmid != 0 {
		if lerr := s.awaitLock(spec.vmid, spec.kind, t.waiter, fault, t.cancel); lerr != nil {
			s.stopTask(t, spec, false, lerr)
			return
		}
		defer s.unlockGuest(spec.vmid)
	}
	if spec.vmid != 0 {
		// Destroyed while this task waited for the lock: only lock holders
		// remove guests, so from here on the guest stays.
		s.mu.Lock()
		g := s.guests[spec.vmid]
		if g == nil || g.kind != spec.kind {
			s.finishTaskLocked(t, 0, fmt.Errorf("%s", s.missingConfig(spec.kind, spec.vmid).Message))
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
	if spec.check != nil {
		s.mu.Lock()
		err := spec.check(t)
		if err != nil {
			s.finishTaskLocked(t, 0, err)
		}
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
	duration := s.cfg.TaskDuration
	if d, ok := s.cfg.TaskDurations[t.typ]; ok {
		duration = d
	}
	if s.cfg.TaskDurationFunc != nil {
		duration = s.cfg.TaskDurationFunc(t.typ, spec.vmid)
	}
	if fault != nil && fault.Kind == FaultSlowTask {
		duration = fault.TaskDuration
	}
	var held <-chan struct{}
	if fault != nil && fault.Kind == FaultHoldTask {
		fault.Hook.hitNow()
		held = fault.Hook.release
		duration = 0
	}
	timer := time.NewTimer(duration)
	defer timer.Stop()
	if held != nil {
		select {
		case <-held:
		case <-s.closed:
			s.stopTask(t, spec, true, s.interrupted())
			return
		case <-t.cancel:
			s.stopTask(t, spec, true, s.interrupted())
			return
		}
	}
	select {
	case <-timer.C:
	case <-s.closed:
		s.stopTask(t, spec, true, s.interrupted())
		return
	case <-t.cancel:
		s.stopTask(t, spec, true, s.interrupted())
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if fault != nil && fault.Kind == FaultTaskError {
		msg := fault.Message
		if msg == "" {
			msg = "command failed"
		}
		s.finishTaskLocked(t, 0, fmt.Errorf("%s", msg))
		return
	}
	warnings, err := spec.run(t)
	if err == nil && fault != nil && fault.Kind == FaultTaskWarnings {
		t.log = append(t.log, "WARN: injected warning")
		if fault.Message != "" {
			s.finishTaskExit(t, fault.Message)
			return
		}
		warnings = max(warnings, 1)
	}
	s.finishTaskLocked(t, warnings, err)
}

// stopTask ends a task that was cancelled, waiting for its lock or
// running (working: its checks passed), with err; or, when its node went
// down under it, as pve finds such a task: stopped, with no final status
// line in its log, and whatever its worker had done left in place.
func (s *Server) stopTask(t *task, spec taskSpec, working bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !t.lost {
		s.finishTaskLocked(t, 0, err)
		return
	}
	if working && spec.lost != nil {
		spec.lost(t)
	}
	t.cleanup = nil
	t.running = false
	t.end = s.cfg.Clock()
	t.exit = lostExitStatus
	s.changed()
	close(t.done)
}

// lostExitStatus is what pve's task status says of a task whose log ends
// without "TASK OK" or "TASK ERROR: ..." (PVE::UPID::read_status).
const lostExitStatus = "unexpected status"

func (s *Server) finishTask(t *task, warnings int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishTaskLocked(t, warnings, err)
}

func (s *Server) finishTaskLocked(t *task, warnings int, err error) {
	switch {
	case err != nil:
		s.finishTaskExit(t, strings.TrimSpace(err.Error()))
	case warnings > 0:
		s.finishTaskExit(t, fmt.Sprintf("WARNINGS: %d", warnings))
	default:
		s.finishTaskExit(t, "OK")
	}
}

// finishTaskExit stops a task with an exit status and pve's last log line
// ("TASK OK", "TASK WARNINGS: 2", "TASK ERROR: msg"). s.mu held.
func (s *Server) finishTaskExit(t *task, exit string) {
	defer s.changed()
	if t.cleanup != nil {
		t.cleanup()
		t.cleanup = nil
	}
	t.running = false
	t.end = s.cfg.Clock()
	t.exit = exit
	select {
	case <-t.done:
	default:
		close(t.done)
	}
	if exit == "OK" || strings.HasPrefix(exit, "WARNINGS: ") {
		t.log = append(t.log, "TASK "+exit)
	} else {
		t.log = append(t.log, "TASK ERROR: "+exit)
	}
}

// TaskDone returns a channel that is closed when the task stops (at once
// for one that already has), and false when the node does not know upid.
func (s *Server) TaskDone(upid string) (<-chan struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tasks[upid]
	if t == nil {
		return nil, false
	}
	return t.done, true
}

// parseUPID checks a UPID's shape as pve's decode_upid does.
func parseUPID(upid string) (node string, ok bool) {
	parts := strings.Split(upid, ":")
	if len(parts) != 9 || parts[0] != "UPID" || parts[8] != "" {
		return "", false
	}
	for _, hexField := range parts[2:5] {
		if _, err := strconv.ParseUint(hexField, 16, 64); err != nil {
			return "", false
		}
	}
	return parts[1], true
}

func (s *Server) routeTasks(c *call) (any, *apiError) {
	seg := c.segs
	n := len(seg)
	if n == 3 && c.method == http.MethodGet {
		return s.taskList(c), nil
	}
	if n < 4 {
		return nil, notImplemented(c)
	}
	upid := seg[3]
	if _, ok := parseUPID(upid); !ok {
		if s.cfg.StrictPVE {
			return nil, paramErr("upid", "unable to parse worker upid")
		}
		return nil, paramErr("upid", fmt.Sprintf("unable to parse worker upid '%s'", upid))
	}
	s.mu.Lock()
	t := s.tasks[upid]
	s.mu.Unlock()
	if t == nil && s.cfg.StrictPVE && n == 5 && seg[4] == "log" && c.method == http.MethodGet {
		// the log endpoint does not check that the file exists: dump_logfile
		// answers its open error as the log's only line
		return []map[string]any{{"n": 1, "t": "unable to open file - No such file or directory"}}, nil
	}
	if t == nil {
		if s.cfg.StrictPVE {
			return nil, paramErr("upid", "no such task")
		}
		return nil, errf("unable to open file '/var/log/pve/tasks/%s' - No such file or directory", upid)
	}
	switch {
	case n == 4 && c.method == http.MethodGet:
		return dirIndex("log", "status"), nil
	case n == 4 && c.method == http.MethodDelete:
		s.mu.Lock()
		if t.running && !t.cancelled {
			t.cancelled = true
			close(t.cancel)
		}
		s.mu.Unlock()
		return nil, nil
	case n == 5 && seg[4] == "status" && c.method == http.MethodGet:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.taskStatus(t), nil
	case n == 5 && seg[4] == "log" && c.method == http.MethodGet:
		start, _ := strconv.Atoi(c.param("start"))
		limit := 50
		if l, err := strconv.Atoi(c.param("limit")); err == nil && l > 0 {
			limit = l
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		lines := []map[string]any{}
		for i := start; i < len(t.log) && len(lines) < limit; i++ {
			lines = append(lines, map[string]any{"n": i + 1, "t": t.log[i]})
		}
		return lines, nil
	}
	return nil, notImplemented(c)
}

// taskStatus is the reply of GET .../tasks/{upid}/status. It always carries
// upid and node: go-proxmox's Task.Ping needs both.
func (s *Server) taskStatus(t *task) map[string]any {
	user, token, _ := strings.Cut(t.user, "!")
	res := map[string]any{
		"upid":      t.upid,
		"node":      s.cfg.Node,
		"pid":       t.pid,
		"pstart":    t.pstart,
		"starttime": t.start.Unix(),
		"type":      t.typ,
		"id":        t.id,
		"user":      user,
		"status":    "running",
	}
	if token != "" {
		res["tokenid"] = token
	}
	if !t.running {
		res["status"] = "stopped"
		res["exitstatus"] = t.exit
		res["endtime"] = t.end.Unix()
	}
	return res
}

// taskList answers GET /nodes/{node}/tasks with pve's filters vmid,
// typefilter, userfilter, source (active|archive|all), start and limit.
func (s *Server) taskList(c *call) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make([]*task, 0, len(s.tasks))
	for _, t := range s.tasks {
		all = append(all, t)
	}
	sort.Slice(all, func(i, j int) bool {
		if !all[i].start.Equal(all[j].start) {
			return all[i].start.After(all[j].start)
		}
		return all[i].pid > all[j].pid
	})
	source := c.param("source")
	if source == "" {
		source = "archive"
	}
	start, _ := strconv.Atoi(c.param("start"))
	limit := 50
	if l, err := strconv.Atoi(c.param("limit")); err == nil && l > 0 {
		limit = l
	}
	out := []map[string]any{}
	skipped := 0
	for _, t := range all {
		if v := c.param("vmid"); v != "" && v != t.id {
			continue
		}
		if tf := c.param("typefilter"); tf != "" && tf != t.typ {
			continue
		}
		if !s.seesTask(t) {
			continue
		}
		// pve matches the user part (a token's user, without its name)
		user, _, _ := strings.Cut(t.user, "!")
		if uf := c.param("userfilter"); uf != "" && !strings.Contains(strings.ToLower(user), strings.ToLower(uf)) {
			continue
		}
		if source == "active" && !t.running || source == "archive" && t.running {
			continue
		}
		if skipped < start {
			skipped++
			continue
		}
		if len(out) >= limit {
			break
		}
		row := s.taskStatus(t)
		switch {
		case !t.running:
			row["status"] = t.exit
		case s.cfg.StrictPVE:
			// pve's marker for a task still in the active list
			row["status"] = "RUNNING"
		default:
			delete(row, "status")
		}
		delete(row, "exitstatus")
		out = append(out, row)
	}
	return out
}

// interrupted is the exit status of a task stopped by a signal (DELETE of
// the task, the node shutting down): pve's worker dies in its SIGTERM
// handler with "received interrupt".
func (s *Server) interrupted() error {
	if s.cfg.StrictPVE {
		return fmt.Errorf("received interrupt")
	}
	return fmt.Errorf("interrupted by signal")
}
