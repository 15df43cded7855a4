package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeGate records the flows it is asked to open.
type fakeGate struct {
	mu      sync.Mutex
	flows   []Flow
	closed  int
	fail    error
	release chan struct{} // when set, Open waits for it
	holes   []*fakePinhole
}

// useAll ends every opening as used by its connection; g.mu is held.
func (g *fakeGate) useAll() {
	for _, p := range g.holes {
		p.once.Do(func() { close(p.done) })
	}
}

type fakePinhole struct {
	g    *fakeGate
	once sync.Once
	done chan struct{}
}

func (p *fakePinhole) Close() error {
	p.once.Do(func() {
		p.g.mu.Lock()
		p.g.closed++
		p.g.mu.Unlock()
		close(p.done)
	})
	return nil
}

func (p *fakePinhole) Done() <-chan struct{} { return p.done }

func (g *fakeGate) Open(ctx context.Context, f Flow, ttl time.Duration) (Pinhole, error) {
	if g.release != nil {
		select {
		case <-g.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail != nil {
		return nil, g.fail
	}
	g.flows = append(g.flows, f)
	p := &fakePinhole{g: g, done: make(chan struct{})}
	g.holes = append(g.holes, p)
	return p, nil
}

func (g *fakeGate) Flows() []Flow {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Flow(nil), g.flows...)
}

// fakeServer answers each command line with the lines respond returns and
// records what it received.
type fakeServer struct {
	ln      net.Listener
	mu      sync.Mutex
	got     []string
	greet   string
	respond func(cmd string) string
	// write, when set, sends each reply instead of one Write (split segments).
	write func(c net.Conn, reply string)
}

func (fs *fakeServer) serve() {
	for {
		c, err := fs.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.Write([]byte(fs.greet))
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				line = strings.TrimRight(line, "\r\n")
				fs.mu.Lock()
				fs.got = append(fs.got, line)
				fs.mu.Unlock()
				reply := fs.respond(line)
				if reply == "CLOSE" {
					return
				}
				if fs.write != nil {
					fs.write(c, reply)
				} else {
					c.Write([]byte(reply))
				}
				if line == "QUIT" {
					return
				}
			}
		}()
	}
}

func (fs *fakeServer) received() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]string(nil), fs.got...)
}

// defaultRespond is a tiny FTP server on loopback.
func defaultRespond(cmd string) string {
	verb, _ := ParseCommand(cmd)
	switch verb {
	case "PASV":
		return "227 Entering Passive Mode (127,0,0,1,195,80).\r\n"
	case "EPSV":
		if cmd == "EPSV ALL" {
			return "200 EPSV ALL ok.\r\n"
		}
		return "229 Entering Extended Passive Mode (|||50001|)\r\n"
	case "PORT", "EPRT":
		return "200 PORT command successful.\r\n"
	case "QUIT":
		return "221 Goodbye.\r\n"
	case "USER":
		return "331 Please specify the password.\r\n"
	case "PASS":
		return "230 Login successful.\r\n"
	case "HELP":
		return "214-The following commands are recognized.\r\n227 Entering Passive Mode (127,0,0,1,195,80).\r\n 229 (|||50001|)\r\n214 Help OK.\r\n"
	}
	return "200 OK.\r\n"
}

// answer is a fake server's respond that answers cmd with reply and every
// other command as defaultRespond does.
func answer(cmd, reply string) func(string) string {
	return func(c string) string {
		if c == cmd {
			return reply
		}
		return defaultRespond(c)
	}
}

type harness struct {
	t      *testing.T
	srv    *Server
	gate   *fakeGate
	server *fakeServer
	logs   *syncBuffer
	client net.Conn
	r      *bufio.Reader
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// newHarness runs a Server on loopback whose sessions go to a fake server.
func newHarness(t *testing.T, greet string, respond func(string) string) *harness {
	t.Helper()
	return newHarnessConfig(t, Config{}, greet, respond)
}

func newHarnessConfig(t *testing.T, cfg Config, greet string, respond func(string) string) *harness {
	t.Helper()
	return startHarness(t, cfg, greet, respond, nil)
}

// newHarnessEarly is newHarnessConfig whose client sends the early lines
// before it reads the greeting: they wait in the socket when the session
// starts reading commands, so no idle timeout can pass before they come,
// however late the test goroutine runs.
func newHarnessEarly(t *testing.T, cfg Config, respond func(string) string, early ...string) *harness {
	t.Helper()
	return startHarness(t, cfg, "", respond, early)
}

func startHarness(t *testing.T, cfg Config, greet string, respond func(string) string, early []string) *harness {
	t.Helper()
	h := &harness{t: t, gate: &fakeGate{}, logs: &syncBuffer{}}
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if greet == "" {
		greet = "220 fake FTP\r\n"
	}
	if respond == nil {
		respond = defaultRespond
	}
	h.server = &fakeServer{ln: sln, greet: greet, respond: respond}
	go h.server.serve()

	cfg.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.PinholeTTL = time.Second
	srv := NewServer(cfg, h.gate)
	h.srv = srv
	srv.dial = func(s *session) (net.Conn, error) { return net.Dial("tcp", sln.Addr().String()) }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	h.client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	h.r = bufio.NewReader(h.client)
	t.Cleanup(func() {
		h.client.Close()
		ln.Close()
		srv.Close()
		sln.Close()
	})
	if len(early) > 0 {
		h.send(early...)
	}
	h.expect("220 ")
	return h
}

func (h *harness) send(lines ...string) {
	h.t.Helper()
	if _, err := h.client.Write([]byte(strings.Join(lines, "\r\n") + "\r\n")); err != nil {
		h.t.Fatal(err)
	}
}

// expect reads one reply line and checks its prefix.
func (h *harness) expect(prefix string) string {
	h.t.Helper()
	h.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := h.r.ReadString('\n')
	if err != nil {
		h.t.Fatalf("reading reply (want %q): %v", prefix, err)
	}
	line = strings.TrimRight(line, "\r\n")
	if !strings.HasPrefix(line, prefix) {
		h.t.Fatalf("reply %q, want prefix %q", line, prefix)
	}
	return line
}

var loop4 = netip.MustParseAddr("127.0.0.1")

func TestSessionNegotiation(t *testing.T) {
	tests := []struct {
		name      string
		cmd       string
		reply     string // prefix of the reply the client must get
		flow      *Flow
		forwarded bool
	}{
		{"PORT", "PORT 127,0,0,1,195,80", "200 ", &Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:50000"), Dir: Active}, true},
		{"port lower case", "port 127,0,0,1,195,80", "200 ", &Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:50000"), Dir: Active}, true},
		{"EPRT v4", "EPRT |1|127.0.0.1|50000|", "200 ", &Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:50000"), Dir: Active}, true},
		{"PORT bounce", "PORT 10,77,9,9,195,80", "501 ", nil, false},
		{"EPRT bounce", "EPRT |1|10.77.9.9|50000|", "501 ", nil, false},
		{"EPRT v6 on a v4 session", "EPRT |2|::1|50000|", "501 ", nil, false},
		{"PORT low port", "PORT 127,0,0,1,0,22", "501 ", nil, false},
		{"PORT byte 256", "PORT 127,0,0,1,256,22", "501 ", nil, false},
		{"PORT garbage", "PORT hello", "501 ", nil, false},
		{"LPRT", "LPRT 4,4,127,0,0,1,2,195,80", "502 ", nil, false},
		{"LPSV", "LPSV", "502 ", nil, false},
		{"AUTH TLS", "AUTH TLS", "534 ", nil, false},
		{"PASV", "PASV", "227 Entering Passive Mode (127,0,0,1,195,80)", &Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:50000"), Dir: Passive}, true},
		{"EPSV", "EPSV", "229 ", &Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:50001"), Dir: Passive}, true},
		{"NUL in command", "NOOP\x00x", "500 ", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "", nil)
			h.send(tc.cmd)
			h.expect(tc.reply)
			h.send("QUIT")
			h.expect("221 ")
			flows := h.gate.Flows()
			if tc.flow == nil && len(flows) != 0 {
				t.Fatalf("opened %v, want nothing", flows)
			}
			if tc.flow != nil && (len(flows) != 1 || flows[0] != *tc.flow) {
				t.Fatalf("opened %v, want %v", flows, *tc.flow)
			}
			got := h.server.received()
			sawCmd := len(got) > 0 && got[0] == tc.cmd
			if sawCmd != tc.forwarded {
				t.Fatalf("server received %q; forwarded=%v, want %v", got, sawCmd, tc.forwarded)
			}
		})
	}
}

func TestSessionHostilePassiveReplies(t *testing.T) {
	tests := []struct {
		name  string
		cmd   string
		reply string // what the fake server answers
		want  string
	}{
		{"third party address", "PASV", "227 Entering Passive Mode (10,77,9,9,195,80).\r\n", "425 "},
		{"low port", "PASV", "227 Entering Passive Mode (127,0,0,1,0,22).\r\n", "425 "},
		{"byte 256", "PASV", "227 Entering Passive Mode (127,0,0,1,256,22).\r\n", "425 "},
		{"229 low port", "EPSV", "229 Entering Extended Passive Mode (|||23|)\r\n", "425 "},
		{"227 answering NOOP", "NOOP", "227 Entering Passive Mode (127,0,0,1,195,80).\r\n", "451 "},
		{"229 answering PASV", "PASV", "229 Entering Extended Passive Mode (|||50001|)\r\n", "451 "},
		{"227 answering EPSV", "EPSV", "227 Entering Passive Mode (127,0,0,1,195,80).\r\n", "451 "},
		{"227 as an error reply", "PASV", "500 Entering Passive Mode (127,0,0,1,195,80).\r\n", "500 "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "", answer(tc.cmd, tc.reply))
			h.send(tc.cmd)
			h.expect(tc.want)
			h.send("SYST")
			h.expect("200 ")
			if f := h.gate.Flows(); len(f) != 0 {
				t.Fatalf("opened %v, want nothing", f)
			}
		})
	}
}

func TestSessionUnsolicitedAndMultiline(t *testing.T) {
	// A 227 right behind the greeting answers nothing: it is dropped.
	h := newHarness(t, "220 hi\r\n227 Entering Passive Mode (127,0,0,1,195,80).\r\n", nil)
	h.send("HELP")
	h.expect("214-")
	h.expect("227 Entering") // text inside the multi-line 214: passed on, never acted on
	h.expect(" 229")
	h.expect("214 ")
	h.send("NOOP")
	h.expect("200 ")
	if f := h.gate.Flows(); len(f) != 0 {
		t.Fatalf("opened %v, want nothing", f)
	}
	if !strings.Contains(h.logs.String(), string(ReasonUnsolicited)) {
		t.Fatalf("no log line for the unsolicited reply:\n%s", h.logs)
	}
}

func TestSessionPipelinedRepliesKeepOrder(t *testing.T) {
	h := newHarness(t, "", nil)
	h.send("NOOP", "PORT 10,77,9,9,195,80", "PASV", "LPSV", "PORT 127,0,0,1,195,81", "NOOP")
	for _, want := range []string{"200 OK", "501 ", "227 ", "502 ", "200 PORT", "200 OK"} {
		h.expect(want)
	}
	if n := len(h.gate.Flows()); n != 2 {
		t.Fatalf("opened %d flows, want 2", n)
	}
}

func TestSessionLongLineAndRecovery(t *testing.T) {
	h := newHarness(t, "", nil)
	h.send("NOOP " + strings.Repeat("A", 1<<20))
	h.expect("500 ")
	h.send("NOOP")
	h.expect("200 ")
}

func TestSessionEPSVAll(t *testing.T) {
	h := newHarness(t, "", nil)
	h.send("EPSV ALL")
	h.expect("200 ")
	if len(h.gate.Flows()) != 0 {
		t.Fatal("EPSV ALL opened something")
	}
	for _, cmd := range []string{"PORT 127,0,0,1,195,80", "EPRT |1|127.0.0.1|50000|", "PASV"} {
		h.send(cmd)
		h.expect("501 ")
	}
	h.send("EPSV")
	h.expect("229 ")
	if n := len(h.gate.Flows()); n != 1 {
		t.Fatalf("opened %d flows, want 1 (EPSV)", n)
	}
}

// EPSV ALL binds the session only once the server accepts it, and REIN
// (a new session) lifts it.
func TestSessionEPSVAllOnAcceptance(t *testing.T) {
	refuses := answer("EPSV ALL", "500 Unknown command.\r\n")
	h := newHarness(t, "", refuses)
	h.send("EPSV ALL")
	h.expect("500 ")
	h.send("PASV")
	h.expect("227 ")

	// A 229 to EPSV ALL reaches the client as a refusal: nothing binds.
	as229 := answer("EPSV ALL", "229 Entering Extended Passive Mode (|||50001|)\r\n")
	h = newHarness(t, "", as229)
	h.send("EPSV ALL")
	h.expect("451 ")
	h.send("PASV")
	h.expect("227 ")

	rein := answer("REIN", "220 Service ready for new user.\r\n")
	h = newHarness(t, "", rein)
	h.send("EPSV ALL")
	h.expect("200 ")
	h.send("PASV")
	h.expect("501 ")
	h.send("REIN")
	h.expect("220 ")
	h.send("PASV")
	h.expect("227 ")
}

// A data port the gateway intercepts is a refusal by configuration, not a
// firewall failure.
func TestSessionInterceptedPort(t *testing.T) {
	h := newHarness(t, "", nil)
	h.gate.fail = fmt.Errorf("nft: pinhole x: %w (--intercept-port 50000)", ErrInterceptedPort)
	h.send("PASV")
	h.expect("425 ")
	h.send("NOOP")
	h.expect("200 ")
	logs := h.logs.String()
	if !strings.Contains(logs, "reason=intercept_port") || strings.Contains(logs, "reason=firewall_error") {
		t.Errorf("want one intercept_port refusal and no firewall_error:\n%s", logs)
	}
}

func TestSessionGateFailure(t *testing.T) {
	h := newHarness(t, "", nil)
	h.gate.fail = errors.New("netlink: operation not permitted")
	h.send("PASV")
	h.expect("425 ")
	h.send("PORT 127,0,0,1,195,80")
	h.expect("425 ")
	// The session goes on.
	h.send("NOOP")
	h.expect("200 ")
	if got := h.server.received(); len(got) != 2 || got[0] != "PASV" || got[1] != "NOOP" {
		t.Fatalf("server received %q; a PORT the firewall could not open must not be forwarded", got)
	}
}

// The reply that names the data port reaches the client only after the gate
// acknowledged, so that a fast client cannot race the rule.
func TestSessionReplyWaitsForGate(t *testing.T) {
	h := newHarness(t, "", nil)
	h.gate.release = make(chan struct{})
	h.send("PASV")
	h.client.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := h.r.ReadString('\n'); err == nil {
		t.Fatal("227 reached the client before the pinhole was acknowledged")
	}
	close(h.gate.release)
	h.expect("227 ")
}

// Neither the debug log nor a refusal shows a password, however malformed
// the PASS line (a refusal logs the line it refuses).
func TestSessionNeverLogsPasswords(t *testing.T) {
	for _, tc := range []struct{ line, reply string }{
		{"PASS s3cret-word", "230 "},
		{"pass s3cret-word", "230 "},
		{"PASS\ts3cret-word", "500 "},
		{"pass\ts3cret-word", "500 "},
		{" PASS s3cret-word", "500 "},
		{"\tpass s3cret-word", "500 "},
		{"PASS\x00s3cret-word", "500 "},
		{"PASS s3cret\x00word", "500 "},
	} {
		t.Run(tc.line, func(t *testing.T) {
			h := newHarness(t, "", nil)
			h.send("USER alice", tc.line)
			h.expect("331 ")
			h.expect(tc.reply)
			h.send("QUIT")
			h.expect("221 ")
			if logs := h.logs.String(); strings.Contains(strings.ToLower(logs), "s3cret") {
				t.Fatalf("password in logs:\n%s", logs)
			}
		})
	}
}

func TestSessionEndRevokesPinholes(t *testing.T) {
	h := newHarness(t, "", nil)
	h.send("PASV")
	h.expect("227 ")
	h.send("QUIT")
	h.expect("221 ")
	closed := func() int { h.gate.mu.Lock(); defer h.gate.mu.Unlock(); return h.gate.closed }
	if !eventually(func() bool { return closed() == 1 }) {
		t.Fatalf("closed %d pinholes at session end, want 1", closed())
	}
}

// A Telnet IAC IAC decodes to one 0xFF byte; passed on, it must be escaped
// again, or "IAC IAC IP" would reach the server as an interrupt.
func TestSessionEscapesIACOnTheWire(t *testing.T) {
	h := newHarness(t, "", nil)
	h.send("SITE \xff\xff\xf4x")
	h.expect("200 ")
	got := h.server.received()
	if len(got) != 1 || got[0] != "SITE \xff\xff\xf4x" {
		t.Fatalf("server received %q, want the 0xFF doubled", got)
	}
}

func TestSessionServerPassiveRange(t *testing.T) {
	h := newHarnessConfig(t, Config{ServerPassivePorts: PortRange{40000, 40100}}, "", nil)
	h.send("PASV")
	h.expect("425 ")
	h.send("EPSV")
	h.expect("425 ")
	if f := h.gate.Flows(); len(f) != 0 {
		t.Fatalf("opened %v, want nothing", f)
	}
	if !strings.Contains(h.logs.String(), string(ReasonServerPorts)) {
		t.Fatal("no log line for the out-of-range port")
	}
}

func TestSessionReverseRewrites(t *testing.T) {
	server50000 := netip.MustParseAddrPort("127.0.0.1:50000")
	tests := []struct {
		name     string
		cmd      string
		reply    string // the fake server's answer to cmd; "" for the default
		toClient string
		toServer string
		flow     Flow
	}{
		{"PASV", "PASV", "", "227 Entering Passive Mode (127,0,0,1,234,96).", "PASV",
			Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:60000"), Dir: Passive, Target: server50000, SNAT: loop4}},
		{"PASV naming a third party", "PASV", "227 Entering Passive Mode (192,0,2,7,195,80).\r\n", "227 Entering Passive Mode (127,0,0,1,234,96).", "PASV",
			Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:60000"), Dir: Passive, Target: server50000, SNAT: loop4}},
		{"EPSV", "EPSV", "229 Entering Extended Passive Mode (|||50000|)\r\n", "229 Entering Extended Passive Mode (|||60000|)", "EPSV",
			Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:60000"), Dir: Passive, Target: server50000, SNAT: loop4}},
		{"PORT", "PORT 127,0,0,1,195,80", "", "200 ", "PORT 127,0,0,1,234,96",
			Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:60000"), Dir: Active, Target: server50000, SNAT: loop4}},
		{"EPRT", "EPRT |1|127.0.0.1|50000|", "", "200 ", "EPRT |1|127.0.0.1|60000|",
			Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:60000"), Dir: Active, Target: server50000, SNAT: loop4}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Mode: Reverse, PassivePorts: PortRange{60000, 60000}}
			h := newHarnessConfig(t, cfg, "", func(cmd string) string {
				if cmd == tc.cmd && tc.reply != "" {
					return tc.reply
				}
				return defaultRespond(cmd)
			})
			h.send(tc.cmd)
			if got := h.expect(tc.toClient); strings.HasSuffix(tc.toClient, ".") && got != tc.toClient {
				t.Fatalf("client got %q, want %q", got, tc.toClient)
			}
			if got := h.server.received(); len(got) != 1 || got[0] != tc.toServer {
				t.Fatalf("server got %q, want %q", got, tc.toServer)
			}
			if f := h.gate.Flows(); len(f) != 1 || f[0] != tc.flow {
				t.Fatalf("opened %v, want %v", f, tc.flow)
			}
			// The single port of the range is taken: the next opening is refused.
			h.send(tc.cmd)
			h.expect("425 ")
		})
	}
}

// TestSessionServerSilentAfterConnect: a server that accepts the connection
// but never greets gets the client a 421 within the connect timeout, not a
// hang; once it greeted, slow replies are fine.
func TestSessionServerSilentAfterConnect(t *testing.T) {
	// Accepted, never written to (greetingServer with no greetings).
	line, _, logs := greetingOf(t, greetingServer(t), Config{DialTimeout: 300 * time.Millisecond}, nil)
	if !strings.HasPrefix(line, "421 ftpgate: the FTP server sent no greeting") {
		t.Fatalf("client got %q; want a 421 about the missing greeting", line)
	}
	if !strings.Contains(logs, "reason=upstream_error") {
		t.Errorf("no upstream_error refusal logged:\n%s", logs)
	}

	// DialTimeout generous enough for the fake server to greet within it
	// whatever the scheduler does, and NOOP answered after it has passed.
	h := newHarnessConfig(t, Config{DialTimeout: 2 * time.Second}, "", func(cmd string) string {
		if cmd == "NOOP" {
			time.Sleep(2500 * time.Millisecond)
		}
		return defaultRespond(cmd)
	})
	h.send("NOOP")
	h.expect("200")
}

// A PORT/EPRT the server refuses will see no connection: its opening is
// closed at once and a NAT'ed one gives its port back, instead of both
// waiting for the pinhole timeout.
func TestSessionRefusedPORTClosesOpening(t *testing.T) {
	for _, tc := range []struct {
		name, cmd, reply string
		mode             Mode
		closed           int
	}{
		{"PORT refused", "PORT 127,0,0,1,195,80", "500 Illegal PORT command.\r\n", Transparent, 1},
		{"EPRT refused, NAT'ed", "EPRT |1|127.0.0.1|50000|", "522 Bad network protocol.\r\n", Reverse, 1},
		{"PORT accepted", "PORT 127,0,0,1,195,80", "200 PORT command successful.\r\n", Transparent, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarnessConfig(t, Config{Mode: tc.mode, PassivePorts: PortRange{60000, 60009}}, "", func(cmd string) string {
				if strings.HasPrefix(cmd, tc.cmd[:5]) { // reverse mode rewrites the EPRT
					return tc.reply
				}
				return defaultRespond(cmd)
			})
			h.send(tc.cmd)
			h.expect(tc.reply[:4])
			h.send("NOOP") // the reply's handling is over once NOOP's comes
			h.expect("200 OK")
			h.gate.mu.Lock()
			closed, opened := h.gate.closed, len(h.gate.flows)
			h.gate.mu.Unlock()
			if opened != 1 || closed != tc.closed {
				t.Fatalf("opened %d, closed %d; want 1, %d", opened, closed, tc.closed)
			}
			if tc.mode == Reverse && !eventually(func() bool { return h.srv.pool.inUse() == 0 }) {
				t.Fatal("the refused EPRT still holds its port")
			}
		})
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"PASS s3cret", "PASS ****"},
		{"pass s3cret", "PASS ****"},
		{"PASS\ts3cret", "PASS ****"},
		{"  PASS s3cret", "  PASS ****"},
		{"\x00PASS s3cret", "\x00PASS ****"},
		{"NOOP\rPASS s3cret", "NOOP\rPASS ****"},
		{"USER bob\x00pass s3cret", "USER bob\x00PASS ****"},
		{"\xef\xbb\xbfPASS s3cret", "\xef\xbb\xbfPASS ****"},
		{"\xffPASS s3cret", "\xffPASS ****"},
		{"\x7fPASS s3cret", "\x7fPASS ****"},
		{"RETR passport.pdf", "RETR passport.pdf"},
		{"USER pass", "USER pass"},
		{"NOOP", "NOOP"},
		{"PAS", "PAS"},
	} {
		if got := redact(tc.in); got != tc.want {
			t.Errorf("redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// writeCounter is a client connection that records each write.
type writeCounter struct {
	net.Conn // nil: only Write and SetWriteDeadline are used
	writes   []string
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func (w *writeCounter) SetWriteDeadline(time.Time) error { return nil }

// The lines of a multi-line reply that were read together reach the client
// in one write, and none waits for the rest of the reply: a line is held
// only while a complete next one is already read.
func TestRelayLineCoalesces(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"one segment", "211-Features:\r\n EPSV\r\n PASV\r\n",
			[]string{"211-Features:\r\n EPSV\r\n PASV\r\n"}},
		{"rest not yet read", "211-Features:\r\n EPSV\r\n PA",
			[]string{"211-Features:\r\n EPSV\r\n"}},
		{"escaped IAC", "211-a\xff\xffb\r\n c\r\n",
			[]string{"211-a\xff\xffb\r\n c\r\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &writeCounter{}
			s := &session{client: c}
			s.clientWrite.set = c.SetWriteDeadline
			r := NewLineReader(strings.NewReader(tc.in), 0)
			for {
				line, err := r.ReadLine()
				if err != nil {
					break
				}
				s.relayLine(r, line)
			}
			if !slices.Equal(c.writes, tc.want) {
				t.Fatalf("writes %q, want %q", c.writes, tc.want)
			}
		})
	}
}

// A multi-line reply the server sends in parts reaches the client as it
// comes: what arrived is not held back until the reply ends.
func TestMultiLineReplyAsItComes(t *testing.T) {
	release := make(chan struct{})
	h := newHarness(t, "", answer("FEAT", "211-Features:\r\n EPSV\r\n"))
	h.server.write = func(c net.Conn, reply string) {
		c.Write([]byte(reply))
		if strings.HasPrefix(reply, "211-") {
			<-release
			c.Write([]byte("211 End\r\n"))
		}
	}
	h.send("FEAT")
	h.expect("211-Features:")
	h.expect(" EPSV")
	close(release)
	h.expect("211 End")
}

// A line held for the next one is not stuck when that next one is dropped
// (over-long text inside a multi-line reply) and the server then waits.
func TestHeldLineNotStuckBehindDroppedLine(t *testing.T) {
	release := make(chan struct{})
	h := newHarnessConfig(t, Config{MaxLine: 200}, "", nil)
	h.server.write = func(c net.Conn, reply string) {
		if !strings.HasPrefix(reply, "211") {
			c.Write([]byte(reply))
			return
		}
		c.Write([]byte("211-Features:\r\n " + strings.Repeat("x", 300) + "\r\n"))
		<-release
		c.Write([]byte("211 End\r\n"))
	}
	h.server.respond = answer("FEAT", "211")
	h.send("FEAT")
	h.expect("211-Features:")
	close(release)
	h.expect("211 End")
}
