package nft

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// Every test that touches the kernel works in network namespaces of its own
// named fgnft-*; nothing here changes the root namespace.

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables)")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs the %s command: %v", tool, err)
		}
	}
}

var nsSeq atomic.Int64

// nsNameRe matches the names newNS gives, of any run; group 1 is the pid of
// the test binary that created the namespace (see TestMain).
var nsNameRe = regexp.MustCompile(`^fgnft-.+-([0-9]+)-[0-9]+$`)

// nsCreate is held shared while newNS creates a namespace, and exclusively by
// TestMain's signal handler, so none appears after the handler has listed them.
var nsCreate sync.RWMutex

type testNS struct {
	name string
	h    netns.NsHandle
}

// newNS creates a named namespace with lo up; it is deleted when the test ends.
func newNS(t testing.TB, tag string) *testNS {
	t.Helper()
	name := fmt.Sprintf("fgnft-%s-%d-%d", tag, os.Getpid(), nsSeq.Add(1))
	func() {
		nsCreate.RLock()
		defer nsCreate.RUnlock() // also when run fails the test
		run(t, "ip", "netns", "add", name)
	}()
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { _ = h.Close() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return &testNS{name: name, h: h}
}

// do runs fn on the calling goroutine with its OS thread inside ns, and moves
// the thread back afterwards (also when fn calls t.Fatal). Sockets created in
// fn stay in ns; goroutines started by fn do not run in ns.
func (ns *testNS) do(t testing.TB, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	if err := netns.Set(ns.h); err != nil {
		_ = orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("enter netns %s: %v", ns.name, err)
	}
	defer func() {
		defer orig.Close()
		if err := netns.Set(orig); err != nil {
			// Keep the thread locked: the runtime discards it when this
			// goroutine exits, so no other goroutine runs in ns.
			t.Fatalf("return from netns %s: %v", ns.name, err)
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// exec runs a command inside ns and returns its combined output.
func (ns *testNS) exec(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "netns", "exec", ns.name}, args...)...)
}

// nft runs `nft -f -` with script inside ns.
func (ns *testNS) nft(t testing.TB, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in %s: %v: %s\n%s", ns.name, err, out, script)
	}
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newFirewall creates a Firewall inside ns and closes it when the test ends.
func newFirewall(t testing.TB, ns *testNS, cfg Config) *Firewall {
	t.Helper()
	var fw *Firewall
	ns.do(t, func() {
		var err error
		fw, err = New(cfg, testLogger(t))
		if err != nil {
			t.Fatalf("New: %v", err)
		}
	})
	t.Cleanup(func() {
		if err := fw.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return fw
}

// veth connects namespaces a (10.77.N.1, fd77:N::1) and b (10.77.N.2, fd77:N::2).
func veth(t testing.TB, a, b *testNS, n int) {
	t.Helper()
	run(t, "ip", "-n", a.name, "link", "add", "fgv0", "type", "veth", "peer", "name", "fgv1", "netns", b.name)
	for i, ns := range []*testNS{a, b} {
		dev := fmt.Sprintf("fgv%d", i)
		run(t, "ip", "-n", ns.name, "addr", "add", fmt.Sprintf("10.77.%d.%d/24", n, i+1), "dev", dev)
		run(t, "ip", "-n", ns.name, "addr", "add", fmt.Sprintf("fd77:%d::%d/64", n, i+1), "dev", dev, "nodad")
		run(t, "ip", "-n", ns.name, "link", "set", dev, "up")
	}
}
