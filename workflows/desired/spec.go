// Package desired is the desired-state model of one guest: the spec the
// control plane sends, its validation and normalisation, the observed state
// of a guest, and Plan, which turns the two into an ordered list of actions.
//
// It is pure (no I/O, no clock) so that workflows can call it
// deterministically and felhomctl can run the same checks before sending.
package desired

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Kind is the Proxmox guest type.
type Kind string

// Guest kinds.
const (
	QEMU Kind = "qemu"
	LXC  Kind = "lxc"
)

// State is the power state a spec asks for; Absent asks for the guest to
// not exist.
type State string

// Desired states.
const (
	Running State = "running"
	Stopped State = "stopped"
	Absent  State = "absent"
)

// Spec is the desired state of one guest on one host.
type Spec struct {
	Host  string `json:"host" yaml:"host"`
	VMID  int    `json:"vmid" yaml:"vmid"`
	Kind  Kind   `json:"kind" yaml:"kind"`
	Name  string `json:"name,omitempty" yaml:"name,omitempty"`
	State State  `json:"state" yaml:"state"`
	// Memory is "2048" (MiB, Proxmox's unit), or a size with a unit: "2GiB",
	// "512MiB", "2147483648B". Normalise rounds it up to whole MiB.
	Memory string `json:"memory,omitempty" yaml:"memory,omitempty"`
	// MemoryMiB is Memory normalised; it is what is compared and written.
	MemoryMiB int `json:"memory_mib,omitempty" yaml:"-"`
	Cores     int `json:"cores,omitempty" yaml:"cores,omitempty"`
	// Disks maps a Proxmox disk key (scsi0, virtio1, rootfs, mp0) to its
	// volume spec, "STORAGE:SIZE_GIB" or a full Proxmox volume string.
	Disks map[string]string `json:"disks,omitempty" yaml:"disks,omitempty"`
	Tags  []string          `json:"tags,omitempty" yaml:"tags,omitempty"`
	// Scratch asks the agent to record, when it creates this guest, that the
	// guest holds no customer data. It only has effect at creation, on the
	// host's own ledger: marking an existing guest scratch changes nothing.
	Scratch bool `json:"scratch,omitempty" yaml:"scratch,omitempty"`
	// OSTemplate is the template volume a container is created from
	// ("local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"); LXC only.
	OSTemplate string `json:"ostemplate,omitempty" yaml:"ostemplate,omitempty"`
	// Options are further Proxmox config keys, passed as they are.
	Options map[string]string `json:"options,omitempty" yaml:"options,omitempty"`
}

// FieldError names the spec field that is wrong and why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

var (
	hostPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	diskKey     = regexp.MustCompile(`^(scsi|virtio|sata|ide|efidisk|tpmstate|mp)[0-9]+$|^rootfs$`)
	tagPattern  = regexp.MustCompile(`^[a-z0-9_][a-z0-9_+.-]*$`)
	namePattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$`)
)

// reservedOptions are config keys that Spec owns, or that change what a
// guest is rather than how it is configured.
var reservedOptions = []string{"memory", "cores", "name", "hostname", "tags", "protection", "digest", "delete", "vmid", "archive", "ostemplate", "restore", "force"}

// Normalise validates s and returns it in canonical form: memory in MiB,
// tags sorted and de-duplicated, defaults filled the way Proxmox fills them
// (1 core, 512 MiB). Every problem is a *FieldError, joined.
func Normalise(s Spec) (Spec, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	if !hostPattern.MatchString(s.Host) {
		bad("host", "%q must be 1-63 lower-case letters, digits or '-'", s.Host)
	}
	if s.VMID < 100 || s.VMID > 999999999 {
		bad("vmid", "%d is outside Proxmox's range 100-999999999", s.VMID)
	}
	switch s.State {
	case Running, Stopped, Absent:
	case "":
		bad("state", "must be running, stopped or absent")
	default:
		bad("state", "%q is not running, stopped or absent", s.State)
	}
	switch s.Kind {
	case QEMU, LXC:
	case "":
		if s.State != Absent {
			bad("kind", "must be qemu or lxc")
		}
	default:
		bad("kind", "%q is not qemu or lxc", s.Kind)
	}
	if s.Name != "" && !namePattern.MatchString(s.Name) {
		bad("name", "%q is not a valid DNS name", s.Name)
	}
	if s.Memory != "" {
		mib, err := ParseMemoryMiB(s.Memory)
		if err != nil {
			bad("memory", "%v", err)
		}
		s.MemoryMiB = mib
	} else if s.MemoryMiB == 0 && s.State != Absent {
		s.MemoryMiB = 512
	}
	if s.MemoryMiB != 0 && s.MemoryMiB < 16 {
		bad("memory", "%d MiB is below Proxmox's minimum of 16 MiB", s.MemoryMiB)
	}
	s.Memory = ""
	switch {
	case s.Cores < 0 || s.Cores > 8192:
		bad("cores", "%d is outside 1-8192", s.Cores)
	case s.Cores == 0 && s.State != Absent:
		s.Cores = 1
	}
	for key, vol := range s.Disks {
		if !diskKey.MatchString(key) {
			bad("disks."+key, "is not a Proxmox disk key (scsi0, virtio1, rootfs, mp0, ...)")
			continue
		}
		if (key == "rootfs" || strings.HasPrefix(key, "mp")) != (s.Kind == LXC) && s.Kind != "" {
			bad("disks."+key, "is not a %s disk", s.Kind)
		}
		if _, err := ParseVolume(vol); err != nil {
			bad("disks."+key, "%v", err)
		}
	}
	if s.Kind == LXC && s.State != Absent && s.Disks["rootfs"] == "" {
		bad("disks.rootfs", "a container needs a rootfs")
	}
	switch {
	case s.OSTemplate != "" && s.Kind != LXC:
		bad("ostemplate", "only a container (kind lxc) is created from a template")
	case s.Kind == LXC && s.State != Absent && s.OSTemplate == "":
		bad("ostemplate", "a container needs a template to be created from")
	}
	tags := make([]string, 0, len(s.Tags))
	for _, t := range s.Tags {
		t = strings.ToLower(strings.TrimSpace(t))
		if !tagPattern.MatchString(t) {
			bad("tags", "%q is not a Proxmox tag", t)
			continue
		}
		tags = append(tags, t)
	}
	slices.Sort(tags)
	s.Tags = slices.Compact(tags)
	if len(s.Tags) == 0 {
		s.Tags = nil
	}
	for key := range s.Options {
		if slices.Contains(reservedOptions, key) || diskKey.MatchString(key) {
			bad("options."+key, "is set through its own field or not at all")
		}
	}
	return s, errors.Join(errs...)
}

// ParseMemoryMiB reads a memory size and rounds it up to whole MiB, the unit
// Proxmox stores, so that a non-aligned request converges in one pass.
func ParseMemoryMiB(s string) (int, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		bytes  float64
	}{
		{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
		{"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1},
	}
	mult := float64(1 << 20) // a bare number is MiB, as in Proxmox's config
	for _, u := range units {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.bytes
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a whole number with an optional unit (B, KiB, MiB, GiB)", s)
	}
	mib := math.Ceil(float64(n) * mult / (1 << 20))
	if mib > 1<<31-1 {
		return 0, fmt.Errorf("%s is too large", s)
	}
	return int(mib), nil
}

// Volume is a disk's storage and size.
type Volume struct {
	Storage string
	SizeGiB int
}

// ParseVolume reads "STORAGE:SIZE" (size in GiB, as Proxmox's create API
// takes it) or a Proxmox volume string with a size= option.
func ParseVolume(s string) (Volume, error) {
	head, opts, _ := strings.Cut(s, ",")
	storage, size, ok := strings.Cut(head, ":")
	if !ok || storage == "" {
		return Volume{}, fmt.Errorf("%q is not STORAGE:SIZE_GIB", s)
	}
	if n, err := strconv.Atoi(size); err == nil && n > 0 {
		return Volume{Storage: storage, SizeGiB: n}, nil
	}
	for opt := range strings.SplitSeq(opts, ",") {
		if v, ok := strings.CutPrefix(opt, "size="); ok {
			g, err := parseSizeGiB(v)
			if err != nil {
				return Volume{}, fmt.Errorf("%q: %w", s, err)
			}
			return Volume{Storage: storage, SizeGiB: g}, nil
		}
	}
	return Volume{}, fmt.Errorf("%q has no size", s)
}

func parseSizeGiB(v string) (int, error) {
	units := map[byte]float64{'T': 1024, 'G': 1, 'M': 1.0 / 1024, 'K': 1.0 / (1024 * 1024)}
	if v == "" {
		return 0, errors.New("empty size")
	}
	mult, ok := units[v[len(v)-1]]
	if ok {
		v = v[:len(v)-1]
	} else {
		mult = 1.0 / (1 << 30)
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q is not a positive number", v)
	}
	return int(math.Ceil(n * mult)), nil
}
