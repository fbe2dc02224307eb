//go:build linux

package netns

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrUnavailable is returned by Available, wrapped with the reason, when
// this machine cannot make network namespaces.
var ErrUnavailable = errors.New("network namespaces cannot be made here")

// namePrefix starts the name of every namespace this package makes;
// the creating process's id follows it.
const namePrefix = "felhom-"

// routeProto marks the unreachable routes Cut adds (a routing protocol
// number of no routing daemon), so that one a killed run left in the root
// namespace is found again.
const routeProto = "249"

// Available returns nil when network namespaces can be made: the process
// runs as root and `ip` (iproute2) is on PATH. Otherwise the error wraps
// ErrUnavailable and says what is missing.
func Available() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("%w: `ip` not found on PATH (apt-get install iproute2)", ErrUnavailable)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), running as uid %d", ErrUnavailable, os.Geteuid())
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("%w: kernel without network namespaces: %v", ErrUnavailable, err)
	}
	return nil
}

// Namespace is a named network namespace (`ip netns`), with its loopback up.
// The nil *Namespace stands for the root namespace in Connect.
type Namespace struct {
	Name string
}

// New makes a namespace named after role (a short word such as "host";
// letters and digits) and brings its loopback up. Close deletes it.
func New(role string) (*Namespace, error) {
	removeStale()
	name := fmt.Sprintf("%s%d-%s-%s", namePrefix, os.Getpid(), role, randomHex(3))
	if err := ip("netns", "add", name); err != nil {
		return nil, err
	}
	n := &Namespace{Name: name}
	if err := ip("-n", name, "link", "set", "lo", "up"); err != nil {
		_ = n.Close()
		return nil, err
	}
	return n, nil
}

// Close deletes the namespace. Links with an end in it go with it once no
// process runs in it any more.
func (n *Namespace) Close() error {
	return ip("netns", "delete", n.Name)
}

// Command is the command that runs name with args inside the namespace.
func (n *Namespace) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Do runs fn on an OS thread switched into the namespace, then switches the
// thread back. Sockets fn opens belong to the namespace for their whole
// life; goroutines fn starts run in whatever namespace their thread is in,
// so fn should only open sockets (a net.Listen), not dial later.
func (n *Namespace) Do(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// A thread whose namespace could not be restored is left locked:
		// the runtime ends it with this goroutine instead of reusing it.
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- fmt.Errorf("netns: this thread's namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + n.Name)
		if err != nil {
			done <- fmt.Errorf("netns: namespace %s: %w", n.Name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("netns: enter %s: %w", n.Name, err)
			return
		}
		fnErr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("netns: leave %s: %w", n.Name, err)
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// End is one end of a Link.
type End struct {
	NS   *Namespace // nil: the root namespace
	Dev  string     // the veth device's name
	Addr netip.Addr // its address on the link's /30
}

// Link is a veth pair between two namespaces, with an address on a /30 at
// each end.
type Link struct {
	A, B   End
	Prefix netip.Prefix // the /30 both addresses are on
}

// Connect makes a veth link between a and b (nil: the root namespace),
// gives each end an address on a fresh /30 and brings both up.
func Connect(a, b *Namespace) (*Link, error) {
	prefix, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	base := prefix.Addr()
	suffix := randomHex(3)
	l := &Link{
		Prefix: prefix,
		A:      End{NS: a, Dev: "fh" + suffix + "a", Addr: base.Next()},
		B:      End{NS: b, Dev: "fh" + suffix + "b", Addr: base.Next().Next()},
	}
	if err := ip("link", "add", l.A.Dev, "type", "veth", "peer", "name", l.B.Dev); err != nil {
		return nil, err
	}
	for _, e := range []End{l.A, l.B} {
		if e.NS != nil {
			if err := ip("link", "set", e.Dev, "netns", e.NS.Name); err != nil {
				_ = l.Close()
				return nil, err
			}
		}
		addr := netip.PrefixFrom(e.Addr, prefix.Bits()).String()
		if err := ip(e.args("addr", "add", addr, "dev", e.Dev)...); err != nil {
			_ = l.Close()
			return nil, err
		}
		if err := e.set("up"); err != nil {
			_ = l.Close()
			return nil, err
		}
	}
	return l, nil
}

// Cut takes A's end down and makes A's namespace refuse to route to the
// link's /30 (an unreachable route: without it a root namespace would send
// B's traffic out of its default route). B's end loses its carrier: what B
// sends is dropped without an error, as on a cable pulled at the far end,
// so B's connections hang until their own timeouts notice; what A sends
// fails with "no route to host".
func (l *Link) Cut() error {
	if err := l.A.set("down"); err != nil {
		return err
	}
	return ip(l.A.args("route", "add", "unreachable", l.Prefix.String(), "proto", routeProto)...)
}

// Heal undoes Cut: A's end comes up again with its address and route.
func (l *Link) Heal() error {
	if err := ip(l.A.args("route", "delete", "unreachable", l.Prefix.String())...); err != nil {
		return err
	}
	return l.A.set("up")
}

// Close deletes the veth pair (both ends go together), and the route of a
// cut that was never healed.
func (l *Link) Close() error {
	_ = ip(l.A.args("route", "delete", "unreachable", l.Prefix.String())...)
	for _, e := range []End{l.A, l.B} {
		if err := ip(e.args("link", "delete", e.Dev)...); err == nil {
			return nil
		}
	}
	return fmt.Errorf("netns: link %s-%s is gone already or cannot be deleted", l.A.Dev, l.B.Dev)
}

func (e End) set(state string) error { return ip(e.args("link", "set", e.Dev, state)...) }

// args is an ip command run in e's namespace.
func (e End) args(args ...string) []string {
	if e.NS == nil {
		return args
	}
	return append([]string{"-n", e.NS.Name}, args...)
}

// freeSubnet picks a random /30 of 10.0.0.0/8 that no route of the root
// namespace overlaps (the machine's own networks, and the links of other
// runs, whose root ends sit there or whose namespaces are not visible but
// are as unlikely to collide as two random draws of 2^22).
func freeSubnet() (netip.Prefix, error) {
	out, err := exec.Command("ip", "-j", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("netns: list routes: %w", err)
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return netip.Prefix{}, fmt.Errorf("netns: parse `ip -j route`: %w", err)
	}
	var used []netip.Prefix
	for _, r := range routes {
		if p, err := netip.ParsePrefix(r.Dst); err == nil {
			used = append(used, p)
		} else if a, err := netip.ParseAddr(r.Dst); err == nil {
			used = append(used, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	for range 100 {
		var b [4]byte
		_, _ = rand.Read(b[1:])
		b[0] = 10
		v := binary.BigEndian.Uint32(b[:]) &^ 3
		binary.BigEndian.PutUint32(b[:], v)
		p := netip.PrefixFrom(netip.AddrFrom4(b), 30)
		if !overlapsAny(p, used) {
			return p, nil
		}
	}
	return netip.Prefix{}, errors.New("netns: no free /30 in 10.0.0.0/8 after 100 tries: the machine's routes cover it")
}

func overlapsAny(p netip.Prefix, used []netip.Prefix) bool {
	for _, u := range used {
		if u.Bits() > 0 && u.Overlaps(p) {
			return true
		}
	}
	return false
}

// removeStale deletes the namespaces of runs whose process is gone, and
// the unreachable routes of cuts in the root namespace whose link is gone.
// Best effort: whatever cannot be deleted stays for the next run to try.
func removeStale() {
	removeStaleRoutes()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, namePrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 || alive(pid) {
			continue
		}
		_ = ip("netns", "delete", name)
	}
}

// removeStaleRoutes deletes the root namespace's cut routes (routeProto)
// that cover no address of this namespace: a live cut's link keeps its
// address on the downed end.
func removeStaleRoutes() {
	var routes []struct {
		Dst string `json:"dst"`
	}
	out, err := exec.Command("ip", "-j", "-4", "route", "show", "type", "unreachable", "proto", routeProto).Output()
	if err != nil || json.Unmarshal(out, &routes) != nil {
		return
	}
	var addrs []struct {
		AddrInfo []struct {
			Local string `json:"local"`
		} `json:"addr_info"`
	}
	out, err = exec.Command("ip", "-j", "-4", "addr", "show").Output()
	if err != nil || json.Unmarshal(out, &addrs) != nil {
		return
	}
	for _, r := range routes {
		prefix, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			continue
		}
		used := false
		for _, a := range addrs {
			for _, info := range a.AddrInfo {
				if addr, err := netip.ParseAddr(info.Local); err == nil && prefix.Contains(addr) {
					used = true
				}
			}
		}
		if !used {
			_ = ip("route", "delete", "unreachable", r.Dst, "proto", routeProto)
		}
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ip runs the ip command, returning its error output in the error.
func ip(args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("netns: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
