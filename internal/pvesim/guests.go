package pvesim

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Kind is a guest type.
type Kind string

const (
	KindQEMU Kind = "qemu"
	KindLXC  Kind = "lxc"
)

// Guest describes a VM or container: what AddVM/AddContainer take and what
// Guest(vmid) returns.
type Guest struct {
	VMID int
	// Kind is set by AddVM/AddContainer.
	Kind Kind
	// Name is the QEMU "name" or the LXC "hostname".
	Name string
	// Status is "running" or "stopped" (default).
	Status string
	// MemoryMiB is the config "memory", in MiB as Proxmox stores it.
	MemoryMiB int
	Cores     int
	// Tags is the ";"-separated tag list, as Proxmox stores it.
	Tags        string
	Description string
	Protection  bool
	// Lock is the config lock ("backup", "create", "migrate", ...), "" for none.
	Lock string
	// Disks maps disk keys (scsi0, virtio0, sata1, efidisk0, unused0 / rootfs,
	// mp0) to volume specs such as "local-lvm:vm-101-disk-0,size=32G". The
	// volumes are created on the simulated storage.
	Disks map[string]string
	// Config holds any other config keys verbatim (net0, ostype, boot...).
	Config map[string]string
	// IgnoresShutdown makes the guest OS ignore ACPI shutdown requests, so a
	// shutdown without forceStop times out.
	IgnoresShutdown bool

	// Pending holds QEMU changes waiting for the next start (read only).
	Pending map[string]string
	// Digest is the config digest (read only).
	Digest string
}

// guest is the simulator's state of one guest: its config as pve's .conf
// file holds it (key → value strings).
type guest struct {
	kind            Kind
	vmid            int
	running         bool
	startedAt       time.Time
	pid             int
	conf            map[string]string
	pending         map[string]string
	pendingDelete   map[string]bool
	ignoresShutdown bool
}

var (
	qemuDiskKey = regexp.MustCompile(`^(ide|sata|scsi|virtio|unused)\d+$|^efidisk0$|^tpmstate0$`)
	lxcDiskKey  = regexp.MustCompile(`^(rootfs|mp\d+|unused\d+)$`)
)

func isDiskKey(kind Kind, key string) bool {
	if kind == KindLXC {
		return lxcDiskKey.MatchString(key)
	}
	return qemuDiskKey.MatchString(key)
}

func (k Kind) label() string {
	if k == KindLXC {
		return "CT"
	}
	return "VM"
}

func (k Kind) confDir() string {
	if k == KindLXC {
		return "lxc"
	}
	return "qemu-server"
}

func (s *Server) missingConfig(kind Kind, vmid int) *apiError {
	return errf("Configuration file 'nodes/%s/%s/%d.conf' does not exist", s.cfg.Node, kind.confDir(), vmid)
}

// nameKey is the config key holding a guest's name.
func (k Kind) nameKey() string {
	if k == KindLXC {
		return "hostname"
	}
	return "name"
}

// AddVM adds a QEMU VM to the node, as if it had been there all along.
func (s *Server) AddVM(g Guest) error { return s.addGuest(KindQEMU, g) }

// AddContainer adds an LXC container to the node.
func (s *Server) AddContainer(g Guest) error { return s.addGuest(KindLXC, g) }

func (s *Server) addGuest(kind Kind, g Guest) error {
	if g.VMID < 100 || g.VMID > 999999999 {
		return fmt.Errorf("pvesim: vmid %d out of range 100-999999999", g.VMID)
	}
	switch g.Status {
	case "", "stopped", "running":
	default:
		return fmt.Errorf("pvesim: status %q is neither running nor stopped", g.Status)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.guests[g.VMID]; ok {
		return fmt.Errorf("pvesim: %s %d already exists on node '%s'", kind.label(), g.VMID, s.cfg.Node)
	}
	conf := map[string]string{}
	for k, v := range g.Config {
		conf[k] = v
	}
	set := func(k, v string) {
		if v != "" {
			conf[k] = v
		}
	}
	set(kind.nameKey(), g.Name)
	if g.MemoryMiB > 0 {
		conf["memory"] = strconv.Itoa(g.MemoryMiB)
	}
	if g.Cores > 0 {
		conf["cores"] = strconv.Itoa(g.Cores)
	}
	set("tags", normaliseTags(g.Tags))
	set("description", strings.TrimRightFunc(g.Description, unicode.IsSpace))
	if g.Protection {
		conf["protection"] = "1"
	}
	set("lock", g.Lock)
	if kind == KindQEMU {
		// Every VM Proxmox creates gets these; a seeded one too, unless the
		// seed sets them.
		for k, v := range map[string]string{"vmgenid": randomUUID(), "smbios1": "uuid=" + randomUUID()} {
			if _, ok := conf[k]; !ok {
				conf[k] = v
			}
		}
	}
	for k, v := range g.Disks {
		if !isDiskKey(kind, k) {
			return fmt.Errorf("pvesim: %q is not a %s disk key", k, kind)
		}
		conf[k] = v
	}
	if _, ok := conf["memory"]; !ok {
		conf["memory"] = "512"
		if kind == KindQEMU {
			conf["memory"] = "2048"
		}
	}
	if _, ok := conf["cores"]; !ok {
		conf["cores"] = "1"
	}
	if kind == KindQEMU {
		if _, ok := conf["sockets"]; !ok {
			conf["sockets"] = "1"
		}
		if _, ok := conf["ostype"]; !ok {
			conf["ostype"] = "l26"
		}
	} else {
		if _, ok := conf["swap"]; !ok {
			conf["swap"] = "512"
		}
		if _, ok := conf["ostype"]; !ok {
			conf["ostype"] = "debian"
		}
		if _, ok := conf["arch"]; !ok {
			conf["arch"] = "amd64"
		}
	}
	gs := &guest{kind: kind, vmid: g.VMID, conf: conf, ignoresShutdown: g.IgnoresShutdown}
	if g.Status == "running" {
		s.setRunning(gs, true)
	}
	for k, v := range conf {
		if isDiskKey(kind, k) {
			s.registerVolume(v, g.VMID)
		}
	}
	s.guests[g.VMID] = gs
	s.changed()
	return nil
}

// SetLock sets (or with "" clears) a guest's config lock, as a running
// vzdump or migration would.
func (s *Server) SetLock(vmid int, lock string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guests[vmid]
	if g == nil {
		return fmt.Errorf("pvesim: no guest %d", vmid)
	}
	if lock == "" {
		delete(g.conf, "lock")
	} else {
		g.conf["lock"] = lock
	}
	s.changed()
	return nil
}

// SetStatus changes a guest's power state out of band (the guest OS powered
// itself off, the host rebooted...), without any task.
func (s *Server) SetStatus(vmid int, status string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guests[vmid]
	if g == nil {
		return fmt.Errorf("pvesim: no guest %d", vmid)
	}
	switch status {
	case "running":
		s.setRunning(g, true)
	case "stopped":
		s.setRunning(g, false)
	default:
		return fmt.Errorf("pvesim: status %q is neither running nor stopped", status)
	}
	return nil
}

// Guest returns a snapshot of a guest's state, and whether it exists.
func (s *Server) Guest(vmid int) (Guest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.guests[vmid]
	if g == nil {
		return Guest{}, false
	}
	return g.snapshot(), true
}

// Guests returns snapshots of all guests, by VMID.
func (s *Server) Guests() []Guest {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Guest, 0, len(s.guests))
	for _, g := range s.sortedGuests() {
		out = append(out, g.snapshot())
	}
	return out
}

func (s *Server) sortedGuests() []*guest {
	out := make([]*guest, 0, len(s.guests))
	for _, g := range s.guests {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].vmid < out[j].vmid })
	return out
}

func (g *guest) snapshot() Guest {
	out := Guest{
		VMID:            g.vmid,
		Kind:            g.kind,
		Name:            g.conf[g.kind.nameKey()],
		Status:          g.status(),
		MemoryMiB:       memoryMiB(g.conf["memory"]),
		Tags:            g.conf["tags"],
		Description:     g.conf["description"],
		Protection:      g.conf["protection"] == "1",
		Lock:            g.conf["lock"],
		Disks:           map[string]string{},
		Config:          map[string]string{},
		IgnoresShutdown: g.ignoresShutdown,
		Pending:         map[string]string{},
		Digest:          g.digest(),
	}
	out.Cores, _ = strconv.Atoi(g.conf["cores"])
	for k, v := range g.conf {
		switch {
		case isDiskKey(g.kind, k):
			out.Disks[k] = v
		case k == g.kind.nameKey(), k == "memory", k == "cores", k == "tags", k == "description",
			k == "protection", k == "lock":
		default:
			out.Config[k] = v
		}
	}
	for k, v := range g.pending {
		out.Pending[k] = v
	}
	for k := range g.pendingDelete {
		out.Pending[k] = ""
	}
	return out
}

func (g *guest) status() string {
	if g.running {
		return "running"
	}
	return "stopped"
}

// memoryMiB reads a config memory value, "2048" or QEMU's "current=2048".
func memoryMiB(v string) int {
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimPrefix(part, "current=")
		if n, err := strconv.Atoi(part); err == nil {
			return n
		}
	}
	return 0
}

func (s *Server) setRunning(g *guest, running bool) {
	if running == g.running {
		return
	}
	defer s.changed()
	g.running = running
	if running {
		g.startedAt = time.Now()
		g.pid = 10000 + g.vmid
		s.applyPending(g)
	} else {
		g.startedAt = time.Time{}
		g.pid = 0
	}
}

func (s *Server) applyPending(g *guest) {
	for k, v := range g.pending {
		g.setKey(k, v)
	}
	for k := range g.pendingDelete {
		delete(g.conf, k)
	}
	g.pending = nil
	g.pendingDelete = nil
}

// digest is the SHA-1 of the config file's text, as pve computes it.
func (g *guest) digest() string {
	keys := make([]string, 0, len(g.conf))
	for k := range g.conf {
		if k != "description" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	h := sha1.New()
	if d := g.conf["description"]; d != "" {
		for _, line := range strings.Split(d, "\n") {
			fmt.Fprintf(h, "#%s\n", line)
		}
	}
	for _, k := range keys {
		fmt.Fprintf(h, "%s: %s\n", k, g.conf[k])
	}
	if len(g.pending) > 0 || len(g.pendingDelete) > 0 {
		fmt.Fprintf(h, "\n[PENDING]\n")
		pk := make([]string, 0, len(g.pending))
		for k := range g.pending {
			pk = append(pk, k)
		}
		sort.Strings(pk)
		for _, k := range pk {
			fmt.Fprintf(h, "%s: %s\n", k, g.pending[k])
		}
		dk := make([]string, 0, len(g.pendingDelete))
		for k := range g.pendingDelete {
			dk = append(dk, k)
		}
		sort.Strings(dk)
		if len(dk) > 0 {
			fmt.Fprintf(h, "delete: %s\n", strings.Join(dk, ","))
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// integer config keys are sent as JSON numbers, everything else as strings,
// as pve's JSON schema types them. QEMU's memory is a property string since
// qemu-server 8, LXC's an integer.
var (
	qemuIntKeys = map[string]bool{"cores": true, "sockets": true, "vcpus": true, "balloon": true,
		"shares": true, "protection": true, "onboot": true, "numa": true, "template": true,
		"cpuunits": true, "kvm": true, "acpi": true, "tablet": true, "autostart": true,
		"reboot": true, "localtime": true, "freeze": true}
	lxcIntKeys = map[string]bool{"cores": true, "memory": true, "swap": true, "cpuunits": true,
		"protection": true, "onboot": true, "unprivileged": true, "tty": true, "console": true,
		"template": true, "debug": true}
)

func (k Kind) intKey(key string) bool {
	if k == KindLXC {
		return lxcIntKeys[key]
	}
	return qemuIntKeys[key]
}

// configJSON renders the config GET reply: pending values merged in unless
// current is set, plus the digest.
func (g *guest) configJSON(current bool) map[string]any {
	merged := map[string]string{}
	for k, v := range g.conf {
		merged[k] = v
	}
	if !current {
		for k, v := range g.pending {
			merged[k] = v
		}
		for k := range g.pendingDelete {
			delete(merged, k)
		}
	}
	out := map[string]any{"digest": g.digest()}
	for k, v := range merged {
		out[k] = g.kind.typed(k, v)
	}
	return out
}

func (k Kind) typed(key, v string) any {
	if k.intKey(key) {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return n
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			return f
		}
	}
	return v
}

// SeedDemo adds a few guests for `felhom-dev`: two VMs, a container,
// a protected database VM and a VM under a backup lock.
func (s *Server) SeedDemo() error {
	demo := []struct {
		kind Kind
		g    Guest
	}{
		{KindQEMU, Guest{VMID: 100, Name: "web", Status: "running", MemoryMiB: 2048, Cores: 2, Tags: "demo;web",
			Disks:  map[string]string{"scsi0": "local-lvm:vm-100-disk-0,size=32G"},
			Config: map[string]string{"net0": "virtio=BC:24:11:00:01:00,bridge=vmbr0", "scsihw": "virtio-scsi-single", "boot": "order=scsi0;net0"}}},
		{KindQEMU, Guest{VMID: 101, Name: "worker", Status: "stopped", MemoryMiB: 4096, Cores: 4, Tags: "demo",
			Disks:  map[string]string{"scsi0": "local-lvm:vm-101-disk-0,size=64G"},
			Config: map[string]string{"net0": "virtio=BC:24:11:00:01:01,bridge=vmbr0", "scsihw": "virtio-scsi-single", "boot": "order=scsi0;net0"}}},
		{KindQEMU, Guest{VMID: 102, Name: "db", Status: "running", MemoryMiB: 8192, Cores: 4, Tags: "demo;db",
			Protection: true, Description: "customer database",
			Disks: map[string]string{"scsi0": "local-lvm:vm-102-disk-0,size=32G", "scsi1": "local-lvm:vm-102-disk-1,size=200G"}}},
		{KindQEMU, Guest{VMID: 103, Name: "archive", Status: "running", MemoryMiB: 1024, Cores: 1, Lock: "backup",
			Disks: map[string]string{"virtio0": "local-lvm:vm-103-disk-0,size=16G"}}},
		{KindLXC, Guest{VMID: 200, Name: "dns", Status: "running", MemoryMiB: 512, Cores: 1, Tags: "demo",
			Disks:  map[string]string{"rootfs": "local-lvm:vm-200-disk-0,size=8G"},
			Config: map[string]string{"net0": "name=eth0,bridge=vmbr0,ip=dhcp", "unprivileged": "1"}}},
	}
	for _, d := range demo {
		if err := s.addGuest(d.kind, d.g); err != nil {
			return err
		}
	}
	return nil
}

// setKey sets a config value; a disk slot that gets another volume keeps
// the old one as unusedN, as pve does.
func (g *guest) setKey(k, v string) {
	if old, ok := g.conf[k]; ok && isDiskKey(g.kind, k) && !strings.HasPrefix(k, "unused") && k != "rootfs" {
		oldID, _, oldOK := diskVolume(old)
		newID, _, _ := diskVolume(v)
		if oldOK && oldID != newID {
			g.conf[g.nextUnused()] = oldID
		}
	}
	g.conf[k] = v
}
