package pvesim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// A node's state on disk (Config.StateFile), so that a restarted
// simulator is the same node: its guests (config, pending changes, power
// state), volumes and backups, HA resources and API token secret. Tasks
// are not kept: a task that ran when the process died is gone, as after a
// node reboot, and what it had not done is not done (a lock it set stays).

// stateVersion is the layout of the state file.
const stateVersion = 1

type savedState struct {
	Version     int            `json:"version"`
	TokenSecret string         `json:"token_secret"`
	Guests      []savedGuest   `json:"guests"`
	Volumes     []savedVolume  `json:"volumes"`
	HA          map[int]string `json:"ha,omitempty"`
}

type savedGuest struct {
	VMID            int               `json:"vmid"`
	Kind            Kind              `json:"kind"`
	Running         bool              `json:"running,omitempty"`
	Conf            map[string]string `json:"conf"`
	Pending         map[string]string `json:"pending,omitempty"`
	PendingDelete   []string          `json:"pending_delete,omitempty"`
	IgnoresShutdown bool              `json:"ignores_shutdown,omitempty"`
}

type savedVolume struct {
	VolID   string      `json:"volid"`
	Storage string      `json:"storage"`
	Content string      `json:"content"`
	VMID    int         `json:"vmid,omitempty"`
	Size    uint64      `json:"size"`
	CTime   time.Time   `json:"ctime"`
	Backup  *savedGuest `json:"backup,omitempty"`
}

// Restored reports whether Start loaded the node's state from
// Config.StateFile (false: a new node, e.g. to seed).
func (s *Server) Restored() bool { return s.restored }

// loadState reads Config.StateFile into s, if the file exists. Called by
// Start before serving.
func (s *Server) loadState() error {
	b, err := os.ReadFile(s.cfg.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pvesim: state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("pvesim: state %s: %w", s.cfg.StateFile, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("pvesim: state %s: version %d, want %d", s.cfg.StateFile, st.Version, stateVersion)
	}
	if s.cfg.TokenSecret == "" || s.cfg.TokenSecret == st.TokenSecret {
		s.cfg.TokenSecret = st.TokenSecret
	}
	for _, sg := range st.Guests {
		g := sg.guest()
		if sg.Running {
			g.running, g.startedAt, g.pid = true, time.Now(), 10000+g.vmid
		}
		s.guests[g.vmid] = g
	}
	for _, sv := range st.Volumes {
		v := &volume{volid: sv.VolID, storage: sv.Storage, content: sv.Content, vmid: sv.VMID, size: sv.Size, ctime: sv.CTime}
		if sv.Backup != nil {
			v.backup = sv.Backup.guest()
		}
		s.volumes[v.volid] = v
	}
	for vmid, state := range st.HA {
		s.ha[vmid] = state
	}
	s.restored = true
	return nil
}

func (sg savedGuest) guest() *guest {
	g := &guest{kind: sg.Kind, vmid: sg.VMID, conf: sg.Conf, ignoresShutdown: sg.IgnoresShutdown}
	if g.conf == nil {
		g.conf = map[string]string{}
	}
	if len(sg.Pending) > 0 {
		g.pending = sg.Pending
	}
	for _, k := range sg.PendingDelete {
		if g.pendingDelete == nil {
			g.pendingDelete = map[string]bool{}
		}
		g.pendingDelete[k] = true
	}
	return g
}

func savedOf(g *guest) savedGuest {
	sg := savedGuest{VMID: g.vmid, Kind: g.kind, Running: g.running, Conf: map[string]string{},
		IgnoresShutdown: g.ignoresShutdown}
	for k, v := range g.conf {
		sg.Conf[k] = v
	}
	if len(g.pending) > 0 {
		sg.Pending = map[string]string{}
		for k, v := range g.pending {
			sg.Pending[k] = v
		}
	}
	for k := range g.pendingDelete {
		sg.PendingDelete = append(sg.PendingDelete, k)
	}
	sort.Strings(sg.PendingDelete)
	return sg
}

// snapshot is the node's state to save. s.mu held.
func (s *Server) snapshotState() savedState {
	st := savedState{Version: stateVersion, TokenSecret: s.cfg.TokenSecret, Guests: []savedGuest{}, Volumes: []savedVolume{}}
	for _, g := range s.sortedGuests() {
		st.Guests = append(st.Guests, savedOf(g))
	}
	ids := make([]string, 0, len(s.volumes))
	for id := range s.volumes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		v := s.volumes[id]
		sv := savedVolume{VolID: v.volid, Storage: v.storage, Content: v.content, VMID: v.vmid, Size: v.size, CTime: v.ctime}
		if v.backup != nil {
			b := savedOf(v.backup)
			sv.Backup = &b
		}
		st.Volumes = append(st.Volumes, sv)
	}
	if len(s.ha) > 0 {
		st.HA = map[int]string{}
		for vmid, state := range s.ha {
			st.HA[vmid] = state
		}
	}
	return st
}

// changed notes that the node's state changed, for the saver. Any lock.
func (s *Server) changed() {
	if s.dirty == nil {
		return
	}
	select {
	case s.dirty <- struct{}{}:
	default: // a save is due already
	}
}

// saveLoop writes the state after each change until the server closes,
// then once more. Started by Start when Config.StateFile is set.
func (s *Server) saveLoop() {
	defer close(s.saverDone)
	for {
		select {
		case <-s.dirty:
			if err := s.saveState(); err != nil {
				s.log.Error("pvesim: save state", "err", err)
			}
		case <-s.closed:
			return
		}
	}
}

// saveState writes the state file atomically: a crash leaves the old file
// or the new one, whole.
func (s *Server) saveState() error {
	s.mu.Lock()
	st := s.snapshotState()
	s.mu.Unlock()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.cfg.StateFile)
	tmp, err := os.CreateTemp(dir, ".pvesim-state-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), s.cfg.StateFile); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
