package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain checks for leaked goroutines as goleak.VerifyTestMain does, but
// gives them 10 s to end rather than its ~0.4 s: a loaded machine can stall
// the last wake-up they need for longer than that.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		err := goleak.Find()
		for end := time.Now().Add(10 * time.Second); err != nil && time.Now().Before(end); err = goleak.Find() {
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func TestSessionLimits(t *testing.T) {
	h := newHarnessConfig(t, Config{MaxSessions: 1}, "", nil)
	c, err := net.Dial("tcp", h.client.RemoteAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 200)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := c.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "421 ") || !strings.Contains(string(buf[:n]), "max_sessions") {
		t.Fatalf("second session got %q, want 421 max_sessions", buf[:n])
	}
	h.send("NOOP") // the first session is unaffected
	h.expect("200 ")
}

func TestSessionLimitPerClient(t *testing.T) {
	h := newHarnessConfig(t, Config{MaxSessionsPerClient: 1}, "", nil)
	c, err := net.Dial("tcp", h.client.RemoteAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 200)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := c.Read(buf)
	if !strings.Contains(string(buf[:n]), "max_sessions_per_client") {
		t.Fatalf("second session from the same client got %q", buf[:n])
	}
}

// TestShutdownTurnsNewSessionsAway: while open sessions drain, a new client
// is told with a 421 (the listener stays open for that) and the open session
// goes on; the end of the grace closes it.
func TestShutdownTurnsNewSessionsAway(t *testing.T) {
	h := newHarness(t, "", nil)
	ctx, endGrace := context.WithCancel(context.Background())
	defer endGrace()
	drained := make(chan struct{})
	go func() {
		h.srv.Shutdown(ctx)
		close(drained)
	}()
	var reply string
	if !eventually(func() bool {
		c, err := net.Dial("tcp", h.client.RemoteAddr().String())
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		reply, _ = bufio.NewReader(c).ReadString('\n')
		return strings.HasPrefix(reply, "421 ")
	}) {
		t.Fatalf("a new client during the drain got %q, want a 421", reply)
	}
	if !strings.Contains(reply, "shutting down") || !strings.Contains(h.logs.String(), "reason=shutting_down") {
		t.Errorf("reply %q, log %q: want the reason, shutting down", reply, h.logs.String())
	}
	h.send("NOOP") // the open session is unaffected
	h.expect("200 ")
	endGrace()
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return once its grace ended")
	}
	if n := h.srv.Sessions(); n != 0 {
		t.Errorf("%d sessions after the grace, want 0", n)
	}
}

func TestSessionIdleAndSlowLoris(t *testing.T) {
	for _, tc := range []struct{ name, send string }{{"silent", ""}, {"slow loris", "NO"}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarnessConfig(t, Config{IdleTimeout: 200 * time.Millisecond}, "", nil)
			if tc.send != "" {
				h.client.Write([]byte(tc.send))
				time.Sleep(100 * time.Millisecond)
				h.client.Write([]byte("O")) // a byte now and then does not count
			}
			h.expect("421 ")
			if _, err := h.r.ReadString('\n'); err == nil {
				t.Fatal("connection still open after the idle timeout")
			}
		})
	}
}

// While a command awaits its reply (a long transfer), a quiet client is fine.
// RETR is sent early, so that something awaits a reply from the session's
// first read on.
func TestSessionIdleWhileWaiting(t *testing.T) {
	h := newHarnessEarly(t, Config{IdleTimeout: 100 * time.Millisecond}, func(cmd string) string {
		if cmd == "RETR big" {
			time.Sleep(400 * time.Millisecond)
			return "226 Transfer complete.\r\n"
		}
		return defaultRespond(cmd)
	}, "RETR big")
	h.expect("226 ")
}

func TestSessionPolicy(t *testing.T) {
	h := newHarnessConfig(t, Config{DenyCommands: []string{"stor", "DELE"}, AnonymousOnly: true}, "", nil)
	h.send("USER alice")
	h.expect("530 ")
	h.send("USER anonymous")
	h.expect("331 ")
	h.send("STOR x")
	h.expect("550 ")
	h.send("dele x")
	h.expect("550 ")
	h.send("RETR x")
	h.expect("200 ")
	if got := h.server.received(); strings.Join(got, "|") != "USER anonymous|RETR x" {
		t.Fatalf("server received %q", got)
	}
}

func TestSessionWrongDirection(t *testing.T) {
	// A server that sends a PORT command and a stray success reply.
	h := newHarness(t, "220 hi\r\nPORT 127,0,0,1,195,80\r\n200 stray\r\n", nil)
	h.send("227 Entering Passive Mode (127,0,0,1,195,80).")
	h.expect("500 ")
	// The stray 200 must have been dropped before NOOP is pending, or it
	// would rightly answer it.
	if !waitLog(h, "reason=unsolicited_reply") {
		t.Fatalf("the stray reply was not refused:\n%s", h.logs.String())
	}
	h.send("NOOP")
	h.expect("200 OK")
	if f := h.gate.Flows(); len(f) != 0 {
		t.Fatalf("opened %v", f)
	}
	if got := h.server.received(); len(got) != 1 {
		t.Fatalf("server received %q, want only NOOP", got)
	}
	// The client's reply and the server's PORT.
	if logs := h.logs.String(); strings.Count(logs, "reason=wrong_direction") != 2 {
		t.Fatalf("want 2 wrong_direction refusals:\n%s", logs)
	}
}

func TestSessionDuplicated227(t *testing.T) {
	h := newHarness(t, "", answer("PASV", "227 Entering Passive Mode (127,0,0,1,195,80).\r\n227 Entering Passive Mode (127,0,0,1,195,81).\r\n"))
	h.send("PASV")
	h.expect("227 Entering Passive Mode (127,0,0,1,195,80)")
	h.send("NOOP")
	h.expect("200 ")
	if f := h.gate.Flows(); len(f) != 1 || f[0].Dst.Port() != 50000 {
		t.Fatalf("opened %v, want only the first 227's port", f)
	}
}

// A 227 split across TCP segments at every byte still opens exactly its port.
func TestSession227SplitAtEveryByte(t *testing.T) {
	reply := "227 Entering Passive Mode (127,0,0,1,195,80).\r\n"
	for i := 1; i < len(reply); i++ {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			h := newHarness(t, "", defaultRespond)
			h.server.write = func(c net.Conn, r string) {
				if !strings.HasPrefix(r, "227") {
					c.Write([]byte(r))
					return
				}
				c.(*net.TCPConn).SetNoDelay(true)
				c.Write([]byte(r[:i]))
				time.Sleep(2 * time.Millisecond)
				c.Write([]byte(r[i:]))
			}
			h.send("PASV")
			h.expect("227 Entering Passive Mode (127,0,0,1,195,80).")
			want := Flow{Src: loop4, Dst: netip.MustParseAddrPort("127.0.0.1:50000"), Dir: Passive}
			if f := h.gate.Flows(); len(f) != 1 || f[0] != want {
				t.Fatalf("opened %v, want %v", f, want)
			}
		})
	}
}

func TestSessionUpstreamDrops(t *testing.T) {
	h := newHarness(t, "", answer("NOOP", "CLOSE"))
	h.send("NOOP")
	h.expect("421 ")
}

func TestSessionTLSPassthrough(t *testing.T) {
	h := newHarnessConfig(t, Config{TLS: TLSPassthrough}, "", nil)
	h.server.write = func(c net.Conn, r string) {
		c.Write([]byte(r))
		if strings.HasPrefix(r, "234") {
			// From here on the channel is "encrypted": echo raw bytes.
			buf := make([]byte, 64)
			n, _ := c.Read(buf)
			c.Write(buf[:n])
		}
	}
	h.server.respond = answer("AUTH TLS", "234 Proceed with negotiation.\r\n")
	h.send("AUTH TLS")
	h.expect("234 ")
	blob := "\x16\x03\x01\x00\xff\r\nPORT 1,2,3,4,5,6\r\n"
	h.client.Write([]byte(blob))
	got := make([]byte, len(blob))
	h.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := h.r.Read(got); err != nil || string(got) != blob {
		t.Fatalf("blind relay returned %q, %v; want %q", got, err, blob)
	}
	if f := h.gate.Flows(); len(f) != 0 {
		t.Fatalf("an encrypted session opened %v", f)
	}
}

func TestSessionTLSPassthroughRefusedByServer(t *testing.T) {
	h := newHarnessConfig(t, Config{TLS: TLSPassthrough}, "", nil)
	h.send("AUTH TLS")
	h.expect("200 ") // the fake server does not know AUTH: plain FTP goes on
	h.send("PASV")
	h.expect("227 ")
}

func TestServerShutdownGrace(t *testing.T) {
	h := newHarness(t, "", nil)
	srv := h.srv
	done := make(chan struct{})
	grace, endGrace := context.WithCancel(context.Background())
	go func() {
		srv.Shutdown(grace)
		close(done)
	}()
	if !eventually(func() bool { srv.mu.Lock(); defer srv.mu.Unlock(); return srv.closed }) {
		t.Fatal("Shutdown did not start")
	}
	h.send("NOOP") // an open session goes on during the grace period
	h.expect("200 ")
	endGrace()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not end after its grace period")
	}
	if _, err := h.r.ReadString('\n'); err == nil {
		t.Fatal("session still open after the grace period")
	}
}

func TestServerReload(t *testing.T) {
	h := newHarness(t, "", nil)
	cfg := *h.srv.config()
	cfg.DenyCommands = []string{"NOOP"}
	if err := h.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	h.send("NOOP") // a running session keeps its settings
	h.expect("200 ")
	c, err := net.Dial("tcp", h.client.RemoteAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("NOOP\r\n"))
	buf := make([]byte, 400)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got string
	for !strings.Contains(got, "550") {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("new session got %q, %v; want 550 for NOOP", got, err)
		}
		got += string(buf[:n])
	}
	// The port pool was sized at start: a new share per client is kept for
	// the restart, and the rest of the reload still applies.
	running := h.srv.Config().MaxPortsPerClient
	cfg.MaxPortsPerClient, cfg.MaxSessions = running+5, 7
	if err := h.srv.Reload(cfg); err != nil {
		t.Fatalf("a reload changing --max-ports-per-client failed: %v", err)
	}
	if got := h.srv.Config(); got.MaxPortsPerClient != running || got.MaxSessions != 7 {
		t.Errorf("after reload: MaxPortsPerClient %d (want the running %d), MaxSessions %d (want 7)", got.MaxPortsPerClient, running, got.MaxSessions)
	}
	cfg.PassivePorts = PortRange{61000, 61009}
	if err := h.srv.Reload(cfg); err == nil {
		t.Fatal("Reload changed the passive ports")
	}
	cfg = h.srv.Config()
	cfg.Mode = Reverse
	if err := h.srv.Reload(cfg); err == nil {
		t.Fatal("Reload changed the mode")
	}
}
