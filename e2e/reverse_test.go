package e2e

// ftpgate in reverse mode: it listens on the gateway's client-side ("public")
// address and dials one fixed upstream server (vsftpd in the server
// namespace). Passive replies are remapped into --passive-ports on the public
// address and DNAT'ed (+SNAT'ed to the gateway's inside address) to the
// server; PORT/EPRT are rewritten to the inside address and the server's
// connection is DNAT'ed to the client (+SNAT'ed to the public address).
//
// The gateway's host firewall drops everything but FTP control connections
// to ftpgate itself: every data connection must be admitted by ftpgate's ct
// mark.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// upstreamName is the host name --upstream uses; the gateway namespace's
// /etc/hosts maps it to both of the server's addresses.
const upstreamName = "ftp-upstream"

// reversePassivePorts is the public data-port range of the reverse tests.
const reversePassivePorts = "50000-50099"

// publicIP is the address reverse-mode clients connect to (the gateway's
// client-side address) of the family.
func publicIP(l *Lab, family int) netip.Addr {
	if family == 6 {
		return l.GwClientIP6
	}
	return l.GwClientIP4
}

// ReverseHostRuleset is the gateway's default-drop host ruleset for reverse
// mode: ftpgate's control listener (tcp dport 21) is reachable on the gateway
// itself; data connections (forwarded after DNAT) pass only with ftpgate's
// ct mark.
const ReverseHostRuleset = `table inet host
delete table inet host
table inet host {
	chain input {
		type filter hook input priority filter; policy drop;
		iif lo accept
		ct state established,related accept
		meta l4proto icmp accept
		meta l4proto ipv6-icmp accept
		tcp dport 21 accept
		ct mark & 0x100 == 0x100 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		ct mark & 0x100 == 0x100 accept
		meta l4proto icmp accept
		meta l4proto ipv6-icmp accept
	}
}
`

// netnsEtcMu serialises creating and removing directories under /etc/netns.
var netnsEtcMu sync.Mutex

// NetnsHosts writes /etc/netns/<ns>/hosts, which `ip netns exec` bind-mounts
// over /etc/hosts for the processes it starts in ns. The directory goes in
// t.Cleanup (and /etc/netns too if it is then empty).
func NetnsHosts(t testing.TB, ns *NS, lines ...string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", ns.Name)
	netnsEtcMu.Lock()
	defer netnsEtcMu.Unlock()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		netnsEtcMu.Lock()
		defer netnsEtcMu.Unlock()
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
		_ = os.Remove("/etc/netns") // only succeeds when empty
	})
	content := strings.Join(append([]string{"127.0.0.1 localhost", "::1 localhost"}, lines...), "\n") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// reverseArgs are the ftpgate flags of a reverse-mode gateway in l.
func reverseArgs(l *Lab, extra ...string) []string {
	args := []string{
		"--mode", "reverse",
		"--listen", netip.AddrPortFrom(l.GwClientIP4, 21).String(),
		"--listen", netip.AddrPortFrom(l.GwClientIP6, 21).String(),
		"--upstream", upstreamName + ":21",
		"--passive-ports", reversePassivePorts,
		"--metrics-listen", "127.0.0.1:9121",
	}
	return append(args, extra...)
}

// newReverseLab is a lab with the reverse-mode host firewall, the upstream
// host name, vsftpd (with extra config lines, if any) and ftpgate in reverse
// mode with the given extra flags.
func newReverseLab(t *testing.T, vsftpdExtra []string, ftpgateExtra ...string) (*Lab, *Vsftpd, *Gate) {
	t.Helper()
	l := NewLab(t)
	l.Nft(t, "host.nft", ReverseHostRuleset)
	NetnsHosts(t, l.Gateway,
		l.ServerIP4.String()+" "+upstreamName,
		l.ServerIP6.String()+" "+upstreamName)
	srv := l.StartVsftpd(t)
	if len(vsftpdExtra) > 0 {
		RestartVsftpd(t, l, srv, vsftpdExtra...)
	}
	g := l.StartFtpgate(t, reverseArgs(l, ftpgateExtra...)...)
	return l, srv, g
}

// RestartVsftpd stops srv, appends lines to its configuration and starts it
// again (waiting for the 220 banner). srv.Daemon is the new process.
func RestartVsftpd(t testing.TB, l *Lab, srv *Vsftpd, lines ...string) {
	t.Helper()
	_ = srv.Daemon.Stop(3 * time.Second)
	conf, err := os.ReadFile(srv.Conf)
	if err != nil {
		t.Fatal(err)
	}
	conf = append(conf, []byte(strings.Join(lines, "\n")+"\n")...)
	if err := os.WriteFile(srv.Conf, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	d := l.Server.startDaemon(t, srv.Stderr, true, "vsftpd", srv.Conf)
	srv.Daemon = d
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = l.Server.WaitTCP(ctx, d, netip.AddrPortFrom(l.ServerIP4, 21).String(), func(c net.Conn) error {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("read banner: %w", err)
		}
		if !strings.HasPrefix(line, "220") {
			return fmt.Errorf("banner %q", line)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("vsftpd restart: %v\n%s", err, srv.Diag())
	}
}

// MetricSum adds up every series of the metric name whose labels include all
// of labels ("k" → "v"); 0 when there is none (counters with labels appear
// only once counted).
func (g *Gate) MetricSum(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range strings.Split(g.Metrics(t), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, lbl, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		match := true
		for k, v := range labels {
			if !strings.Contains(lbl, fmt.Sprintf("%s=%q", k, v)) {
				match = false
			}
		}
		if !match {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			t.Fatalf("metric %s: %v", line, err)
		}
		sum += f
	}
	return sum
}

// FtpgateElements returns the non-empty sets and maps of the inet ftpgate
// table (name → elements as nft prints them), except intercept_ports, which
// is configuration, not state.
func (l *Lab) FtpgateElements(t testing.TB) map[string]string {
	t.Helper()
	out := l.Gateway.Run(t, "nft", "list", "table", "inet", "ftpgate")
	res := map[string]string{}
	cur := ""
	lines := strings.Split(out, "\n")
	for i := 0; i < len(lines); i++ {
		f := strings.Fields(lines[i])
		if len(f) >= 3 && (f[0] == "set" || f[0] == "map") && f[2] == "{" {
			cur = f[1]
			continue
		}
		if _, after, ok := strings.Cut(lines[i], "elements = {"); ok && cur != "" {
			body := after
			for !strings.Contains(body, "}") && i+1 < len(lines) {
				i++
				body += " " + strings.TrimSpace(lines[i])
			}
			body, _, _ = strings.Cut(body, "}")
			if cur != "intercept_ports" && strings.TrimSpace(body) != "" {
				res[cur] = strings.TrimSpace(body)
			}
		}
	}
	return res
}

// FtpgateSetNames lists the sets and maps of the inet ftpgate table.
func (l *Lab) FtpgateSetNames(t testing.TB) []string {
	t.Helper()
	var names []string
	for _, line := range strings.Split(l.Gateway.Run(t, "nft", "list", "table", "inet", "ftpgate"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && (f[0] == "set" || f[0] == "map") && f[2] == "{" {
			names = append(names, f[0]+" "+f[1])
		}
	}
	sort.Strings(names)
	return names
}

// expectNoLeftovers waits until ftpgate's sets and maps are empty.
func expectNoLeftovers(t *testing.T, l *Lab, within time.Duration) {
	t.Helper()
	var left map[string]string
	if !waitFor(within, func() bool { left = l.FtpgateElements(t); return len(left) == 0 }) {
		t.Errorf("elements left in ftpgate's sets/maps after %v: %v\n(sets and maps: %v)", within, left, l.FtpgateSetNames(t))
	}
}

// dialFromAddr dials addr from ns, from local (any port) if valid.
func dialFromAddr(ctx context.Context, ns *NS, local netip.Addr, addr netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var d net.Dialer
		if local.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
		}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr.String())
		return err
	})
	return c, err
}

// expectNoConnect checks that a TCP connection from ns (from local, if valid)
// to addr does not get established within 1.5 s.
func expectNoConnect(t *testing.T, ns *NS, local netip.Addr, addr netip.AddrPort, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	c, err := dialFromAddr(ctx, ns, local, addr)
	if err == nil {
		c.Close()
		from := "client"
		if local.IsValid() {
			from = local.String()
		}
		t.Errorf("connection %s -> %s was established (%s)", from, addr, why)
		return
	}
	t.Logf("%s -> %s refused as expected (%s): %v", local, addr, why, err)
}

var re229 = regexp.MustCompile(`\(\|\|\|(\d+)\|\)`)

func parse229(t *testing.T, reply string) uint16 {
	t.Helper()
	m := re229.FindStringSubmatch(reply)
	if m == nil {
		t.Fatalf("no port in %q", reply)
	}
	p, err := strconv.Atoi(m[1])
	if err != nil || p <= 0 || p > 65535 {
		t.Fatalf("bad port in %q", reply)
	}
	return uint16(p)
}

// passiveData asks for a passive data connection on c (PASV on IPv4, EPSV on
// IPv6) and returns where the client must connect.
func passiveData(t *testing.T, c *control, public netip.Addr) netip.AddrPort {
	t.Helper()
	if public.Is4() {
		return parse227(t, c.cmd("PASV", "227"))
	}
	return netip.AddrPortFrom(public, parse229(t, c.cmd("EPSV", "229")))
}

// retrOver connects a data connection to ap (already negotiated on c),
// sends RETR file and returns what arrives.
func retrOver(t *testing.T, l *Lab, c *control, ap netip.AddrPort, file string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	data, err := dialFromAddr(ctx, l.Client, netip.Addr{}, ap)
	if err != nil {
		t.Fatalf("data connection to %s: %v", ap, err)
	}
	defer data.Close()
	c.cmd("RETR "+file, "150")
	data.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(data)
	if err != nil {
		t.Fatalf("reading %s from %s: %v", file, ap, err)
	}
	c.expect("226")
	return got
}

// ---------------------------------------------------------------- tests

// Every client, every mode, both families through a reverse-mode gateway:
// clients connect to the public address, ftpgate to the upstream host name.
func TestReverseTransfers(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l, srv, g := newReverseLab(t, nil)

	public := func(f int) netip.Addr { return publicIP(l, f) }
	getMatrix(t, l, srv, g, AllCases(), public)
	putMatrix(t, l, srv, g, "rput", Modes, public)

	// Every opening was used once and its NAT state removed (or expired).
	expectNoLeftovers(t, l, 10*time.Second)

	for _, kind := range []string{"227", "229", "PORT", "EPRT"} {
		if v := g.MetricSum(t, "ftpgate_rewrites_total", map[string]string{"kind": kind}); v == 0 {
			t.Errorf("rewrites_total{kind=%q} = 0 after reverse-mode transfers", kind)
		}
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, dir := range []string{"passive", "active"} {
			series := fmt.Sprintf(`ftpgate_pinholes_closed_total{direction="%s",family="%s",result="used"}`, dir, fam)
			if v := g.Metric(t, series); v == 0 {
				t.Errorf("%s = 0", series)
			}
		}
	}
	for _, reason := range []string{"server_address", "firewall_error", "ports_exhausted", "cross_family", "bounce_address", "upstream_error"} {
		if v := g.Metric(t, fmt.Sprintf(`ftpgate_refusals_total{reason="%s"}`, reason)); v != 0 {
			t.Errorf("refusals{%s} = %v during legitimate transfers", reason, v)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", g.Metrics(t))
	}
}

// The public side exposes only negotiated data connections: nothing outside
// --passive-ports, nothing un-negotiated inside it, a negotiated port only to
// the client that negotiated it, and only once.
func TestReversePublicSideExposesOnlyNegotiated(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l, srv, g := newReverseLab(t, nil)
	other4 := netip.AddrFrom4([4]byte{10, 77, byte(l.N), 3})
	other6 := netip.MustParseAddr(fmt.Sprintf("fd77:%x::3", l.N))
	l.Client.Run(t, "ip", "addr", "add", netip.PrefixFrom(other4, 24).String(), "dev", ClientIf)
	// preferred_lft 0: deprecated, so never picked as the source of the
	// client's own connections (only when bound explicitly).
	l.Client.Run(t, "ip", "addr", "add", netip.PrefixFrom(other6, 64).String(), "dev", ClientIf, "nodad", "preferred_lft", "0")

	for _, f := range Families {
		t.Run(fmt.Sprintf("ipv%d", f), func(t *testing.T) {
			public := publicIP(l, f)
			other := other4
			if f == 6 {
				other = other6
			}
			// Outside the range: vsftpd's own passive ports, ssh, one past the range.
			for _, p := range []uint16{PasvMin, PasvMin + 1, PasvMax, 22, 50100} {
				expectNoConnect(t, l.Client, netip.Addr{}, netip.AddrPortFrom(public, p), "outside --passive-ports")
			}

			c := dialControl(t, l, public)
			ap := passiveData(t, c, public)
			if ap.Addr() != public {
				t.Fatalf("passive reply names %s, want the public address %s", ap.Addr(), public)
			}
			if ap.Port() < 50000 || ap.Port() > 50099 {
				t.Fatalf("passive reply names port %d, outside --passive-ports %s", ap.Port(), reversePassivePorts)
			}
			// Another client address cannot use it ...
			expectNoConnect(t, l.Client, other, ap, "negotiated by another client address")
			// ... nor an un-negotiated port inside the range.
			unneg := ap.Port() + 50
			if unneg > 50099 {
				unneg -= 100
			}
			expectNoConnect(t, l.Client, netip.Addr{}, netip.AddrPortFrom(public, unneg), "inside the range, not negotiated")

			// The client that negotiated it can, once.
			got := retrOver(t, l, c, ap, SmallFile)
			if !bytes.Equal(got, srv.Files[SmallFile]) {
				t.Fatalf("RETR over the negotiated port: %q, want %q", got, srv.Files[SmallFile])
			}
			expectNoConnect(t, l.Client, netip.Addr{}, ap, "one shot: already used")
			c.cmd("NOOP", "200")
		})
	}
	expectNoLeftovers(t, l, 10*time.Second)
	if t.Failed() {
		t.Logf("ftpgate log:\n%s", tailString(g.LogText(), 3000))
	}
}

// Two public ports, three PASV without connecting: the third gets 425 and
// ports_exhausted; once the two openings expire, PASV works again.
func TestReverseRangeExhaustion(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	// This --passive-ports replaces reverseArgs' range: the last one wins.
	l, srv, g := newReverseLab(t, nil, "--passive-ports", "50000-50001", "--pinhole-timeout", "2s")
	c := dialControl(t, l, l.GwClientIP4)
	seen := map[uint16]bool{}
	for i := 0; i < 2; i++ {
		ap := parse227(t, c.cmd("PASV", "227"))
		if ap.Port() != 50000 && ap.Port() != 50001 {
			t.Fatalf("PASV %d: port %d outside 50000-50001", i+1, ap.Port())
		}
		seen[ap.Port()] = true
	}
	if len(seen) != 2 {
		t.Errorf("two outstanding openings share a port: %v", seen)
	}
	reply := c.cmd("PASV", "425")
	t.Logf("third PASV: %s", reply)
	if v := g.Metric(t, `ftpgate_refusals_total{reason="ports_exhausted"}`); v != 1 {
		t.Errorf("ports_exhausted = %v, want 1", v)
	}
	// Also on IPv6 (another session, same public range but another address:
	// the pool is per address, so exhaust it there too).
	c6 := dialControl(t, l, l.GwClientIP6)
	c6.cmd("EPSV", "229")
	c6.cmd("EPSV", "229")
	c6.cmd("EPSV", "425")
	if v := g.Metric(t, `ftpgate_refusals_total{reason="ports_exhausted"}`); v != 2 {
		t.Errorf("ports_exhausted = %v, want 2", v)
	}

	// The openings expire after 2 s and give their ports back.
	if !waitFor(10*time.Second, func() bool {
		return g.Metric(t, `ftpgate_pinholes_closed_total{direction="passive",family="ipv4",result="expired"}`) >= 2 &&
			g.Metric(t, `ftpgate_pinholes_closed_total{direction="passive",family="ipv6",result="expired"}`) >= 2
	}) {
		t.Fatalf("openings did not expire:\n%s", g.Metrics(t))
	}
	ap := parse227(t, c.cmd("PASV", "227"))
	if got := retrOver(t, l, c, ap, SmallFile); !bytes.Equal(got, srv.Files[SmallFile]) {
		t.Fatalf("RETR after expiry: %q", got)
	}
	port := parse229(t, c6.cmd("EPSV", "229"))
	if got := retrOver(t, l, c6, netip.AddrPortFrom(l.GwClientIP6, port), SmallFile); !bytes.Equal(got, srv.Files[SmallFile]) {
		t.Fatalf("RETR over IPv6 after expiry: %q", got)
	}
	if v := g.Metric(t, `ftpgate_refusals_total{reason="ports_exhausted"}`); v != 2 {
		t.Errorf("ports_exhausted = %v after expiry, want still 2", v)
	}
	expectNoLeftovers(t, l, 10*time.Second)
}

// vsftpd announces an address that is not its own in 227 (pasv_address):
// reverse mode never trusts it — the data connection goes to the control
// connection's peer — rewrites it as always and logs it (debug), without
// counting a refusal: nothing was refused.
//
// vsftpd honours pasv_address only with an IPv4 listener (listen=YES): with
// listen_ipv6=YES (dual stack, the lab's default) it announces 0,0,0,0
// instead — a real misconfiguration, tested as its own case.
func TestReverseServerAnnouncesWrongAddress(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	ipv4Only := []string{"listen=YES", "listen_ipv6=NO"}
	for _, tc := range []struct {
		name     string
		announce string   // the address vsftpd puts in its 227
		conf     []string // appended to vsftpd.conf
		families []int
	}{
		{"third-party", "192.0.2.7", append([]string{"pasv_address=192.0.2.7", "pasv_addr_resolve=NO"}, ipv4Only...), []int{4}},
		{"private-unroutable", "10.77.250.250", append([]string{"pasv_address=10.77.250.250", "pasv_addr_resolve=NO"}, ipv4Only...), []int{4}},
		{"unspecified", "0.0.0.0", []string{"pasv_address=192.0.2.7", "pasv_addr_resolve=NO"}, []int{4, 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l, srv, g := newReverseLab(t, tc.conf)
			want := srv.Files[RandomFile]

			// The server really announces it (checked without ftpgate, from the gateway).
			announced := func() string {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				conn, err := l.Gateway.DialContext(ctx, "tcp", netip.AddrPortFrom(l.ServerIP4, 21).String())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				c := &control{t: t, c: conn, r: bufio.NewReader(conn)}
				c.expect("220")
				if reply := c.cmd("USER anonymous", ""); strings.HasPrefix(reply, "331") {
					c.cmd("PASS x@", "230")
				}
				return c.cmd("PASV", "227")
			}()
			if !strings.Contains(announced, "("+strings.ReplaceAll(tc.announce, ".", ",")+",") {
				t.Fatalf("vsftpd does not announce %s: %s", tc.announce, announced)
			}
			t.Logf("vsftpd, asked directly: %s", announced)

			var cases []Case
			for _, c := range Clients {
				for _, f := range tc.families {
					cases = append(cases, Case{c, ModePASV, f}, Case{c, ModeEPSV, f})
				}
			}
			RunMatrix(t, cases, 6, func(ctx context.Context, c Case) ([]byte, error) {
				return c.Client.Get(ctx, l.Client, publicIP(l, c.Family), RandomFile, c.Mode)
			}, func(t *testing.T, c Case, r Result) {
				if r.Err != nil {
					t.Fatalf("%v\nftpgate log:\n%s\n%s", r.Err, tailString(g.LogText(), 3000), srv.Diag())
				}
				if !bytes.Equal(r.Data, want) {
					t.Fatalf("got %d bytes, want %d (content differs)", len(r.Data), len(want))
				}
			})

			// Hand-driven: the 227 passed on names the public address, and works.
			c := dialControl(t, l, l.GwClientIP4)
			before := g.Metric(t, `ftpgate_refusals_total{reason="server_address"}`)
			rewrites := g.Metric(t, `ftpgate_rewrites_total{kind="227"}`)
			reply := c.cmd("PASV", "227")
			ap := parse227(t, reply)
			t.Logf("vsftpd through ftpgate: %s", reply)
			if ap.Addr() != l.GwClientIP4 {
				t.Errorf("227 names %s, want the public address %s", ap.Addr(), l.GwClientIP4)
			}
			if got := retrOver(t, l, c, ap, SmallFile); !bytes.Equal(got, srv.Files[SmallFile]) {
				t.Errorf("RETR: %q", got)
			}
			// Accepted and rewritten, so not a refusal: it must not page
			// FtpgateHostileServer on every PASV.
			if v := g.Metric(t, `ftpgate_refusals_total{reason="server_address"}`); v != before {
				t.Errorf("refusals{server_address} went from %v to %v for one 227 naming %s, want unchanged", before, v, tc.announce)
			}
			if v := g.Metric(t, `ftpgate_rewrites_total{kind="227"}`); v != rewrites+1 {
				t.Errorf("rewrites{227} went from %v to %v, want +1", rewrites, v)
			}
			if !strings.Contains(g.LogText(), "addr="+tc.announce) {
				t.Errorf("ftpgate's log does not name the announced address %s", tc.announce)
			}
			expectNoLeftovers(t, l, 10*time.Second)
		})
	}
}

// --server-passive-ports: a 227/229 outside the range the server is
// configured with gets 425, is counted, and opens nothing.
func TestReverseServerPassiveRange(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l, _, g := newReverseLab(t, nil, "--server-passive-ports", "30000-30010")
	c := dialControl(t, l, l.GwClientIP4)
	t.Logf("PASV: %s", c.cmd("PASV", "425"))
	t.Logf("EPSV: %s", c.cmd("EPSV", "425"))
	c6 := dialControl(t, l, l.GwClientIP6)
	t.Logf("EPSV (IPv6): %s", c6.cmd("EPSV", "425"))
	if v := g.Metric(t, `ftpgate_refusals_total{reason="server_port_range"}`); v != 3 {
		t.Errorf("refusals{server_port_range} = %v, want 3", v)
	}
	if e := l.FtpgateElements(t); len(e) != 0 {
		t.Errorf("refused replies opened something: %v", e)
	}
	if v := g.MetricSum(t, "ftpgate_pinholes_opened_total", nil); v != 0 {
		t.Errorf("pinholes_opened_total = %v, want 0", v)
	}
	if v := g.MetricSum(t, "ftpgate_rewrites_total", nil); v != 0 {
		t.Errorf("rewrites_total = %v, want 0", v)
	}
	// The sessions go on; vsftpd's ports stay closed from the public side.
	c.cmd("NOOP", "200")
	c6.cmd("NOOP", "200")
	for p := uint16(PasvMin); p < PasvMin+3; p++ {
		expectNoConnect(t, l.Client, netip.Addr{}, netip.AddrPortFrom(l.GwClientIP4, p), "server passive port, never opened")
	}
}

// --public-address (IPv4 here, the address IPv4 clients connect to anyway):
// advertised to IPv4 clients; IPv6 clients, which it cannot describe, keep
// the address they connected to.
func TestReversePublicAddress(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l := NewLab(t)
	l.Nft(t, "host.nft", ReverseHostRuleset)
	NetnsHosts(t, l.Gateway, l.ServerIP4.String()+" "+upstreamName, l.ServerIP6.String()+" "+upstreamName)
	srv := l.StartVsftpd(t)
	g := l.StartFtpgate(t, reverseArgs(l, "--public-address", l.GwClientIP4.String())...)
	want := srv.Files[RandomFile]

	var cases []Case
	for _, c := range AllCases() {
		if c.Client.Name == "curl" || c.Client.Name == "python" {
			cases = append(cases, c)
		}
	}
	RunMatrix(t, cases, 6, func(ctx context.Context, c Case) ([]byte, error) {
		return c.Client.Get(ctx, l.Client, publicIP(l, c.Family), RandomFile, c.Mode)
	}, func(t *testing.T, c Case, r Result) {
		if r.Err != nil {
			t.Fatalf("%v\nftpgate log:\n%s", r.Err, tailString(g.LogText(), 2000))
		}
		if !bytes.Equal(r.Data, want) {
			t.Fatalf("got %d bytes, want %d (content differs)", len(r.Data), len(want))
		}
	})
	c := dialControl(t, l, l.GwClientIP4)
	if ap := parse227(t, c.cmd("PASV", "227")); ap.Addr() != l.GwClientIP4 {
		t.Errorf("227 names %s, want --public-address %s", ap.Addr(), l.GwClientIP4)
	}
	for _, reason := range []string{"firewall_error", "cross_family"} {
		if v := g.Metric(t, fmt.Sprintf(`ftpgate_refusals_total{reason="%s"}`, reason)); v != 0 {
			t.Errorf("refusals{%s} = %v", reason, v)
		}
	}
}

// The upstream name resolves to an IPv4 address only: IPv6 clients still log
// in, but the kernel cannot NAT a data connection across IP versions, so
// EPSV/EPRT get a clear refusal counted as cross_family — not a firewall
// error — and nothing is opened. IPv4 clients are unaffected.
func TestReverseUpstreamOtherFamily(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l := NewLab(t)
	l.Nft(t, "host.nft", ReverseHostRuleset)
	NetnsHosts(t, l.Gateway, l.ServerIP4.String()+" "+upstreamName)
	srv := l.StartVsftpd(t)
	g := l.StartFtpgate(t, reverseArgs(l)...)

	c6 := dialControl(t, l, l.GwClientIP6)
	epsv := c6.cmd("EPSV", "")
	eprt := c6.cmd(fmt.Sprintf("EPRT |2|%s|50123|", l.ClientIP6), "")
	t.Logf("IPv6 client, IPv4 server: EPSV -> %s; EPRT -> %s", epsv, eprt)
	for _, r := range []string{epsv, eprt} {
		if !strings.HasPrefix(r, "4") && !strings.HasPrefix(r, "5") {
			t.Errorf("reply %q, want a refusal", r)
		}
	}
	if v := g.Metric(t, `ftpgate_refusals_total{reason="cross_family"}`); v != 2 {
		t.Errorf("refusals{cross_family} = %v, want 2", v)
	}
	if v := g.Metric(t, `ftpgate_refusals_total{reason="firewall_error"}`); v != 0 {
		t.Errorf("refusals{firewall_error} = %v, want 0 (nothing is wrong with the firewall)", v)
	}
	if e := l.FtpgateElements(t); len(e) != 0 {
		t.Errorf("opened: %v", e)
	}
	c6.cmd("NOOP", "200")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := CurlGet(ctx, l.Client, l.GwClientIP4, SmallFile, ModeEPSV)
	if err != nil || !bytes.Equal(got, srv.Files[SmallFile]) {
		t.Errorf("IPv4 client: %q, %v", got, err)
	}
	if t.Failed() {
		t.Logf("ftpgate log:\n%s", tailString(g.LogText(), 2000))
	}
}

// An FTP server on the gateway itself, which reverse mode is the way to
// protect (README): its passive data connections are delivered locally and
// its active ones start locally, so they meet ftpgate's NAT in the input and
// output hooks, not in prerouting and postrouting as a forwarded server's do.
// vsftpd listens on port 2100 (ftpgate has port 21 of the public addresses).
func TestReverseServerOnGateway(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l := NewLab(t)
	l.Nft(t, "host.nft", ReverseHostRuleset)
	NetnsHosts(t, l.Gateway,
		l.GwServerIP4.String()+" "+upstreamName,
		l.GwServerIP6.String()+" "+upstreamName)
	srv := l.startVsftpd(t, l.Gateway, netip.AddrPortFrom(l.GwServerIP4, 2100))
	g := l.StartFtpgate(t, reverseArgs(l, "--upstream", upstreamName+":2100")...)

	public := func(f int) netip.Addr { return publicIP(l, f) }
	getMatrix(t, l, srv, g, AllCases(), public)
	putMatrix(t, l, srv, g, "lput", Modes, public)
	expectNoLeftovers(t, l, 10*time.Second)
	if t.Failed() {
		t.Logf("ruleset:\n%s", l.Gateway.Run(t, "nft", "list", "ruleset"))
	}
}
