package nft

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/ti-mo/conntrack"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/proxy"
)

// ended records OnPinholeEnd calls.
type ended struct {
	mu    sync.Mutex
	calls []endCall
	ch    chan endCall
}

type endCall struct {
	f   proxy.Flow
	end PinholeEnd
}

func newEnded() *ended { return &ended{ch: make(chan endCall, 1000)} }

func (e *ended) hook(f proxy.Flow, end PinholeEnd) {
	c := endCall{f, end}
	e.mu.Lock()
	e.calls = append(e.calls, c)
	e.mu.Unlock()
	e.ch <- c
}

func (e *ended) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.calls)
}

// wait returns the next call or fails after d.
func (e *ended) wait(t *testing.T, d time.Duration) endCall {
	t.Helper()
	select {
	case c := <-e.ch:
		return c
	case <-time.After(d):
		t.Fatalf("OnPinholeEnd not called within %v", d)
		return endCall{}
	}
}

// leakCheck verifies, after every other cleanup of t (Firewall.Close, netns
// deletion), that no goroutine started during the test is left.
func leakCheck(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func flow(src, dst string) proxy.Flow {
	return proxy.Flow{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddrPort(dst), Dir: proxy.Passive}
}

func TestOpenValidation(t *testing.T) {
	fw := &Firewall{} // validation happens before any kernel access
	ctx := context.Background()
	cases := []struct {
		name string
		f    proxy.Flow
		ttl  time.Duration
		want string
	}{
		{"mixed families", flow("10.0.0.1", "[fd00::1]:5000"), time.Second, "different address families"},
		{"port 0", flow("10.0.0.1", "10.0.0.2:0"), time.Second, "port 0"},
		{"no source", proxy.Flow{Dst: netip.MustParseAddrPort("10.0.0.2:5000")}, time.Second, "addresses are required"},
		{"ttl 0", flow("10.0.0.1", "10.0.0.2:5000"), 0, "ttl"},
		{"negative ttl", flow("10.0.0.1", "10.0.0.2:5000"), -time.Second, "ttl"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := fw.Open(ctx, c.f, c.ttl)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open(%v, %v) = %v, want error containing %q", c.f, c.ttl, err, c.want)
			}
		})
	}
	// In transparent mode a pinhole to an intercepted port would be
	// diverted to ftpgate's listener instead: refused.
	// (A cancelled context ends Open before it reaches the kernel.)
	done, stop := context.WithCancel(ctx)
	stop()
	tfw := &Firewall{cfg: Config{Intercept: true, InterceptPorts: []uint16{21, 2121}}}
	for _, f := range []proxy.Flow{flow("10.0.0.1", "10.0.0.2:2121"), natFlow("fd00::1", "[fd00::2]:2121", "[fd00::3]:40000", "")} {
		if _, err := tfw.Open(done, f, time.Second); !errors.Is(err, ErrInterceptPort) || !strings.Contains(err.Error(), "--intercept-port 2121") {
			t.Errorf("transparent Open(%v) = %v, want ErrInterceptPort naming --intercept-port 2121", f, err)
		}
	}
	// Reverse mode intercepts nothing.
	rfw := &Firewall{cfg: Config{InterceptPorts: []uint16{21, 2121}}}
	if _, err := rfw.Open(done, flow("10.0.0.1", "10.0.0.2:2121"), time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("reverse-mode Open of port 2121 = %v, want it to pass validation (and stop at the cancelled context)", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := fw.Open(cctx, flow("10.0.0.1", "10.0.0.2:5000"), time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open(cancelled ctx) = %v, want context.Canceled", err)
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Table != "ftpgate" || cfg.CTMark != 0x100 || cfg.CTMask != 0x100 || cfg.FWMark != 1 ||
		cfg.RouteTable != 100 || cfg.TProxy4 != DefaultTProxy4 || cfg.TProxy6 != DefaultTProxy6 || cfg.InterceptZone != 0x4654 ||
		len(cfg.InterceptPorts) != 1 || cfg.InterceptPorts[0] != 21 {
		t.Fatalf("defaults: %+v", cfg)
	}
	cfg, err = Config{TProxy4: netip.MustParseAddrPort("127.0.0.1:3000")}.withDefaults()
	if err != nil || cfg.TProxy6.IsValid() {
		t.Fatalf("only TProxy4 set: TProxy6 = %v (err %v), want invalid (no IPv6 interception)", cfg.TProxy6, err)
	}
	for _, bad := range []Config{
		{CTMark: 0x300, CTMask: 0x100},
		{InterceptPorts: []uint16{0}},
		{TProxy4: netip.MustParseAddrPort("[::1]:2121")},
		{RouteTable: 254},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("config %+v accepted, want error", bad)
		}
	}
}

// listTable inspects the table from a second (non-owner) netlink socket.
func listTable(t *testing.T, ns *testNS, name string) (*nftables.Table, error) {
	var tab *nftables.Table
	var err error
	ns.do(t, func() {
		var c *nftables.Conn
		c, err = nftables.New()
		if err == nil {
			tab, err = c.ListTableOfFamily(name, nftables.TableFamilyINet)
		}
	})
	return tab, err
}

func TestNewInstallsAndCloseRemoves(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "new")
	var fw *Firewall
	ns.do(t, func() {
		var err error
		fw, err = New(Config{Intercept: true, InterceptPorts: []uint16{21, 2121}}, testLogger(t))
		if err != nil {
			t.Fatalf("New: %v", err)
		}
	})
	defer fw.Close()

	tab, err := listTable(t, ns, "ftpgate")
	if err != nil {
		t.Fatalf("table inet ftpgate not found from a second socket: %v", err)
	}
	pid, _ := fw.conn.GetPortID()
	if tab.Flags&nftables.TableFlagOwner == 0 || tab.Owner != pid {
		t.Errorf("table flags %#x owner %d, want owner flag and owner %d", tab.Flags, tab.Owner, pid)
	}

	rs := ns.exec(t, "nft", "list", "ruleset")
	for _, want := range []string{
		"table inet ftpgate",
		"set intercept_ports",
		"elements = { 21, 2121 }",
		"set pin4",
		"type ipv4_addr . ipv4_addr . inet_service",
		"set pin6",
		"type ipv6_addr . ipv6_addr . inet_service",
		"flags dynamic,timeout",
		"type filter hook prerouting priority mangle; policy accept;",
		"tcp flags != syn / syn,ack socket transparent 1 meta mark set 0x00000001 accept",
		"tcp dport @intercept_ports fib daddr type != local ct mark set ct mark | 0x00000100 meta mark set 0x00000001 tproxy ip to 127.0.0.1:2121 accept",
		"tproxy ip6 to [::1]:2121 accept",
		"ct state new tcp flags syn / fin,syn,rst,ack ip saddr . ip daddr . tcp dport @pin4 delete @pin4 { ip saddr . ip daddr . tcp dport } ct mark set ct mark | 0x00000100",
		"ct state new tcp flags syn / fin,syn,rst,ack ip6 saddr . ip6 daddr . tcp dport @pin6 delete @pin6 { ip6 saddr . ip6 daddr . tcp dport } ct mark set ct mark | 0x00000100",
		"set natpin4",
		"map dnat4 {\n\t\ttype ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service\n\t\tsize 65535\n\t\tflags timeout\n",
		"map dnat6 {\n\t\ttype ipv6_addr . ipv6_addr . inet_service : ipv6_addr . inet_service\n",
		"map snat4 {\n\t\ttype ipv4_addr . ipv4_addr . inet_service : ipv4_addr\n",
		"map snat6 {\n\t\ttype ipv6_addr . ipv6_addr . inet_service : ipv6_addr\n",
		"type nat hook prerouting priority dstnat; policy accept;",
		"ct state new tcp flags syn / fin,syn,rst,ack ip saddr . ip daddr . tcp dport @natpin4 delete @natpin4 { ip saddr . ip daddr . tcp dport } ip saddr . ip daddr . tcp dport @dnat4 ct mark set ct mark | 0x00000100 dnat ip to ip saddr . ip daddr . tcp dport map @dnat4",
		"ct state new tcp flags syn / fin,syn,rst,ack ip6 saddr . ip6 daddr . tcp dport @natpin6 delete @natpin6 { ip6 saddr . ip6 daddr . tcp dport } ip6 saddr . ip6 daddr . tcp dport @dnat6 ct mark set ct mark | 0x00000100 dnat ip6 to ip6 saddr . ip6 daddr . tcp dport map @dnat6",
		"type nat hook postrouting priority srcnat; policy accept;",
		"meta l4proto tcp ct status dnat snat ip to ip saddr . ct original ip daddr . ct original proto-dst map @snat4",
		"meta l4proto tcp ct status dnat snat ip6 to ip6 saddr . ct original ip6 daddr . ct original proto-dst map @snat6",
		// (priority -100 and 100: newer nft list them as dstnat and srcnat)
		"chain nat_output {\n\t\ttype nat hook output priority ",
		"chain nat_input {\n\t\ttype nat hook input priority ",
		"chain raw_prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n" +
			"\t\tmeta nfproto ipv4 tcp dport @intercept_ports fib daddr type != local ct zone set 18004\n" +
			"\t\tmeta nfproto ipv6 tcp dport @intercept_ports fib daddr type != local ct zone set 18004\n\t}",
		"chain raw_output {\n\t\ttype filter hook output priority raw; policy accept;\n" +
			"\t\tmeta nfproto ipv4 tcp sport @intercept_ports fib saddr type != local ct zone set 18004\n" +
			"\t\tmeta nfproto ipv6 tcp sport @intercept_ports fib saddr type != local ct zone set 18004\n\t}",
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	// nat_prerouting and nat_output hold the same DNAT rules,
	// nat_postrouting and nat_input the same SNAT rules.
	for _, r := range []string{
		"dnat ip to ip saddr . ip daddr . tcp dport map @dnat4\n", "dnat ip6 to ip6 saddr . ip6 daddr . tcp dport map @dnat6\n",
		"snat ip to ip saddr . ct original ip daddr . ct original proto-dst map @snat4\n", "snat ip6 to ip6 saddr . ct original ip6 daddr . ct original proto-dst map @snat6\n",
	} {
		if n := strings.Count(rs, r); n != 2 {
			t.Errorf("ruleset has %d rules ending in %q, want 2:\n%s", n, r, rs)
		}
	}
	// The socket-transparent rule comes before the tproxy rules.
	if i, j := strings.Index(rs, "socket transparent"), strings.Index(rs, "tproxy ip to"); i < 0 || j < 0 || i > j {
		t.Errorf("socket transparent rule must precede the tproxy rule:\n%s", rs)
	}

	checkRouting := func(present bool) {
		t.Helper()
		for _, fam := range []string{"-4", "-6"} {
			rules := run(t, "ip", "-n", ns.name, fam, "rule", "show")
			if got := strings.Count(rules, "fwmark 0x1 lookup 100"); (got == 1) != present || got > 1 {
				t.Errorf("ip %s rule: %d fwmark rules, want present=%v:\n%s", fam, got, present, rules)
			}
			routes := run(t, "ip", "-n", ns.name, fam, "route", "show", "table", "100")
			if got := strings.Contains(routes, "local default dev lo"); got != present {
				t.Errorf("ip %s route show table 100: present=%v, want %v:\n%s", fam, got, present, routes)
			}
		}
	}
	checkRouting(true)

	// A second instance in the same namespace is refused with a clear error.
	ns.do(t, func() {
		fw2, err := New(Config{}, nil)
		if err == nil {
			fw2.Close()
			t.Fatal("second New in the same namespace succeeded")
		}
		if !strings.Contains(err.Error(), "another ftpgate") {
			t.Errorf("second New: %v, want it to say another ftpgate owns the table", err)
		}
		// Another table name alone would not do in transparent mode.
		if !strings.Contains(err.Error(), "another fwmark and route table") {
			t.Errorf("second New: %v, want it to ask for another fwmark and route table too", err)
		}
	})

	if err := fw.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := fw.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := listTable(t, ns, "ftpgate"); err == nil {
		t.Error("table inet ftpgate still exists after Close")
	}
	if rs := ns.exec(t, "nft", "list", "ruleset"); strings.TrimSpace(rs) != "" {
		t.Errorf("ruleset not empty after Close:\n%s", rs)
	}
	checkRouting(false)
	if _, err := fw.Open(context.Background(), flow("10.0.0.1", "10.0.0.2:5000"), time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("Open after Close = %v, want ErrClosed", err)
	}
}

// setElements lists a pinhole set with nft.
func setElements(t *testing.T, ns *testNS, set string) string {
	t.Helper()
	return ns.exec(t, "nft", "list", "set", "inet", "ftpgate", set)
}

// findElement looks key up in set through the nftables API (fast, unlike
// exec'ing nft on a loaded machine, which matters with 1s timeouts). It asks
// for the one element rather than dumping the set: google/nftables stops
// reading a dump when the socket is momentarily empty, so dumps of large
// sets can come back short.
func findElement(t *testing.T, ns *testNS, set *nftables.Set, key []byte) (nftables.SetElement, bool) {
	t.Helper()
	var elem nftables.SetElement
	var found bool
	ns.do(t, func() {
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		s := *set
		s.Table = &nftables.Table{Name: "ftpgate", Family: nftables.TableFamilyINet}
		elems, err := c.FindSetElements(&s, []nftables.SetElement{{Key: key}})
		switch {
		case errors.Is(err, unix.ENOENT):
		case err != nil:
			t.Fatalf("look up an element of %s: %v", set.Name, err)
		default:
			for _, e := range elems {
				if string(e.Key) == string(key) {
					elem, found = e, true
				}
			}
		}
	})
	return elem, found
}

// pinElement looks up the element of key in fa's pinhole set.
func pinElement(t *testing.T, ns *testNS, fa *family, key string) (time.Duration, bool) {
	t.Helper()
	e, ok := findElement(t, ns, &nftables.Set{Name: fa.pinSet, KeyType: fa.keyType}, []byte(key))
	return e.Timeout, ok
}

// countElements counts the elements of a set or map with nft (a complete dump).
func countElements(t *testing.T, ns *testNS, set string) int {
	t.Helper()
	kind := "set"
	if strings.HasPrefix(set, "dnat") || strings.HasPrefix(set, "snat") {
		kind = "map"
	}
	return strings.Count(ns.exec(t, "nft", "list", kind, "inet", "ftpgate", set), " expires ")
}

func keyOf(f proxy.Flow) (*family, string) {
	k, _, err := parseFlow(f)
	if err != nil {
		panic(err)
	}
	fa := familyOf(k.src)
	return fa, string(fa.pinKey(k.src, k.dst, k.port))
}

func TestOpenAddsElementThatExpires(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "exp")
	rec := newEnded()
	fw := newFirewall(t, ns, Config{OnPinholeEnd: rec.hook})
	ctx := context.Background()

	flows := []proxy.Flow{
		flow("10.77.0.1", "10.77.0.2:5000"),
		flow("fd77::1", "[fd77::2]:5001"),
		// An IPv4-mapped IPv6 address is an IPv4 flow.
		flow("::ffff:10.77.0.3", "10.77.0.2:5002"),
	}
	// Long enough for the checks below on a loaded machine (exec'ing nft
	// can take a second there), short enough to wait for.
	const ttl = 3 * time.Second
	var holes []proxy.Pinhole
	for _, f := range flows {
		p, err := fw.Open(ctx, f, ttl)
		if err != nil {
			t.Fatalf("Open(%v): %v", f, err)
		}
		holes = append(holes, p)
		fa, key := keyOf(f)
		if timeout, ok := pinElement(t, ns, fa, key); !ok || timeout != ttl {
			t.Errorf("set %s: element for %v present=%v timeout=%v, want present with timeout %v", fa.pinSet, f, ok, timeout, ttl)
		}
	}
	if !strings.Contains(setElements(t, ns, "pin4"), "10.77.0.3 . 10.77.0.2 . 5002") {
		t.Errorf("nft does not show the element of the IPv4-mapped flow in pin4")
	}
	if got := fw.Active(); got != len(flows) {
		t.Errorf("Active() = %d, want %d", got, len(flows))
	}

	// The kernel expires the elements after ttl ...
	deadline := time.Now().Add(ttl + 5*time.Second)
	for _, f := range flows {
		fa, key := keyOf(f)
		for {
			if _, ok := pinElement(t, ns, fa, key); !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("element of %v still present long after its timeout", f)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// ... and the expiry is reported ttl+grace after Open, as unused.
	seen := map[proxy.Flow]bool{}
	for range flows {
		c := rec.wait(t, 10*time.Second)
		if c.end != Expired {
			t.Errorf("OnPinholeEnd(%v, %v), want expired", c.f, c.end)
		}
		seen[c.f] = true
	}
	if len(seen) != len(flows) {
		t.Errorf("OnPinholeEnd called for %v, want each of %d flows once", seen, len(flows))
	}
	if got := fw.Active(); got != 0 {
		t.Errorf("Active() = %d after expiry, want 0", got)
	}
	for _, p := range holes {
		if err := p.Close(); err != nil {
			t.Errorf("Close after expiry: %v", err)
		}
	}

	// Closing a pinhole the kernel expired but ftpgate did not report yet
	// deletes a missing element (ENOENT): not an error, no longer active,
	// and it is still reported once, when its timer fires.
	f := flow("10.77.0.9", "10.77.0.2:5009")
	p, err := fw.Open(ctx, f, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Errorf("Close of an expired pinhole: %v", err)
	}
	if got := fw.Active(); got != 0 {
		t.Errorf("Active() = %d after closing an expired pinhole, want 0", got)
	}
	if c := rec.wait(t, 10*time.Second); c.f != f || c.end != Expired {
		t.Errorf("OnPinholeEnd(%v, %v), want (%v, expired): the kernel expired it before the Close", c.f, c.end, f)
	}
	time.Sleep(50 * time.Millisecond)
	if n := rec.count(); n != len(flows)+1 {
		t.Errorf("OnPinholeEnd called %d times, want %d", n, len(flows)+1)
	}
}

func TestPinholeCloseRevokesAndRefresh(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "rev")
	rec := newEnded()
	fw := newFirewall(t, ns, Config{OnPinholeEnd: rec.hook})
	ctx := context.Background()
	f := flow("10.77.0.1", "10.77.0.2:5000")

	p, err := fw.Open(ctx, f, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if c := rec.wait(t, 5*time.Second); c.end != Revoked || c.f != f {
		t.Errorf("OnPinholeEnd(%v, %v), want (%v, revoked)", c.f, c.end, f)
	}
	if got := setElements(t, ns, "pin4"); strings.Contains(got, "10.77.0.1") {
		t.Errorf("element still present after Close:\n%s", got)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if fw.Active() != 0 {
		t.Errorf("Active() = %d, want 0", fw.Active())
	}

	// Refresh: a second Open of the same key replaces the first.
	p1, err := fw.Open(ctx, f, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := fw.Open(ctx, f, 2*time.Minute)
	if err != nil {
		t.Fatalf("Open of an outstanding key: %v", err)
	}
	if c := rec.wait(t, 5*time.Second); c.end != Revoked {
		t.Errorf("replaced pinhole reported %v, want revoked", c.end)
	}
	if fw.Active() != 1 {
		t.Errorf("Active() = %d after refresh, want 1", fw.Active())
	}
	got := setElements(t, ns, "pin4")
	if strings.Count(got, "10.77.0.1 . 10.77.0.2 . 5000") != 1 || !strings.Contains(got, "timeout 2m") {
		t.Errorf("want one element with the new timeout 2m:\n%s", got)
	}
	if err := p1.Close(); err != nil { // superseded: no-op
		t.Fatal(err)
	}
	if got := setElements(t, ns, "pin4"); !strings.Contains(got, "10.77.0.1") {
		t.Errorf("closing the superseded pinhole removed the new element:\n%s", got)
	}
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := setElements(t, ns, "pin4"); strings.Contains(got, "10.77.0.1") {
		t.Errorf("element still present:\n%s", got)
	}

	// Firewall.Close ends outstanding pinholes.
	if _, err := fw.Open(ctx, flow("10.77.0.5", "10.77.0.2:5000"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	for rec.count() < 4 {
		if c := rec.wait(t, 5*time.Second); c.end != Revoked {
			t.Errorf("OnPinholeEnd(%v, %v) of an outstanding pinhole, want revoked", c.f, c.end)
		}
	}
	if n := rec.count(); n != 4 {
		t.Errorf("OnPinholeEnd called %d times, want 4", n)
	}
}

// dial connects from inside ns.
func dial(t *testing.T, ns *testNS, addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	ns.do(t, func() {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.Dial("tcp", addr)
	})
	return c, err
}

// echoServer listens on addr inside ns and echoes what it reads.
func echoServer(t *testing.T, ns *testNS, addr string) {
	var ln net.Listener
	ns.do(t, func() {
		var err error
		ln, err = net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen %s: %v", addr, err)
		}
	})
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// TestOneShotTraffic sends real TCP connections through a pinhole and checks
// that exactly one gets in. Mode "input": cli -> srv, the Firewall runs in
// srv behind a host input filter. Mode "forward": cli -> gw -> srv, the
// Firewall runs on the gateway gw behind a host forward filter. The host
// filters refuse port 5000 unless the connection carries ftpgate's ct mark.
func TestOneShotTraffic(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("needs the conntrack command")
	}
	for _, tc := range []struct {
		name, mode, src, dst string
		v6                   bool
	}{
		{"input/ipv4", "input", "10.77.1.1", "10.77.1.2:5000", false},
		{"input/ipv6", "input", "fd77:1::1", "[fd77:1::2]:5000", true},
		{"forward/ipv4", "forward", "10.77.2.1", "10.77.3.2:5000", false},
		{"forward/ipv6", "forward", "fd77:2::1", "[fd77:3::2]:5000", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			var cli, fwNS, srv *testNS
			if tc.mode == "input" {
				cli, srv = newNS(t, "cli"), newNS(t, "srv")
				veth(t, cli, srv, 1)
				fwNS = srv
			} else {
				cli, fwNS, srv = routedLab(t)
			}
			fwNS.nft(t, fmt.Sprintf(`table inet hostfw {
	chain %s {
		type filter hook %[1]s priority filter; policy accept;
		ct mark & 0x100 == 0x100 accept
		tcp dport 5000 reject with tcp reset
	}
}`, tc.mode))
			echoServer(t, srv, tc.dst)
			rec := newEnded()
			fw := newFirewall(t, fwNS, Config{OnPinholeEnd: rec.hook})

			// Without a pinhole the host filter refuses the connection.
			if c, err := dial(t, cli, tc.dst); err == nil {
				c.Close()
				t.Fatal("connection without a pinhole succeeded; the host filter does not work")
			}

			f := flow(tc.src, tc.dst)
			p, err := fw.Open(context.Background(), f, 30*time.Second)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			c, err := dial(t, cli, tc.dst)
			if err != nil {
				t.Fatalf("connection through the pinhole failed: %v", err)
			}
			defer c.Close()
			// The whole connection passes (established packets keep the mark).
			msg := strings.Repeat("ftpgate data ", 1000)
			go func() { _, _ = c.Write([]byte(msg)) }()
			buf := make([]byte, len(msg))
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
				t.Fatalf("echo through the pinhole: %v", err)
			}

			if got := rec.wait(t, 10*time.Second); got.end != Used || got.f != f {
				t.Errorf("OnPinholeEnd(%v, %v), want (%v, used)", got.f, got.end, f)
			}
			if !isDone(p) {
				t.Error("Done not closed when OnPinholeEnd reported the pinhole used")
			}
			if fw.Active() != 0 {
				t.Errorf("Active() = %d after use, want 0", fw.Active())
			}
			set, ctFamily := "pin4", "ipv4"
			if tc.v6 {
				set, ctFamily = "pin6", "ipv6"
			}
			if got := setElements(t, fwNS, set); strings.Contains(got, tc.src) {
				t.Errorf("element not consumed by the connection:\n%s", got)
			}
			ct := fwNS.exec(t, "conntrack", "-L", "-f", ctFamily, "-p", "tcp", "--dport", "5000")
			if !regexp.MustCompile(`(?m)^tcp .*dport=5000 .*mark=256 `).MatchString(ct) {
				t.Errorf("conntrack entry of the data connection lacks mark 0x100:\n%s", ct)
			}

			// One shot: a second connection does not get the mark, so the
			// host filter refuses it.
			if c2, err := dial(t, cli, tc.dst); err == nil {
				c2.Close()
				t.Fatal("a second connection through a used pinhole succeeded")
			}
		})
	}
}

// routedLab builds cli (10.77.2.1, fd77:2::1) -- gw -- srv (10.77.3.2,
// fd77:3::2) with forwarding on gw.
func routedLab(t *testing.T) (cli, gw, srv *testNS) {
	t.Helper()
	cli, gw, srv = newNS(t, "rcli"), newNS(t, "rgw"), newNS(t, "rsrv")
	veth(t, cli, gw, 2) // cli .1, gw .2
	veth(t, gw, srv, 3) // gw .1, srv .2
	gw.exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	run(t, "ip", "-n", cli.name, "route", "add", "default", "via", "10.77.2.2")
	run(t, "ip", "-n", cli.name, "-6", "route", "add", "default", "via", "fd77:2::2")
	run(t, "ip", "-n", srv.name, "route", "add", "default", "via", "10.77.3.1")
	run(t, "ip", "-n", srv.name, "-6", "route", "add", "default", "via", "fd77:3::1")
	return cli, gw, srv
}

const helperEnv = "FGNFT_KILL_HELPER"

// TestKillHelper is the child process of TestKilledProcessLeavesNoTable.
func TestKillHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process for TestKilledProcessLeavesNoTable")
	}
	fw, err := New(Config{Intercept: true}, nil)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	_ = fw
	fmt.Println("READY")
	time.Sleep(time.Minute)
	os.Exit(2)
}

// TestKilledProcessLeavesNoTable: SIGKILL closes the owning socket and the
// kernel drops the table; a restart tolerates the leftover policy routing.
func TestKilledProcessLeavesNoTable(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "kill")
	cmd := exec.Command("ip", "netns", "exec", ns.name, os.Args[0], "-test.run=^TestKillHelper$", "-test.count=1", "-test.timeout=90s")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l := sc.Text(); l == "READY" || strings.HasPrefix(l, "ERROR") {
				ready <- l
			}
		}
		close(ready)
	}()
	select {
	case l := <-ready:
		if l != "READY" {
			t.Fatalf("helper: %s", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("helper did not become ready")
	}
	if out := ns.exec(t, "nft", "list", "tables"); !strings.Contains(out, "table inet ftpgate") {
		t.Fatalf("helper's table missing:\n%s", out)
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(3 * time.Second)
	for {
		out := ns.exec(t, "nft", "list", "tables")
		if !strings.Contains(out, "ftpgate") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("table still present after SIGKILL:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The policy routing outlives the process; a new instance takes it over
	// without duplicating it, and removes it on Close.
	if rules := run(t, "ip", "-n", ns.name, "rule", "show"); !strings.Contains(rules, "fwmark 0x1 lookup 100") {
		t.Fatalf("expected the killed helper's ip rule to remain:\n%s", rules)
	}
	fw := newFirewall(t, ns, Config{Intercept: true})
	if rules := run(t, "ip", "-n", ns.name, "rule", "show"); strings.Count(rules, "fwmark 0x1 lookup 100") != 1 {
		t.Errorf("want exactly one fwmark rule after restart:\n%s", rules)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if rules := run(t, "ip", "-n", ns.name, "rule", "show"); strings.Contains(rules, "fwmark") {
		t.Errorf("fwmark rule left after Close:\n%s", rules)
	}
}

// TestConcurrentOpenClose churns pinholes, plain and NAT, of both families
// from many goroutines.
func TestConcurrentOpenClose(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "conc")
	rec := newEnded()
	fw := newFirewall(t, ns, Config{OnPinholeEnd: func(f proxy.Flow, end PinholeEnd) {
		rec.mu.Lock()
		rec.calls = append(rec.calls, endCall{f, end})
		rec.mu.Unlock()
	}})
	const workers, per = 8, 120
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	var mu sync.Mutex
	want := map[string]int{} // elements left open, by set
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				src := netip.AddrFrom4([4]byte{10, 77, byte(w), 1})
				dst := netip.AddrFrom4([4]byte{10, 77, 100, 2})
				to := netip.AddrFrom4([4]byte{10, 77, 101, 2})
				snat := netip.AddrFrom4([4]byte{10, 77, 101, 1})
				if i%2 == 1 {
					src = netip.MustParseAddr(fmt.Sprintf("fd77:%d::1", w))
					dst, to, snat = netip.MustParseAddr("fd77:100::2"), netip.MustParseAddr("fd77:101::2"), netip.MustParseAddr("fd77:101::1")
				}
				f := proxy.Flow{Src: src, Dst: netip.AddrPortFrom(dst, uint16(1024+i))}
				switch (i / 2) % 3 {
				case 1:
					f.Target = netip.AddrPortFrom(to, uint16(2048+i))
				case 2:
					f.Target, f.SNAT = netip.AddrPortFrom(to, uint16(2048+i)), snat
				}
				p, err := fw.Open(context.Background(), f, time.Minute)
				if err != nil {
					errs <- err
					return
				}
				if i%4 < 2 { // left open
					fa := familyOf(src)
					mu.Lock()
					if f.Target.IsValid() {
						want[fa.natSet]++
						want[fa.dnatMap]++
						if f.SNAT.IsValid() {
							want[fa.snatMap]++
						}
					} else {
						want[fa.pinSet]++
					}
					mu.Unlock()
					continue
				}
				if err := p.Close(); err != nil {
					errs <- err
					return
				}
				_ = fw.Active()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	open := fw.Active()
	if want := workers * per / 2; open != want {
		t.Errorf("Active() = %d, want %d", open, want)
	}
	for _, fa := range families {
		for _, set := range []string{fa.pinSet, fa.natSet, fa.dnatMap, fa.snatMap} {
			if got := countElements(t, ns, set); got != want[set] || got == 0 {
				t.Errorf("kernel holds %d elements in %s, want %d", got, set, want[set])
			}
		}
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if n := rec.count(); n != workers*per {
		t.Errorf("OnPinholeEnd called %d times, want %d (once per Open)", n, workers*per)
	}
}

// TestConcurrentOpenSameKey: Opens of one key from many goroutines at once,
// plain and NAT with different translations, committed in shared batches:
// each replaces the one before, so exactly the last stays — in the kernel
// too, with its own translation and no element of the others — and every
// other ends unused.
func TestConcurrentOpenSameKey(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "samekey")
	rec := newEnded()
	fw := newFirewall(t, ns, Config{OnPinholeEnd: rec.hook})
	const n = 48
	src, dst := netip.MustParseAddr("10.77.5.1"), netip.MustParseAddrPort("10.77.6.2:2121")
	snat := netip.MustParseAddr("10.77.7.1")
	flows := make([]proxy.Flow, n)
	for i := range flows {
		flows[i] = proxy.Flow{Src: src, Dst: dst}
		switch i % 3 {
		case 1:
			flows[i].Target = netip.AddrPortFrom(netip.MustParseAddr("10.77.7.2"), uint16(3000+i))
		case 2:
			flows[i].Target, flows[i].SNAT = netip.AddrPortFrom(netip.MustParseAddr("10.77.7.2"), uint16(3000+i)), snat
		}
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := fw.Open(context.Background(), flows[i], time.Minute); err != nil {
				errs <- err
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if a := fw.Active(); a != 1 {
		t.Errorf("Active() = %d, want 1", a)
	}
	if c := rec.count(); c != n-1 {
		t.Errorf("OnPinholeEnd called %d times, want %d (every replaced Open)", c, n-1)
	}
	fw.mu.Lock()
	last := fw.entries[pinKey{src: src, dst: dst.Addr(), port: dst.Port()}]
	fw.mu.Unlock()
	if last == nil {
		t.Fatal("no outstanding pinhole")
	}
	fa, key := keyOf(last.flow)
	got := natElements(t, ns, fa, []byte(key))
	var want []string
	switch {
	case !last.flow.Target.IsValid():
		want = []string{fa.pinSet}
	case !last.flow.SNAT.IsValid():
		want = []string{fa.natSet, fa.dnatMap}
	default:
		want = []string{fa.natSet, fa.dnatMap, fa.snatMap}
	}
	if g := names(got); !slices.Equal(g, want) {
		t.Errorf("kernel holds %v for the key, want %v (last Open: %v)", g, want, last.flow)
	}
	if e, ok := got[fa.dnatMap]; ok && !bytes.Equal(e.Val, fa.dnatData(last.flow.Target)) {
		t.Errorf("dnat data %x, want the last Open's target %v", e.Val, last.flow.Target)
	}
}

// TestStrayPacketsDoNotConsume: conntrack starts entries for mid-stream
// packets too (nf_conntrack_tcp_loose), but only a connection's opening SYN
// consumes a pinhole — a stray or spoofed ACK or FIN to the negotiated port
// leaves it for the real client, and is not admitted itself.
func TestStrayPacketsDoNotConsume(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	cli, gw, srv := routedLab(t)
	gw.nft(t, `table inet hostfw {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct mark & 0x100 == 0x100 accept
		tcp dport 5000 drop
	}
}`)
	gw.exec(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=1")
	const dst = "10.77.3.2:5000"
	echoServer(t, srv, dst)
	fw := newFirewall(t, gw, Config{})
	f := flow("10.77.2.1", dst)
	if _, err := fw.Open(context.Background(), f, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for i, flags := range []byte{tcpFlagACK, tcpFlagFIN | tcpFlagACK, tcpFlagACK | 0x08 /* PSH */} {
		sendRawTCP(t, cli, netip.MustParseAddr("10.77.2.1"), netip.MustParseAddrPort(dst), uint16(40000+i), flags)
	}
	time.Sleep(200 * time.Millisecond)
	if got := setElements(t, gw, "pin4"); !strings.Contains(got, "10.77.2.1") {
		t.Fatalf("a stray packet consumed the pinhole:\n%s", got)
	}
	if fw.Active() != 1 {
		t.Errorf("Active() = %d after stray packets, want 1", fw.Active())
	}
	c, err := dial(t, cli, dst)
	if err != nil {
		t.Fatalf("the real connection after stray packets failed: %v", err)
	}
	c.Close()
	if got := setElements(t, gw, "pin4"); strings.Contains(got, "10.77.2.1") {
		t.Errorf("the SYN did not consume the pinhole:\n%s", got)
	}
}

// sendRawTCP sends one bare TCP segment with the given flags from ns.
func sendRawTCP(t *testing.T, ns *testNS, src netip.Addr, dst netip.AddrPort, sport uint16, flags byte) {
	t.Helper()
	seg := make([]byte, 20)
	binary.BigEndian.PutUint16(seg[0:], sport)
	binary.BigEndian.PutUint16(seg[2:], dst.Port())
	binary.BigEndian.PutUint32(seg[4:], 0x12345678) // seq
	binary.BigEndian.PutUint32(seg[8:], 0x9abcdef0) // ack
	seg[12] = 5 << 4                                // data offset: 5 words
	seg[13] = flags
	binary.BigEndian.PutUint16(seg[14:], 65535) // window
	// Checksum over the IPv4 pseudo-header and the segment.
	s, d := src.As4(), dst.Addr().As4()
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	add(s[:])
	add(d[:])
	sum += unix.IPPROTO_TCP + uint32(len(seg))
	add(seg)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(seg[16:], ^uint16(sum))
	ns.do(t, func() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP)
		if err != nil {
			t.Fatalf("raw socket: %v", err)
		}
		defer unix.Close(fd)
		if err := unix.Sendto(fd, seg, 0, &unix.SockaddrInet4{Addr: d}); err != nil {
			t.Fatalf("send raw TCP segment: %v", err)
		}
	})
}

// TestPinholeEndWithoutLocks: OnPinholeEnd runs without the Firewall's locks
// held, whichever call ends the pinhole (replacing Open, Pinhole.Close, the
// event handler, expiry, Firewall.Close): the hook takes them itself. Plain
// pinholes only, so that no janitor holds a lock meanwhile.
func TestPinholeEndWithoutLocks(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "nolock")
	var fw *Firewall
	held := make(chan string, 16)
	calls := make(chan struct{}, 16)
	hook := func(f proxy.Flow, _ PinholeEnd) {
		for name, l := range map[string]interface{ TryLock() bool }{"nlMu": &fw.nlMu, "mu": &fw.mu, "pendMu": &fw.pendMu} {
			if !l.TryLock() {
				held <- name
				continue
			}
			l.(interface{ Unlock() }).Unlock()
		}
		calls <- struct{}{}
	}
	fw = newFirewall(t, ns, Config{OnPinholeEnd: hook})
	ctx := context.Background()
	f := flow("10.77.0.1", "10.77.0.2:5000")
	k, _, _ := parseFlow(f)
	wait := func(what string) {
		t.Helper()
		select {
		case <-calls:
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: OnPinholeEnd not called", what)
		}
		select {
		case name := <-held:
			t.Errorf("%s: OnPinholeEnd called with %s held", what, name)
		default:
		}
	}
	open := func(ttl time.Duration) proxy.Pinhole {
		t.Helper()
		p, err := fw.Open(ctx, f, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	open(time.Minute)
	p := open(time.Minute)
	wait("Open replacing a pinhole")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	wait("Pinhole.Close")
	open(time.Minute)
	fw.onConnNew(k, 1, conntrack.Tuple{}, 0)
	wait("conntrack event")
	open(10 * time.Millisecond)
	wait("expiry")
	open(time.Minute)
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	wait("Firewall.Close")
}

// TestFailedBatchSendsNothing: a batch whose queueing fails sends nothing,
// neither itself nor with the next batch on the shared netlink socket — for
// an error of the caller's and for one google/nftables records.
func TestFailedBatchSendsNothing(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "send")
	fw := newFirewall(t, ns, Config{})
	ctx := context.Background()
	f := flow("10.77.0.1", "10.77.0.2:5000")
	if _, err := fw.Open(ctx, f, time.Minute); err != nil {
		t.Fatal(err)
	}
	fa, key := keyOf(f)
	for _, c := range []struct {
		name string
		fail func() error // after queueing the destruction of f's element
	}{
		{"caller's error", func() error { return errors.New("injected") }},
		{"recorded by google/nftables", func() error {
			return fw.conn.SetDeleteElements(&nftables.Set{Name: "anon", Anonymous: true}, nil)
		}},
	} {
		fw.nlMu.Lock()
		err := fw.send(func() error {
			if err := fw.conn.SetDestroyElements(fw.obj.pins[fa], []nftables.SetElement{{Key: []byte(key)}}); err != nil {
				return err
			}
			return c.fail()
		})
		fw.nlMu.Unlock()
		if err == nil {
			t.Fatalf("%s: send succeeded", c.name)
		}
		if _, ok := pinElement(t, ns, fa, key); !ok {
			t.Fatalf("%s: the failed batch was sent", c.name)
		}
		// The next batch carries only its own messages, and works.
		other := flow("10.77.0.9", "10.77.0.2:5000")
		p, err := fw.Open(ctx, other, time.Minute)
		if err != nil {
			t.Fatalf("%s: the next batch failed: %v", c.name, err)
		}
		if _, ok := pinElement(t, ns, fa, key); !ok {
			t.Fatalf("%s: the failed batch went out with the next one", c.name)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
