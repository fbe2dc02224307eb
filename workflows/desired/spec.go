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
	"maps"
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

// Limits of a spec (see Limits). Proxmox has its own; these bound what a
// spec may ask of the agent, so that a mistaken or hostile one (a size with
// too many digits, thousands of options) is refused with a clear error
// before it is stored in a workflow's history or sent to Proxmox.
const (
	// MaxMemoryMiB is 4 TiB, the most a Proxmox VE guest can be given.
	MaxMemoryMiB = 4 << 20
	// MaxDiskGiB is 1 PiB per disk.
	MaxDiskGiB = 1 << 20
	// MaxTags, MaxDisks and MaxOptions bound the lists and maps of a spec.
	MaxTags    = 64
	MaxDisks   = 300
	MaxOptions = 256
	// MaxValueBytes bounds one string of a spec: a disk's volume, an
	// option's value, the template.
	MaxValueBytes = 8 << 10
)

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
	optionKey   = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)
	plainKey    = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

// field names the entry key of the map prefix: prefix.key, or prefix[KEY]
// quoted when key is not a plain name (it is then shown, not trusted, and
// its newlines would split an error into lines).
func field(prefix, key string) string {
	if plainKey.MatchString(key) {
		return prefix + "." + key
	}
	return fmt.Sprintf("%s[%q]", prefix, truncate(key))
}

// truncate shortens s for an error message.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

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
		bad("host", "%q must be 1-63 lower-case letters, digits or '-'", truncate(s.Host))
	}
	if s.VMID < 100 || s.VMID > 999999999 {
		bad("vmid", "%d is outside Proxmox's range 100-999999999", s.VMID)
	}
	switch s.State {
	case Running, Stopped, Absent:
	case "":
		bad("state", "must be running, stopped or absent")
	default:
		bad("state", "%q is not running, stopped or absent", truncate(string(s.State)))
	}
	switch s.Kind {
	case QEMU, LXC:
	case "":
		if s.State != Absent {
			bad("kind", "must be qemu or lxc")
		}
	default:
		bad("kind", "%q is not qemu or lxc", truncate(string(s.Kind)))
	}
	if s.Name != "" && !namePattern.MatchString(s.Name) {
		bad("name", "%q is not a valid DNS name", truncate(s.Name))
	}
	memoryGiven := s.Memory != "" || s.MemoryMiB != 0
	if s.Memory != "" {
		mib, err := ParseMemoryMiB(s.Memory)
		if err != nil {
			bad("memory", "%v", err)
			memoryGiven = false
		}
		s.MemoryMiB = mib
	} else if s.MemoryMiB == 0 && s.State != Absent {
		s.MemoryMiB = 512
	}
	if memoryGiven && s.MemoryMiB < 16 {
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
			bad(field("disks", key), "is not a Proxmox disk key (scsi0, virtio1, rootfs, mp0, ...)")
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
			bad("tags", "%q is not a Proxmox tag", truncate(t))
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
			bad(field("options", key), "is set through its own field or not at all")
		}
	}
	return s, errors.Join(errs...)
}

// Limits checks that s stays within the limits of a spec (MaxMemoryMiB,
// MaxDiskGiB, MaxTags, MaxDisks, MaxOptions, MaxValueBytes) and that its
// option keys are config keys at all; every problem is a *FieldError,
// joined. Callers check it before Normalise, whose checks it keeps short:
// felhomctl for every spec, a guest workflow for a spec sent by Update.
// It is apart from Normalise because workflows replay Normalise over the
// specs they accepted before these limits.
func Limits(s Spec) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	if mib, err := ParseMemoryMiB(s.Memory); (s.Memory != "" && err == nil && mib > MaxMemoryMiB) || s.MemoryMiB > MaxMemoryMiB {
		bad("memory", "%d MiB is more than the %d MiB (4 TiB) a guest can have", max(mib, s.MemoryMiB), MaxMemoryMiB)
	}
	for _, f := range []struct {
		field  string
		n, max int
	}{{"tags", len(s.Tags), MaxTags}, {"disks", len(s.Disks), MaxDisks}, {"options", len(s.Options), MaxOptions}} {
		if f.n > f.max {
			bad(f.field, "%d are more than %d", f.n, f.max)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // the checks of each item could be as many
	}
	long := func(field, v string) bool {
		if len(v) > MaxValueBytes {
			bad(field, "is longer than %d bytes", MaxValueBytes)
		}
		return len(v) > MaxValueBytes
	}
	for _, key := range slices.Sorted(maps.Keys(s.Disks)) {
		vol := s.Disks[key]
		if long(field("disks", key), vol) {
			continue
		}
		if v, err := ParseVolume(vol); err == nil && v.SizeGiB > MaxDiskGiB {
			bad(field("disks", key), "%d GiB is more than %d GiB (1 PiB)", v.SizeGiB, MaxDiskGiB)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(s.Options)) {
		if !optionKey.MatchString(key) {
			bad("options", "%q is not a Proxmox config key", truncate(key))
			continue
		}
		long("options."+key, s.Options[key])
	}
	for _, t := range s.Tags {
		long("tags", t)
	}
	long("name", s.Name)
	long("ostemplate", s.OSTemplate)
	return errors.Join(errs...)
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
		return 0, fmt.Errorf("%q is not a whole number with an optional unit (B, KiB, MiB, GiB)", truncate(s))
	}
	mib := math.Ceil(float64(n) * mult / (1 << 20))
	if mib > 1<<31-1 {
		return 0, fmt.Errorf("%s is too large", truncate(s))
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
		return Volume{}, fmt.Errorf("%q is not STORAGE:SIZE_GIB", truncate(s))
	}
	if n, err := strconv.Atoi(size); err == nil && n > 0 {
		return Volume{Storage: storage, SizeGiB: n}, nil
	}
	for opt := range strings.SplitSeq(opts, ",") {
		if v, ok := strings.CutPrefix(opt, "size="); ok {
			g, err := parseSizeGiB(v)
			if err != nil {
				return Volume{}, fmt.Errorf("%q: %w", truncate(s), err)
			}
			return Volume{Storage: storage, SizeGiB: g}, nil
		}
	}
	return Volume{}, fmt.Errorf("%q has no size", truncate(s))
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
	// !(n > 0) also refuses NaN; an infinite or larger size would wrap
	// around when made an int.
	if err != nil || !(n > 0) {
		return 0, fmt.Errorf("size %q is not a positive number", truncate(v))
	}
	g := math.Ceil(n * mult)
	if g > math.MaxInt32 {
		return 0, fmt.Errorf("size %s is too large", truncate(v))
	}
	return int(g), nil
}
