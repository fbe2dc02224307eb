// Package pveschema checks guest config values as Proxmox VE's API schema
// (pve-common's JSONSchema, with qemu-server's and pve-container's
// property definitions) does, for the keys a desired state may carry: the
// name, network devices, the OS type, tags, and the boolean, integer and
// enumerated options. Proxmox refuses a value it fails with 400 "Parameter
// verification failed." and this message for the key; checking first lets
// `felhomctl plan/apply` and the create activity refuse it before anything
// is sent. The simulator answers with the same messages.
//
// A key the package does not know is not checked here (Proxmox decides).
package pveschema

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Guest kinds, as in API paths.
const (
	QEMU = "qemu"
	LXC  = "lxc"
)

// Check returns Proxmox's message for value of config key of a guest of
// kind, "" when Proxmox accepts it (or the key is not checked here).
func Check(kind, key, value string) string {
	if spec, ok := rule(kind, key); ok {
		return spec(key, value)
	}
	return ""
}

// CheckAll checks every value of config and returns the messages by key,
// nil when all pass.
func CheckAll(kind string, config map[string]string) map[string]string {
	var out map[string]string
	for k, v := range config {
		if msg := Check(kind, k, v); msg != "" {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = msg
		}
	}
	return out
}

// Problems renders CheckAll's messages as "KEY: MESSAGE" lines, sorted.
func Problems(msgs map[string]string) []string {
	out := make([]string, 0, len(msgs))
	for k, m := range msgs {
		out = append(out, k+": "+m)
	}
	sort.Strings(out)
	return out
}

type checker func(key, value string) string

var (
	netKey   = regexp.MustCompile(`^net\d+$`)
	dnsName  = regexp.MustCompile(`^(([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)\.)*([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)$`)
	tagRE    = regexp.MustCompile(`(?i)^[a-z0-9_][a-z0-9_\-+.]*$`)
	bridgeRE = regexp.MustCompile(`^[-_.\w\d]+$`)
	macRE    = regexp.MustCompile(`(?i)^[a-f0-9][02468ace](:[a-f0-9]{2}){5}$`)
	intRE    = regexp.MustCompile(`^[+-]?\d+$`)
	numRE    = regexp.MustCompile(`^[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?$`)
)

// rule is the check of key for kind.
func rule(kind, key string) (checker, bool) {
	if netKey.MatchString(key) {
		if kind == LXC {
			return lxcNet, true
		}
		return qemuNet, true
	}
	rules := qemuRules
	if kind == LXC {
		rules = lxcRules
	}
	c, ok := rules[key]
	return c, ok
}

var qemuRules = map[string]checker{
	"name":       dnsNameCheck,
	"tags":       tagsCheck,
	"ostype":     enum("other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11", "l24", "l26", "solaris"),
	"scsihw":     enum("lsi", "lsi53c810", "virtio-scsi-pci", "virtio-scsi-single", "megasas", "pvscsi"),
	"bios":       enum("seabios", "ovmf"),
	"cores":      integer(1, 0),
	"sockets":    integer(1, 0),
	"vcpus":      integer(1, 0),
	"balloon":    integer(0, 0),
	"shares":     integer(0, 50000),
	"cpuunits":   integer(1, 262144),
	"onboot":     boolean,
	"protection": boolean,
	"template":   boolean,
	"acpi":       boolean,
	"kvm":        boolean,
	"numa":       boolean,
	"tablet":     boolean,
	"localtime":  boolean,
	"reboot":     boolean,
	"freeze":     boolean,
	"autostart":  boolean,
}

var lxcRules = map[string]checker{
	"hostname":     dnsNameCheck,
	"tags":         tagsCheck,
	"ostype":       enum("debian", "devuan", "ubuntu", "centos", "fedora", "opensuse", "archlinux", "alpine", "gentoo", "nixos", "unmanaged"),
	"arch":         enum("amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"),
	"cmode":        enum("shell", "console", "tty"),
	"cores":        integer(1, 8192),
	"swap":         integer(0, 0),
	"cpuunits":     integer(0, 500000),
	"tty":          integer(0, 6),
	"onboot":       boolean,
	"protection":   boolean,
	"template":     boolean,
	"unprivileged": boolean,
	"console":      boolean,
	"debug":        boolean,
}

func dnsNameCheck(_, v string) string {
	if !dnsName.MatchString(v) {
		return "invalid format - value does not look like a valid DNS name"
	}
	return ""
}

// tagsCheck is pve-tag-list: tags split at ",", ";" and white space.
func tagsCheck(_, v string) string {
	for _, t := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ';' || r == ' ' || r == '\t' }) {
		if !tagRE.MatchString(t) {
			return "invalid format - invalid characters in tag"
		}
	}
	return ""
}

func enum(values ...string) checker {
	return func(_, v string) string {
		if slices.Contains(values, v) {
			return ""
		}
		return fmt.Sprintf("value '%s' does not have a value in the enumeration '%s'", v, strings.Join(values, ", "))
	}
}

// boolean: the API takes 1 or 0 (JSON true and false arrive as such).
func boolean(_, v string) string {
	if v == "1" || v == "0" {
		return ""
	}
	return fmt.Sprintf("type check ('boolean') failed - got '%s'", v)
}

// integer checks the type and the bounds: at least lo and, when hi is not
// 0, at most hi.
func integer(lo, hi int) checker {
	return func(_, v string) string {
		if !intRE.MatchString(v) {
			return fmt.Sprintf("type check ('integer') failed - got '%s'", v)
		}
		n, _ := strconv.Atoi(v)
		switch {
		case n < lo:
			return fmt.Sprintf("value must have a minimum value of %d", lo)
		case hi > 0 && n > hi:
			return fmt.Sprintf("value must have a maximum value of %d", hi)
		}
		return ""
	}
}

// property is one key of a property string's format.
type property struct {
	check      checker
	required   bool
	defaultKey bool
}

var qemuNICModels = []string{"e1000", "e1000-82540em", "e1000-82544gc", "e1000-82545em", "e1000e", "i82551", "i82557b",
	"i82559er", "ne2k_isa", "ne2k_pci", "pcnet", "rtl8139", "virtio", "vmxnet3"}

var qemuNetFormat = map[string]property{
	"model":     {check: enum(qemuNICModels...), required: true, defaultKey: true},
	"macaddr":   {check: macCheck},
	"bridge":    {check: bridgeCheck},
	"queues":    {check: integer(0, 64)},
	"rate":      {check: number},
	"tag":       {check: integer(1, 4094)},
	"trunks":    {check: patternCheck(regexp.MustCompile(`^\d+(?:-\d+)?(?:;\d+(?:-\d+)?)*$`))},
	"firewall":  {check: boolean},
	"link_down": {check: boolean},
	"mtu":       {check: integer(1, 65520)},
}

var lxcNetFormat = map[string]property{
	"name":         {check: patternCheck(bridgeRE), required: true},
	"type":         {check: enum("veth")},
	"bridge":       {check: patternCheck(bridgeRE)},
	"hwaddr":       {check: macCheck},
	"mtu":          {check: integer(64, 65535)},
	"ip":           {},
	"gw":           {},
	"ip6":          {},
	"gw6":          {},
	"firewall":     {check: boolean},
	"tag":          {check: integer(1, 4094)},
	"trunks":       {check: patternCheck(regexp.MustCompile(`^\d+(?:;\d+)*$`))},
	"rate":         {check: number},
	"link_down":    {check: boolean},
	"host-managed": {check: boolean},
}

// macCheck is mac-addr: a unicast address (pve refuses the I/G bit).
func macCheck(_, v string) string {
	if !macRE.MatchString(v) {
		return "invalid format - value does not look like a valid unicast MAC address"
	}
	return ""
}

// bridgeCheck is pve-bridge-id.
func bridgeCheck(_, v string) string {
	if !bridgeRE.MatchString(v) {
		return fmt.Sprintf("invalid format - invalid bridge ID '%s'", v)
	}
	return ""
}

func number(_, v string) string {
	if !numRE.MatchString(v) {
		return fmt.Sprintf("type check ('number') failed - got '%s'", v)
	}
	return ""
}

func patternCheck(re *regexp.Regexp) checker {
	return func(_, v string) string {
		if !re.MatchString(v) {
			return "value does not match the regex pattern"
		}
		return ""
	}
}

// qemuNet is qemu-server's net format: a NIC model as a key takes the MAC
// address as its value ("virtio=BC:24:11:00:00:01"), a bare value is the
// model.
func qemuNet(key, v string) string {
	return propertyString(key, v, qemuNetFormat, func(k string) (string, bool) {
		return "model", slices.Contains(qemuNICModels, k)
	})
}

func lxcNet(key, v string) string {
	return propertyString(key, v, lxcNetFormat, nil)
}

// propertyString is pve's parse_property_string then check_object on the
// result, with its messages. alias maps a key that names another key's
// value (a NIC model) to that key.
func propertyString(key, v string, format map[string]property, alias func(string) (string, bool)) string {
	res := map[string]string{}
	for _, part := range strings.Split(v, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		k, val, hasKey := strings.Cut(part, "=")
		if !hasKey {
			dk := ""
			for name, p := range format {
				if p.defaultKey {
					dk = name
				}
			}
			if dk == "" {
				return "invalid format - value without key, but schema does not define a default key"
			}
			if _, dup := res[dk]; dup {
				return "invalid format - duplicate key in comma-separated list property: " + dk
			}
			res[dk] = part
			continue
		}
		if val == "" {
			return "invalid format - missing key in comma-separated list property"
		}
		if alias != nil {
			if target, ok := alias(k); ok {
				if _, dup := res[target]; dup {
					return "invalid format - duplicate key in comma-separated list property: " + target
				}
				res[target], k = k, "macaddr"
			}
		}
		if _, ok := format[k]; !ok {
			return "invalid format - invalid key in comma-separated list property: " + k
		}
		if _, dup := res[k]; dup {
			return "invalid format - duplicate key in comma-separated list property: " + k
		}
		res[k] = val
	}
	var errs []string
	for _, name := range slices.Sorted(maps.Keys(format)) {
		p := format[name]
		val, ok := res[name]
		switch {
		case !ok && p.required:
			errs = append(errs, fmt.Sprintf("%s.%s: property is missing and it is not optional", key, name))
		case ok && p.check != nil:
			if msg := p.check(name, val); msg != "" {
				errs = append(errs, fmt.Sprintf("%s.%s: %s", key, name, msg))
			}
		}
	}
	if len(errs) > 0 {
		return "invalid format - format error\n" + strings.Join(errs, "\n")
	}
	return ""
}
