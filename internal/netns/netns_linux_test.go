//go:build linux

package netns_test

import (
	"errors"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/felhom/felhom-agent/internal/netns"
	"github.com/felhom/felhom-agent/internal/testtool"
)

func need(t *testing.T) {
	t.Helper()
	if err := netns.Available(); err != nil {
		testtool.Unavailable(t, err)
	}
}

// A listener opened in Do lives in the namespace: the root namespace
// reaches it over the link while the link is up, not once it is cut, and
// again once it is healed; a program started with Command sees the
// namespace's own interfaces.
func TestListenInNamespaceAcrossALinkThatIsCutAndHealed(t *testing.T) {
	need(t)
	ns, err := netns.New("unit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	link, err := netns.Connect(nil, ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = link.Close() })
	if !link.Prefix.Contains(link.A.Addr) || !link.Prefix.Contains(link.B.Addr) || link.Prefix.Bits() != 30 || link.A.Addr == link.B.Addr {
		t.Fatalf("link addresses %s and %s are not on one /30", link.A.Addr, link.B.Addr)
	}

	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(link.B.Addr.String(), "0"))
		return err
	}); err != nil {
		t.Fatalf("listen in the namespace: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "hello")
			c.Close()
		}
	}()
	dial := func() error {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err == nil && string(b) != "hello" {
			err = errors.New("read " + string(b))
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatalf("root namespace to the namespace's listener: %v", err)
	}
	if _, err := net.Listen("tcp", net.JoinHostPort(link.B.Addr.String(), "0")); err == nil {
		t.Error("the namespace's address can be bound in the root namespace too: Do did not enter the namespace")
	}

	if err := link.Cut(); err != nil {
		t.Fatal(err)
	}
	// The root end is down and its namespace has no route there: dialling
	// fails at once instead of leaving by the default route.
	if err := dial(); !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Errorf("dial across the cut link: %v, want no route to host", err)
	}
	if err := link.Heal(); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err != nil {
		t.Errorf("dial across the healed link: %v", err)
	}

	out, err := ns.Command("ip", "-o", "-4", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), link.B.Addr.String()) || strings.Contains(string(out), link.A.Addr.String()+"/") {
		t.Errorf("addresses seen inside the namespace:\n%s\nwant %s and not %s", out, link.B.Addr, link.A.Addr)
	}
}

// Namespaces of a process that is gone are deleted by the next New.
func TestNewRemovesNamespacesOfDeadRuns(t *testing.T) {
	need(t)
	// A process that has exited: its id names no live process (the id may
	// be reused meanwhile, and then the namespace is left, as it should be).
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	stale := "felhom-" + strconv.Itoa(pid) + "-stale-000000"
	if out, err := exec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", stale).Run() })
	ns, err := netns.New("unit")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), stale) && syscall.Kill(pid, 0) != nil {
		t.Errorf("namespace %s of a dead process is still there:\n%s", stale, out)
	}
	if !strings.Contains(string(out), ns.Name) {
		t.Errorf("new namespace %s missing from:\n%s", ns.Name, out)
	}
}

// The route a cut adds outlives a run killed before it healed the link;
// the next New deletes it once its link is gone, and not while the link
// is there.
func TestNewRemovesRoutesOfCutsWhoseLinkIsGone(t *testing.T) {
	need(t)
	ns, err := netns.New("unit")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	live, err := netns.Connect(nil, ns)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := live.Cut(); err != nil {
		t.Fatal(err)
	}
	dead, err := netns.Connect(nil, ns)
	if err != nil {
		t.Fatal(err)
	}
	if err := dead.Cut(); err != nil {
		t.Fatal(err)
	}
	// The run dies here: its link goes with its namespace, its route stays.
	if out, err := exec.Command("ip", "link", "delete", dead.A.Dev).CombinedOutput(); err != nil {
		t.Fatalf("ip link delete: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "route", "delete", "unreachable", dead.Prefix.String()).Run() })
	if !hasUnreachable(t, dead.Prefix.String()) {
		t.Fatal("the cut's route went with its link: nothing to clean up, the test proves nothing")
	}

	other, err := netns.New("unit")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if hasUnreachable(t, dead.Prefix.String()) {
		t.Errorf("the route of a cut whose link is gone is still there")
	}
	if !hasUnreachable(t, live.Prefix.String()) {
		t.Errorf("the route of a live cut was deleted")
	}
	if err := live.Heal(); err != nil {
		t.Fatal(err)
	}
}

func hasUnreachable(t *testing.T, prefix string) bool {
	t.Helper()
	out, err := exec.Command("ip", "-4", "route", "show", "type", "unreachable").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(out), prefix)
}
