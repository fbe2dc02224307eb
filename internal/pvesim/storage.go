package pvesim

import (
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// volume is one volume on a simulated storage.
type volume struct {
	volid   string
	storage string
	content string // images, rootdir, backup
	vmid    int    // owner, 0 for none
	size    uint64
	ctime   time.Time
	// backup holds the guest captured by a backup volume.
	backup *guest
}

type storageDef struct {
	name, typ, content string
	total              uint64
}

// The simulated node has pve's two default storages.
var storages = []storageDef{
	{name: "local", typ: "dir", content: "backup,iso,vztmpl", total: 100 << 30},
	{name: "local-lvm", typ: "lvmthin", content: "images,rootdir", total: 500 << 30},
}

func findStorage(name string) *storageDef {
	for i := range storages {
		if storages[i].name == name {
			return &storages[i]
		}
	}
	return nil
}

var volOwner = regexp.MustCompile(`^(?:[^:]+):(?:\d+/)?(?:vm|base|subvol)-(\d+)-`)
var backupOwner = regexp.MustCompile(`vzdump-(?:qemu|lxc)-(\d+)-`)

// parseSize reads pve sizes: "32G", "512M", "1T", "1024K", plain bytes.
func parseSize(v string) uint64 {
	if v == "" {
		return 0
	}
	mult := uint64(1)
	switch v[len(v)-1] {
	case 'K', 'k':
		mult = 1 << 10
	case 'M', 'm':
		mult = 1 << 20
	case 'G', 'g':
		mult = 1 << 30
	case 'T', 't':
		mult = 1 << 40
	}
	if mult != 1 {
		v = v[:len(v)-1]
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0
	}
	return uint64(f * float64(mult))
}

// diskVolume splits a disk spec "local-lvm:vm-101-disk-0,size=32G" into
// its volume id and size; ok is false for CD-ROMs, "none" and passthrough.
func diskVolume(spec string) (volid string, size uint64, ok bool) {
	parts := strings.Split(spec, ",")
	volid = parts[0]
	for _, p := range parts[1:] {
		if v, found := strings.CutPrefix(p, "size="); found {
			size = parseSize(v)
		}
		if p == "media=cdrom" {
			return "", 0, false
		}
	}
	if volid == "none" || volid == "cdrom" || strings.HasPrefix(volid, "/") || !strings.Contains(volid, ":") {
		return "", 0, false
	}
	return volid, size, true
}

// registerVolume creates the volume a disk spec names. s.mu held.
func (s *Server) registerVolume(spec string, vmid int) {
	volid, size, ok := diskVolume(spec)
	if !ok {
		return
	}
	if _, exists := s.volumes[volid]; exists {
		return
	}
	storage, _, _ := strings.Cut(volid, ":")
	owner := vmid
	if m := volOwner.FindStringSubmatch(volid); m != nil {
		owner, _ = strconv.Atoi(m[1])
	}
	content := "images"
	if strings.Contains(volid, "subvol-") {
		content = "rootdir"
	}
	s.volumes[volid] = &volume{volid: volid, storage: storage, content: content, vmid: owner, size: size, ctime: time.Now()}
}

// allocDisk turns a create-time disk spec into a volume. "STORAGE:SIZE_GB"
// allocates a new volume as pve does ("local-lvm:32" → vm-101-disk-0,
// size=32G); an existing volume id is used as is. s.mu held.
func (s *Server) allocDisk(vmid int, spec string) (string, *apiError) {
	parts := strings.Split(spec, ",")
	storage, rest, ok := strings.Cut(parts[0], ":")
	if !ok {
		return spec, nil
	}
	gb, err := strconv.ParseFloat(rest, 64)
	if err != nil {
		return spec, nil // an existing volume
	}
	if findStorage(storage) == nil {
		return "", errf("storage '%s' does not exist", storage)
	}
	name := ""
	for i := 0; ; i++ {
		name = fmt.Sprintf("%s:vm-%d-disk-%d", storage, vmid, i)
		if _, taken := s.volumes[name]; !taken {
			break
		}
	}
	size := uint64(gb * float64(1<<30))
	s.volumes[name] = &volume{volid: name, storage: storage, content: "images", vmid: vmid, size: size, ctime: time.Now()}
	out := []string{name}
	for _, p := range parts[1:] {
		if !strings.HasPrefix(p, "size=") {
			out = append(out, p)
		}
	}
	out = append(out, "size="+formatSize(size))
	return strings.Join(out, ","), nil
}

func formatSize(b uint64) string {
	switch {
	case b%(1<<40) == 0 && b > 0:
		return fmt.Sprintf("%dT", b>>40)
	case b%(1<<30) == 0 && b > 0:
		return fmt.Sprintf("%dG", b>>30)
	case b%(1<<20) == 0 && b > 0:
		return fmt.Sprintf("%dM", b>>20)
	}
	return fmt.Sprintf("%dK", b>>10)
}

// Volumes returns the volume ids present on the simulated storages, sorted.
func (s *Server) Volumes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.volumes))
	for id := range s.volumes {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// AddBackup stores a backup archive of g (its config and disks as they are
// given) on storage "local" and returns its volume id, for restore tests.
func (s *Server) AddBackup(kind Kind, g Guest) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := &guest{kind: kind, vmid: g.VMID, conf: map[string]string{}}
	tmp := Server{guests: map[int]*guest{}, volumes: map[string]*volume{}, flocks: map[int]*flock{}}
	if err := tmp.addGuest(kind, g); err != nil {
		return "", err
	}
	snap.conf = tmp.guests[g.VMID].conf
	defer s.changed()
	return s.storeBackup(snap, time.Now()), nil
}

// storeBackup writes a vzdump archive of g to "local". s.mu held.
func (s *Server) storeBackup(g *guest, at time.Time) string {
	ext := "vma.zst"
	if g.kind == KindLXC {
		ext = "tar.zst"
	}
	base := fmt.Sprintf("local:backup/vzdump-%s-%d-%s", g.kind, g.vmid, at.UTC().Format("2006_01_02-15_04_05"))
	volid := base + "." + ext
	for i := 1; s.volumes[volid] != nil; i++ {
		volid = fmt.Sprintf("%s_%d.%s", base, i, ext)
	}
	conf := map[string]string{}
	for k, v := range g.conf {
		if k != "lock" {
			conf[k] = v
		}
	}
	var size uint64
	for k, v := range conf {
		if isDiskKey(g.kind, k) {
			_, sz, _ := diskVolume(v)
			size += sz / 4
		}
	}
	s.volumes[volid] = &volume{volid: volid, storage: "local", content: "backup", vmid: g.vmid, size: size + 1<<20,
		ctime: at, backup: &guest{kind: g.kind, vmid: g.vmid, conf: conf}}
	return volid
}

func (s *Server) routeStorage(c *call) (any, *apiError) {
	seg := c.segs
	n := len(seg)
	get := c.method == http.MethodGet
	if n == 3 {
		if get {
			return s.storageList(c), nil
		}
		return nil, notImplemented(c)
	}
	st := findStorage(seg[3])
	if st == nil {
		return nil, errf("storage '%s' does not exist", seg[3])
	}
	switch {
	case n == 4 && get:
		return dirIndex("content", "status"), nil
	case n == 5 && seg[4] == "status" && get:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.storageStatus(st), nil
	case n == 5 && seg[4] == "content" && get:
		return s.storageContent(c, st), nil
	case n >= 6 && seg[4] == "content":
		// A volume id like "local:backup/vzdump-..." may arrive unescaped.
		volid := strings.Join(seg[5:], "/")
		if !strings.Contains(volid, ":") {
			volid = st.name + ":" + volid
		}
		switch c.method {
		case http.MethodGet:
			s.mu.Lock()
			defer s.mu.Unlock()
			v := s.volumes[volid]
			if v == nil || v.storage != st.name {
				return nil, s.missingVolume(st, volid)
			}
			return map[string]any{"path": "/dev/pve/" + volid, "size": v.size, "used": v.size, "format": volFormat(v)}, nil
		case http.MethodDelete:
			return s.deleteVolume(c, st, volid)
		}
	}
	return nil, notImplemented(c)
}

func volFormat(v *volume) string {
	if v.content == "backup" {
		if strings.HasSuffix(v.volid, ".vma.zst") {
			return "vma.zst"
		}
		return "tar.zst"
	}
	if v.content == "rootdir" {
		return "subvol"
	}
	return "raw"
}

func (s *Server) storageList(c *call) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	for i := range storages {
		st := &storages[i]
		if want := c.param("content"); want != "" && !strings.Contains(st.content, want) {
			continue
		}
		row := s.storageStatus(st)
		row["storage"] = st.name
		out = append(out, row)
	}
	return out
}

// storageStatus; s.mu held.
func (s *Server) storageStatus(st *storageDef) map[string]any {
	var used uint64
	for _, v := range s.volumes {
		if v.storage == st.name {
			used += v.size
		}
	}
	return map[string]any{"type": st.typ, "content": st.content, "active": 1, "enabled": 1, "shared": 0,
		"total": st.total, "used": used, "avail": st.total - min(used, st.total)}
}

func (s *Server) storageContent(c *call, st *storageDef) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	ids := make([]string, 0)
	for id, v := range s.volumes {
		if v.storage == st.name {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		v := s.volumes[id]
		if want := c.param("content"); want != "" && want != v.content {
			continue
		}
		if want := c.param("vmid"); want != "" && want != strconv.Itoa(v.vmid) {
			continue
		}
		row := map[string]any{"volid": v.volid, "content": v.content, "size": v.size, "format": volFormat(v), "ctime": v.ctime.Unix()}
		if v.vmid != 0 {
			row["vmid"] = v.vmid
		}
		out = append(out, row)
	}
	return out
}

// deleteVolume is DELETE /nodes/{node}/storage/{storage}/content/{volume}:
// pve refuses to delete an image whose owning guest still exists (the guest's
// own config must drop it) and otherwise frees it in an "imgdel" task.
func (s *Server) deleteVolume(c *call, st *storageDef, volid string) (any, *apiError) {
	if s.cfg.StrictPVE {
		return s.deleteVolumeStrict(c, st, volid), nil
	}
	s.mu.Lock()
	v := s.volumes[volid]
	if v == nil || v.storage != st.name {
		s.mu.Unlock()
		return nil, errf("volume '%s' does not exist", volid)
	}
	if v.content != "backup" && v.vmid != 0 && s.guests[v.vmid] != nil {
		s.mu.Unlock()
		return nil, errf("Cannot remove image, a guest with VMID '%d' exists!\nYou can delete the image from the guest's hardware pane", v.vmid)
	}
	owner := v.vmid
	s.mu.Unlock()
	id := st.name
	if owner != 0 {
		id = fmt.Sprintf("%d@%s", owner, st.name)
	}
	upid := s.startTask(c, taskSpec{typ: "imgdel", id: id, run: func(t *task) (int, error) {
		if s.volumes[volid] == nil {
			return 0, fmt.Errorf("volume '%s' does not exist", volid)
		}
		delete(s.volumes, volid)
		t.log = append(t.log, fmt.Sprintf("Removed volume '%s'", volid))
		return 0, nil
	}})
	return upid, nil
}

// AddVolume creates a volume ("local-lvm:vm-101-disk-3") that no config
// needs to reference, like the leftovers of a crashed create.
func (s *Server) AddVolume(volid string, size uint64) error {
	storage, _, ok := strings.Cut(volid, ":")
	if !ok || findStorage(storage) == nil {
		return fmt.Errorf("pvesim: volume %q is not on a simulated storage", volid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.volumes[volid] != nil {
		return fmt.Errorf("pvesim: volume %q exists", volid)
	}
	s.registerVolume(fmt.Sprintf("%s,size=%dK", volid, size>>10), 0)
	s.changed()
	return nil
}

// missingArchive is the error for a restore from an archive that is not
// there.
func (s *Server) missingArchive(volid string) *apiError {
	if s.cfg.StrictPVE {
		// pve-storage's abs_filesystem_path
		return errf("can't find file '%s'", volid)
	}
	return errf("volume '%s' does not exist", volid)
}

// missingVolume is the error for GET .../content/{volume} of a volume that
// is not there: pve reports what its storage tool said.
func (s *Server) missingVolume(st *storageDef, volid string) *apiError {
	if !s.cfg.StrictPVE {
		return errf("volume '%s' does not exist", volid)
	}
	_, name, _ := strings.Cut(volid, ":")
	if st.typ == "lvmthin" {
		return errf("command '/sbin/lvs --separator : --noheadings --units b --unbuffered --nosuffix --options lv_size /dev/pve/%s' failed: exit code 5", name)
	}
	return errf("volume_size_info on '%s' failed - no format", volid)
}

// deleteVolumeStrict is pve's volume DELETE: the API itself does not care
// whether a guest still uses the image (only the web UI refuses). It frees
// it in an "imgdel" task whose id is "OWNER@STORAGE"; LVM refuses to
// remove the disk of a running guest, and a thin volume that is already
// gone is no error.
func (s *Server) deleteVolumeStrict(c *call, st *storageDef, volid string) string {
	owner := 0
	if m := volOwner.FindStringSubmatch(volid); m != nil {
		owner, _ = strconv.Atoi(m[1])
	} else if m := backupOwner.FindStringSubmatch(volid); m != nil {
		owner, _ = strconv.Atoi(m[1])
	}
	id := st.name
	if owner != 0 {
		id = fmt.Sprintf("%d@%s", owner, st.name)
	}
	_, name, _ := strings.Cut(volid, ":")
	return s.startTask(c, taskSpec{typ: "imgdel", id: id, run: func(t *task) (int, error) {
		v := s.volumes[volid]
		if v == nil || v.storage != st.name {
			if st.typ == "lvmthin" {
				t.log = append(t.log, fmt.Sprintf("Removed volume '%s'", volid))
				return 0, nil
			}
			return 0, fmt.Errorf("unlink '/var/lib/vz/%s' failed - No such file or directory", dirPath(name))
		}
		if g := s.guestUsing(volid); g != nil && g.running && st.typ == "lvmthin" {
			return 0, fmt.Errorf("lvremove 'pve/%s' error:   Logical volume pve/%s in use.", name, name)
		}
		delete(s.volumes, volid)
		t.log = append(t.log, fmt.Sprintf("Removed volume '%s'", volid))
		return 0, nil
	}})
}

// dirPath maps a dir-storage volume name to its path below the storage root.
func dirPath(name string) string {
	if rest, ok := strings.CutPrefix(name, "backup/"); ok {
		return "dump/" + rest
	}
	return name
}

// guestUsing is the guest whose config references volid. s.mu held.
func (s *Server) guestUsing(volid string) *guest {
	for _, g := range s.guests {
		for k, v := range g.conf {
			if !isDiskKey(g.kind, k) {
				continue
			}
			if id, _, ok := diskVolume(v); ok && id == volid {
				return g
			}
		}
	}
	return nil
}
