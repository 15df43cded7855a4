package e2e

// ftpgate itself through the lab: a default-drop gateway (host firewall with
// the ct-mark line) running ftpgate in transparent mode, vsftpd behind it, and
// real clients in front of it.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Gate is a running ftpgate in a lab's gateway namespace.
type Gate struct {
	*Daemon
	lab *Lab
}

// StartFtpgate runs `ftpgate run args...` in the gateway namespace and waits
// until /readyz answers (table installed, listeners up).
func (l *Lab) StartFtpgate(t testing.TB, args ...string) *Gate {
	t.Helper()
	bin := requireFtpgate(t)
	logPath := filepath.Join(l.Dir, "ftpgate.log")
	d := l.Gateway.StartDaemon(t, logPath, bin, append([]string{"run", "--log-level", "debug"}, args...)...)
	g := &Gate{Daemon: d, lab: l}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := l.Gateway.WaitTCP(ctx, d, "127.0.0.1:9121", func(c net.Conn) error {
		fmt.Fprintf(c, "GET /readyz HTTP/1.0\r\n\r\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.Contains(line, " 200 ") {
			return fmt.Errorf("readyz: %s", strings.TrimSpace(line))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ftpgate not ready: %v\n%s", err, g.LogText())
	}
	return g
}

// LogText returns ftpgate's log so far.
func (g *Gate) LogText() string {
	b, _ := os.ReadFile(g.Log)
	return string(b)
}

// Metrics fetches /metrics from inside the gateway namespace.
func (g *Gate) Metrics(t testing.TB) string {
	t.Helper()
	return g.lab.Gateway.Run(t, "curl", "-fsS", "--max-time", "5", "http://127.0.0.1:9121/metrics")
}

// Metric returns the value of one series (name with labels, as printed).
func (g *Gate) Metric(t testing.TB, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(g.Metrics(t), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return v
		}
	}
	t.Fatalf("metric %s not exported", series)
	return 0
}

// Elements lists the elements of one of ftpgate's sets or maps, as nft prints
// them ("" when empty).
func (l *Lab) Elements(t testing.TB, set string) string {
	t.Helper()
	out := l.Gateway.Run(t, "nft", "list", "set", "inet", "ftpgate", set)
	if _, after, ok := strings.Cut(out, "elements = {"); ok {
		body, _, _ := strings.Cut(after, "}")
		return strings.TrimSpace(body)
	}
	return ""
}

// ftpgateTables reports whether the gateway has a table named ftpgate.
func (l *Lab) hasFtpgateTable(t testing.TB) bool {
	t.Helper()
	return strings.Contains(l.Gateway.Run(t, "nft", "list", "tables"), "inet ftpgate")
}

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newGatewayLab is a lab with the default-drop host firewall (with the
// ct-mark line), vsftpd and ftpgate.
func newGatewayLab(t *testing.T, ftpgateArgs ...string) (*Lab, *Vsftpd, *Gate) {
	t.Helper()
	l := NewLab(t)
	l.HostFirewall(t, true)
	srv := l.StartVsftpd(t)
	g := l.StartFtpgate(t, ftpgateArgs...)
	return l, srv, g
}

// Every client, every mode, both families: the files arrive intact through a
// gateway that drops every data connection ftpgate did not negotiate.
func TestTransparentTransfers(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l, srv, g := newGatewayLab(t)

	getMatrix(t, l, srv, g, AllCases(), l.ServerIP)
	putMatrix(t, l, srv, g, "put", Modes, l.ServerIP)

	// Each opening admitted one connection and was deleted by it.
	if !waitFor(5*time.Second, func() bool { return l.Elements(t, "pin4") == "" && l.Elements(t, "pin6") == "" }) {
		t.Errorf("pinholes left after the transfers: pin4 {%s} pin6 {%s}", l.Elements(t, "pin4"), l.Elements(t, "pin6"))
	}
	used := 0.0
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, dir := range []string{"passive", "active"} {
			used += g.Metric(t, fmt.Sprintf(`ftpgate_pinholes_closed_total{direction="%s",family="%s",result="used"}`, dir, fam))
		}
	}
	if used == 0 {
		t.Errorf("no pinhole counted as used:\n%s", g.Metrics(t))
	}
	for _, reason := range []string{"bounce_address", "server_address", "firewall_error", "unsolicited_reply"} {
		if v := g.Metric(t, fmt.Sprintf(`ftpgate_refusals_total{reason="%s"}`, reason)); v != 0 {
			t.Errorf("refusals{%s} = %v during legitimate transfers", reason, v)
		}
	}
}

// getMatrix downloads RandomFile with every case, from the address target
// gives for the family, and checks the content.
func getMatrix(t *testing.T, l *Lab, srv *Vsftpd, g *Gate, cases []Case, target func(family int) netip.Addr) {
	want := srv.Files[RandomFile]
	t.Run("get", func(t *testing.T) {
		RunMatrix(t, cases, 6, func(ctx context.Context, c Case) ([]byte, error) {
			return c.Client.Get(ctx, l.Client, target(c.Family), RandomFile, c.Mode)
		}, func(t *testing.T, c Case, r Result) {
			if r.Err != nil {
				t.Fatalf("%v\nftpgate log:\n%s\n%s", r.Err, tailString(g.LogText(), 3000), srv.Diag())
			}
			if !bytes.Equal(r.Data, want) {
				t.Fatalf("got %d bytes, want %d (content differs)", len(r.Data), len(want))
			}
		})
	})
}

// putMatrix uploads 256 KiB with curl in each mode and family and checks what
// the server stored; prefix keeps the file names of callers apart.
func putMatrix(t *testing.T, l *Lab, srv *Vsftpd, g *Gate, prefix string, modes []Mode, target func(family int) netip.Addr) {
	data := srv.Files[RandomFile][:256<<10]
	t.Run("put", func(t *testing.T) {
		for _, f := range Families {
			for _, m := range modes {
				t.Run(fmt.Sprintf("curl/%s/ipv%d", m, f), func(t *testing.T) {
					name := fmt.Sprintf("%s-%s-%d.bin", prefix, m, f)
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					err := CurlPut(ctx, l.Client, target(f), name, data, m)
					if IsUnsupported(err) {
						t.Skip(err)
					}
					if err != nil {
						t.Fatalf("%v\nftpgate log:\n%s\n%s", err, tailString(g.LogText(), 3000), srv.Diag())
					}
					if got, err := srv.Uploaded(name); err != nil || !bytes.Equal(got, data) {
						t.Fatalf("uploaded: %d bytes, %v; want %d bytes", len(got), err, len(data))
					}
				})
			}
		}
	})
}

// control is a hand-driven FTP control connection from the client namespace.
type control struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialControl(t *testing.T, l *Lab, server netip.Addr) *control {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := l.Client.DialContext(ctx, "tcp", netip.AddrPortFrom(server, 21).String())
	if err != nil {
		t.Fatalf("control connection: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ctl := &control{t: t, c: c, r: bufio.NewReader(c)}
	ctl.expect("220")
	if reply := ctl.cmd("USER anonymous", ""); strings.HasPrefix(reply, "331") {
		ctl.cmd("PASS x@", "230")
	}
	return ctl
}

// expect reads a whole reply and checks its code.
func (c *control) expect(code string) string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	multi := "" // "ddd " ends the multi-line reply in progress
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply (want %s): %v", code, err)
		}
		line = strings.TrimRight(line, "\r\n")
		if multi == "" && len(line) >= 4 && line[3] == '-' {
			multi = line[:3] + " "
			continue
		}
		if multi != "" && !strings.HasPrefix(line, multi) {
			continue
		}
		if !strings.HasPrefix(line, code) {
			c.t.Fatalf("reply %q, want %s", line, code)
		}
		return line
	}
}

func (c *control) cmd(line, code string) string {
	c.t.Helper()
	if _, err := c.c.Write([]byte(line + "\r\n")); err != nil {
		c.t.Fatal(err)
	}
	return c.expect(code)
}

var re227 = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)

func parse227(t *testing.T, reply string) netip.AddrPort {
	t.Helper()
	m := re227.FindStringSubmatch(reply)
	if m == nil {
		t.Fatalf("no address in %q", reply)
	}
	var b [6]byte
	for i := range b {
		n, _ := strconv.Atoi(m[i+1])
		b[i] = byte(n)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(b[4])<<8|uint16(b[5]))
}

func portArg(a netip.Addr, port int) string {
	b := a.As4()
	return fmt.Sprintf("%d,%d,%d,%d,%d,%d", b[0], b[1], b[2], b[3], port>>8, port&0xff)
}

// A bounce PORT/EPRT (to a third host, or to a privileged port) gets an FTP
// error reply and opens nothing.
func TestTransparentRefusesBounce(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l, _, g := newGatewayLab(t)
	third4 := netip.AddrFrom4([4]byte{10, 77, byte(l.N + 1), 9})
	c4 := dialControl(t, l, l.ServerIP4)
	for _, cmd := range []string{
		"PORT " + portArg(third4, 50000),
		"PORT " + portArg(l.ServerIP4, 50000),
		"PORT " + portArg(l.ClientIP4, 22),
		"PORT 10,77,1,2,256,22",
		"EPRT |1|" + third4.String() + "|50000|",
		"EPRT |1|" + l.ClientIP4.String() + "|23|",
		"LPRT 4,4,10,77,1,2,2,195,80",
	} {
		reply := c4.cmd(cmd, "5")
		t.Logf("%s -> %s", cmd, reply)
	}
	c6 := dialControl(t, l, l.ServerIP6)
	c6.cmd("EPRT |2|"+l.ServerIP6.String()+"|50000|", "501")
	c6.cmd("EPRT |2|"+l.ClientIP6.String()+"|1023|", "501")
	if e := l.Elements(t, "pin4") + l.Elements(t, "pin6"); e != "" {
		t.Fatalf("refused commands opened pinholes: %s", e)
	}
	if v := g.Metric(t, `ftpgate_refusals_total{reason="bounce_address"}`); v != 4 {
		t.Errorf("bounce refusals = %v, want 4", v)
	}
	if v := g.Metric(t, `ftpgate_refusals_total{reason="low_port"}`); v != 3 {
		t.Errorf("low-port refusals = %v, want 3", v)
	}
	// The sessions go on after refusals.
	c4.cmd("NOOP", "200")
	c6.cmd("NOOP", "200")
}

// ftplib's abort() sends "ABOR\r\n" as TCP urgent data; without urgent data
// kept inline the kernel took the LF out of ftpgate's stream and the ABOR
// never ended. vsftpd must answer it (225: no transfer) and the session go on.
func TestTransparentFtplibAbort(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l, srv, g := newGatewayLab(t)
	for _, m := range []Mode{ModePASV, ModeEPRT} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		data, err := PythonGetAbort(ctx, l.Client, l.ServerIP4, RandomFile, m)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v\nftpgate log:\n%s\n%s", m, err, tailString(g.LogText(), 3000), srv.Diag())
		}
		if !bytes.Equal(data, srv.Files[RandomFile]) {
			t.Fatalf("%s: got %d bytes, want %d", m, len(data), len(srv.Files[RandomFile]))
		}
	}
	for _, reason := range []string{"bad_verb", "control_chars", "write_failed"} {
		if v := g.Metric(t, fmt.Sprintf(`ftpgate_refusals_total{reason="%s"}`, reason)); v != 0 {
			t.Errorf("refusals{%s} = %v for ABOR", reason, v)
		}
	}
}

// An opening admits one connection and is then gone; an unused one expires
// and the port is closed again.
func TestTransparentPinholeLifecycle(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	// Long enough for exec'ing nft on a loaded machine, short enough to
	// wait for expiry.
	l, _, g := newGatewayLab(t, "--pinhole-timeout", "5s")
	c := dialControl(t, l, l.ServerIP4)

	dial := func(ap netip.AddrPort) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := l.Client.DialContext(ctx, "tcp", ap.String())
		if err == nil {
			conn.Close()
		}
		return err
	}

	// Used: the element is in the set until the data connection takes it.
	ap := parse227(t, c.cmd("PASV", "227"))
	if e := l.Elements(t, "pin4"); !strings.Contains(e, l.ClientIP4.String()) || !strings.Contains(e, strconv.Itoa(int(ap.Port()))) {
		t.Fatalf("after PASV, pin4 = {%s}; want the client, server and port %d", e, ap.Port())
	}
	if err := dial(ap); err != nil {
		t.Fatalf("data connection through the pinhole: %v", err)
	}
	if !waitFor(3*time.Second, func() bool { return l.Elements(t, "pin4") == "" }) {
		t.Fatalf("pinhole still there after use: {%s}", l.Elements(t, "pin4"))
	}

	// Expired: vsftpd still listens on the port, but after the timeout the
	// firewall drops the connection.
	ap = parse227(t, c.cmd("PASV", "227"))
	if l.Elements(t, "pin4") == "" {
		t.Fatal("no pinhole after the second PASV")
	}
	if !waitFor(10*time.Second, func() bool { return l.Elements(t, "pin4") == "" }) {
		t.Fatalf("pinhole did not expire: {%s}", l.Elements(t, "pin4"))
	}
	if err := dial(ap); err == nil {
		t.Fatal("data connection admitted after the pinhole expired")
	}
	if !waitFor(5*time.Second, func() bool {
		return g.Metric(t, `ftpgate_pinholes_closed_total{direction="passive",family="ipv4",result="expired"}`) >= 1
	}) {
		t.Errorf("expiry not counted:\n%s", g.Metrics(t))
	}

	// Revoked: the opening of a session that ends unused goes at once, and
	// is not counted as expired (FtpgatePinholesMostlyExpired reads that).
	const expiredSeries = `ftpgate_pinholes_closed_total{direction="passive",family="ipv4",result="expired"}`
	const revokedSeries = `ftpgate_pinholes_closed_total{direction="passive",family="ipv4",result="revoked"}`
	expired, revoked := g.Metric(t, expiredSeries), g.Metric(t, revokedSeries)
	parse227(t, c.cmd("PASV", "227"))
	c.cmd("QUIT", "221")
	// Well inside the 5s timeout, so only a revocation can pass.
	if !waitFor(3*time.Second, func() bool { return l.Elements(t, "pin4") == "" }) {
		t.Errorf("the opening of an ended session is still there: {%s}", l.Elements(t, "pin4"))
	}
	if !waitFor(5*time.Second, func() bool { return g.Metric(t, revokedSeries) == revoked+1 }) {
		t.Errorf("revocation not counted:\n%s", g.Metrics(t))
	}
	if v := g.Metric(t, expiredSeries); v != expired {
		t.Errorf("expired went from %v to %v for a revoked opening", expired, v)
	}
}

// SIGTERM removes the table, the policy-routing rules and routes; SIGKILL
// leaves no table either (the kernel drops an owner table with its socket).
func TestFtpgateLeavesNoTrace(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l := NewLab(t)
	before := l.Gateway.Run(t, "ip", "rule") + l.Gateway.Run(t, "ip", "-6", "rule")

	g := l.StartFtpgate(t)
	if !l.hasFtpgateTable(t) {
		t.Fatal("no ftpgate table while running")
	}
	if err := g.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.Exited:
	case <-time.After(10 * time.Second):
		t.Fatal("ftpgate did not exit on SIGTERM")
	}
	if err := g.Err(); err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, g.LogText())
	}
	if l.hasFtpgateTable(t) {
		t.Error("table left after SIGTERM")
	}
	after := l.Gateway.Run(t, "ip", "rule") + l.Gateway.Run(t, "ip", "-6", "rule")
	if after != before {
		t.Errorf("ip rules changed by a clean run:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if routes := l.Gateway.Run(t, "ip", "route", "show", "table", "100"); strings.TrimSpace(routes) != "" {
		t.Errorf("routes left in table 100: %s", routes)
	}

	g = l.StartFtpgate(t)
	if err := g.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-g.Exited
	if !waitFor(5*time.Second, func() bool { return !l.hasFtpgateTable(t) }) {
		t.Error("table left after SIGKILL")
	}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// The operator's commands: status from the running daemon, check against the
// live host ruleset, and --dry-run.
func TestOperatorCommands(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l, _, _ := newGatewayLab(t)
	bin := requireFtpgate(t)
	c := dialControl(t, l, l.ServerIP4)
	ap := parse227(t, c.cmd("PASV", "227"))

	out := l.Gateway.Run(t, bin, "status")
	if !strings.Contains(out, "1 sessions") || !strings.Contains(out, l.ClientIP4.String()) || !strings.Contains(out, "anonymous") {
		t.Errorf("status does not show the session:\n%s", out)
	}
	if !strings.Contains(out, "1 pinholes open") || !strings.Contains(out, ap.String()) {
		t.Errorf("status does not list the pinhole to %s:\n%s", ap, out)
	}

	// check: the lab's host firewall has the ct-mark line.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := l.Gateway.Cmd(ctx, bin, "check").CombinedOutput(); err != nil {
		t.Errorf("check with the ct-mark line: %v\n%s", err, out)
	} else if !strings.Contains(string(out), "held by the running ftpgate") || strings.Contains(string(out), "was killed") {
		// The running daemon's rule and route are its own, not a dead run's.
		t.Errorf("check on a running gateway, policy routing:\n%s", out)
	}
	// A second ftpgate (its own listeners, so it gets as far as the
	// firewall) is refused and says why, without calling the running one's
	// policy routing a killed run's leftovers.
	out3, err := l.Gateway.Cmd(ctx, bin, "run", "--listen", "127.0.0.1:2122", "--metrics-listen", "127.0.0.1:9122").CombinedOutput()
	if err == nil || !strings.Contains(string(out3), "another ftpgate runs") || strings.Contains(string(out3), "killed") {
		t.Errorf("a second ftpgate in the namespace: err %v, want a refusal naming the running one:\n%s", err, out3)
	}
	l.HostFirewall(t, false)
	out2, err := l.Gateway.Cmd(ctx, bin, "check").CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "ct mark & 0x100 == 0x100 accept") {
		t.Errorf("check without the line: err %v, want it to print the line to add:\n%s", err, out2)
	}

	dry := filepath.Join(l.Dir, "dry.nft")
	ruleset := l.Gateway.Run(t, bin, "run", "--dry-run")
	if !strings.Contains(ruleset, "table inet ftpgate") || !strings.Contains(ruleset, "tproxy") {
		t.Fatalf("dry run printed:\n%s", ruleset)
	}
	os.WriteFile(dry, []byte(ruleset), 0o600)
	// Checked where no ftpgate owns the table (the kernel refuses even a check
	// of changes to an owned table).
	l.Client.Run(t, "nft", "-c", "-f", dry)
}

// Data bytes come from the kernel (conntrack accounting, destroy events): the
// data never passes through ftpgate, yet it is counted per direction.
func TestDataBytesFromConntrack(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l := NewLab(t)
	// Entries are destroyed after TIME_WAIT (120 s by default): shorten it.
	sysctl(t, l.Gateway, true, "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1")
	l.HostFirewall(t, true)
	srv := l.StartVsftpd(t)
	g := l.StartFtpgate(t)
	size := float64(len(srv.Files[RandomFile]))
	for _, m := range []Mode{ModePASV, ModePORT} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		got, err := CurlGet(ctx, l.Client, l.ServerIP4, RandomFile, m)
		cancel()
		if err != nil || len(got) != len(srv.Files[RandomFile]) {
			t.Fatalf("%s download: %d bytes, %v", m, len(got), err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err := CurlPut(ctx, l.Client, l.ServerIP4, "bytes.bin", srv.Files[RandomFile][:256<<10], ModeEPSV)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	// The kernel reports an entry when it is destroyed: after TIME_WAIT, when
	// its garbage collector gets to it (up to a minute on a quiet host). Flush
	// the gateway's table to have the destroy events now; the control
	// connections are over, so nothing of the test is cut.
	l.Conntrack(t, "-F")
	down := `ftpgate_data_bytes_total{direction="server_to_client"}`
	up := `ftpgate_data_bytes_total{direction="client_to_server"}`
	if !waitFor(20*time.Second, func() bool { return g.Metric(t, down) >= 2*size && g.Metric(t, up) >= 256<<10 }) {
		t.Fatalf("data bytes: %v down (want >= %v), %v up (want >= %v)", g.Metric(t, down), 2*size, g.Metric(t, up), 256<<10)
	}
	if n := g.Metric(t, `ftpgate_data_connections_total{direction="server_to_client"}`); n < 2 {
		t.Errorf("downloads counted %v, want 2", n)
	}
	if n := g.Metric(t, `ftpgate_data_connections_total{direction="client_to_server"}`); n < 1 {
		t.Errorf("uploads counted %v, want 1", n)
	}
}
