package proxy

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// eventually polls cond for up to 5 s: sessions and openings end on their
// own goroutines.
func eventually(cond func() bool) bool {
	for range 500 {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// sessionsReach waits until srv runs n sessions; false if it never does.
func sessionsReach(srv *Server, n int) bool {
	return eventually(func() bool { return srv.Sessions() == n })
}

// expectEOF reads until the proxy closes the client connection.
func (h *harness) expectEOF() {
	h.t.Helper()
	h.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(h.r); err != nil {
		h.t.Fatalf("connection not closed (read %q): %v", rest, err)
	}
}

// A server that closes instead of answering AUTH (TLS passthrough) ends the
// session; it must not wait for the reply for ever.
func TestSessionServerClosesDuringAUTH(t *testing.T) {
	h := newHarnessConfig(t, Config{TLS: TLSPassthrough}, "", answer("AUTH TLS", "CLOSE"))
	h.send("AUTH TLS")
	h.expectEOF()
	if !sessionsReach(h.srv, 0) {
		t.Fatalf("%d sessions still running after the server closed", h.srv.Sessions())
	}
}

// A server that never answers AUTH (TLS passthrough) does not pin the
// session: nobody reads the client meanwhile, so even a client that left
// would go unnoticed. The idle timeout ends the wait. (AUTH is sent early:
// the client's idle timeout must not end the session before AUTH comes.)
func TestSessionServerSilentOnAUTH(t *testing.T) {
	h := newHarnessEarly(t, Config{TLS: TLSPassthrough, IdleTimeout: 200 * time.Millisecond}, func(cmd string) string {
		if cmd == "AUTH TLS" {
			return "" // never answered
		}
		return defaultRespond(cmd)
	}, "AUTH TLS")
	h.expect("421 ftpgate: the FTP server did not answer AUTH")
	h.expectEOF()
	if !sessionsReach(h.srv, 0) {
		t.Fatalf("%d sessions still running", h.srv.Sessions())
	}
	if logs := h.logs.String(); !strings.Contains(logs, "reason=tls") || !strings.Contains(logs, "result=auth_timeout") {
		t.Fatalf("the timeout was not counted and logged:\n%s", logs)
	}
}

// AUTH pipelined behind a slow command: the wait for AUTH's reply starts
// when the server has answered what came before it. All is sent early, NOOP
// too: no idle timeout of the client's may run out between the lines.
func TestSessionAUTHBehindSlowCommand(t *testing.T) {
	h := newHarnessEarly(t, Config{TLS: TLSPassthrough, IdleTimeout: 250 * time.Millisecond}, func(cmd string) string {
		switch cmd {
		case "STAT":
			time.Sleep(800 * time.Millisecond) // longer than the idle timeout
			return "211 status\r\n"
		case "AUTH TLS":
			return "534 not here\r\n"
		}
		return defaultRespond(cmd)
	}, "STAT", "AUTH TLS", "NOOP")
	h.expect("211 ")
	h.expect("534 ")
	h.expect("200 ")
}

// AUTH behind a slow command, never answered: once the command is answered,
// AUTH still gets a full idle timeout, not just what is left of one that
// began when AUTH was sent.
func TestSessionAUTHTimeoutAfterSlowCommand(t *testing.T) {
	const idle = 200 * time.Millisecond
	release := make(chan struct{})
	answer := sync.OnceFunc(func() { close(release) })
	t.Cleanup(answer)
	h := newHarnessEarly(t, Config{TLS: TLSPassthrough, IdleTimeout: idle}, func(cmd string) string {
		switch cmd {
		case "STAT":
			<-release
			return "211 status\r\n"
		case "AUTH TLS":
			return "" // never answered
		}
		return defaultRespond(cmd)
	}, "STAT", "AUTH TLS")
	// Answer STAT between two idle timeouts counted from AUTH's forward,
	// where the old wait ended after half of one. Only that failure needs
	// the timing: stalls can only lengthen the time measured below.
	time.Sleep(idle * 3 / 2)
	answered := time.Now()
	answer()
	h.expect("211 ")
	h.expect("421 ftpgate: the FTP server did not answer AUTH")
	if d := time.Since(answered); d < idle {
		t.Fatalf("the wait for AUTH ended %v after STAT was answered, want at least the idle timeout %v", d, idle)
	}
	if !waitLog(h, "result=auth_timeout") { // at the session's end, after the 421
		t.Fatalf("no auth_timeout logged:\n%s", h.logs.String())
	}
}

// A client pipelining commands while the server does not answer is cut off
// at maxPipelined commands awaiting replies, not queued without bound.
// Over-long lines count too: each queues a 500.
func TestSessionPipelineCap(t *testing.T) {
	for _, filler := range []string{"LPSV", strings.Repeat("A", MaxLine+1)} {
		t.Run(filler[:4], func(t *testing.T) {
			h := newHarness(t, "", func(cmd string) string {
				if cmd == "RETR big" {
					return "" // a transfer that never ends
				}
				return defaultRespond(cmd)
			})
			lines := []string{"RETR big"}
			for range maxPipelined + 10 {
				lines = append(lines, filler) // answered by ftpgate, queued behind RETR
			}
			// Not h.send: ftpgate may close before reading everything.
			go h.client.Write([]byte(strings.Join(lines, "\r\n") + "\r\n"))
			h.expect("421 ftpgate: too many commands")
			if !sessionsReach(h.srv, 0) {
				t.Fatal("the session goes on")
			}
			if logs := h.logs.String(); !strings.Contains(logs, "reason=pipeline_overflow") || !strings.Contains(logs, "commands=1024 ") {
				t.Fatalf("no pipeline_overflow refusal logged, or not every line counted:\n%s", logs)
			}
		})
	}
}

func TestSessionRefusesMalformedVerbs(t *testing.T) {
	h := newHarnessConfig(t, Config{DenyCommands: []string{"DELE"}, AnonymousOnly: true}, "", nil)
	for _, line := range []string{
		"PORT\t127,0,0,1,195,80", // split at the tab, some servers would act on it
		"DELE\tfile",
		"USER\tbob",
		" PORT 127,0,0,1,195,80",
		"",
		"ABORTXYZW",
		"1ABC y",
		"X1 y",
	} {
		h.send(line)
		h.expect("500 ftpgate: malformed command")
	}
	h.send("noop", "XMKD dir", "CDUP", "XSHA256 file")
	h.expect("200 ")
	h.expect("200 ")
	h.expect("200 ")
	h.expect("200 ")
	if got := h.server.received(); strings.Join(got, "|") != "noop|XMKD dir|CDUP|XSHA256 file" {
		t.Fatalf("server received %q", got)
	}
	if f := h.gate.Flows(); len(f) != 0 {
		t.Fatalf("opened %v", f)
	}
}

// floodClient makes the server answer one command with more than the
// sockets between ftpgate and the client hold (12 MiB: a send buffer grows
// to 4 MiB), and the client reads none of it.
func floodClient(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t, "", func(cmd string) string {
		if cmd == "STAT" {
			return "211-status\r\n" + strings.Repeat(" a line of status text\r\n", 1<<19) + "211 End.\r\n"
		}
		return defaultRespond(cmd)
	})
	h.client.(*net.TCPConn).SetReadBuffer(4096)
	h.send("STAT")
	return h
}

// A client that stops reading ends its session once a write to it times
// out: the rest of a half-written line must not be followed by more.
func TestSessionClientStopsReading(t *testing.T) {
	// Restored by a cleanup registered before the harness's, so it runs
	// after the session is gone: a deferred restore raced a session still
	// writing when the test failed.
	t.Cleanup(func(d time.Duration) func() { return func() { writeTimeout = d } }(writeTimeout))
	writeTimeout = 200 * time.Millisecond
	h := floodClient(t)
	// Filling the buffers takes 12 MiB of relayed lines: seconds under -race
	// on a loaded machine, more than sessionsReach waits.
	for deadline := time.Now().Add(time.Minute); h.srv.Sessions() != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the session of a client that stopped reading is still running")
		}
	}
	if logs := h.logs.String(); !strings.Contains(logs, "reason=write_failed") {
		t.Fatalf("no write_failed refusal logged:\n%s", logs)
	}
}

// Close does not wait for a session blocked writing to a client that does
// not read.
func TestServerCloseWithBlockedWriter(t *testing.T) {
	h := floodClient(t)
	time.Sleep(100 * time.Millisecond) // let the reply fill the buffers
	closed := make(chan struct{})
	go func() {
		h.srv.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(writeTimeout / 2):
		t.Fatal("Close waited for the blocked write")
	}
	if strings.Contains(h.logs.String(), "reason=write_failed") {
		t.Fatal("a shutdown was counted as a peer that stopped reading")
	}
}

// Openings that were used no longer count against MaxPending.
func TestSessionMaxPendingCountsUnusedOnly(t *testing.T) {
	h := newHarnessConfig(t, Config{MaxPending: 2}, "", nil)
	for range 5 {
		h.send("PASV")
		h.expect("227 ")
		h.gate.mu.Lock()
		h.gate.useAll() // the client connected: the openings are spent
		h.gate.mu.Unlock()
	}
	if logs := h.logs.String(); strings.Contains(logs, "pending_openings") {
		t.Fatalf("used openings were revoked as pending:\n%s", logs)
	}
	for range 3 {
		h.send("PASV")
		h.expect("227 ")
	}
	if logs := h.logs.String(); !strings.Contains(logs, "reason=pending_openings") {
		t.Fatalf("a third unused opening did not revoke the oldest:\n%s", logs)
	}
}

// ABOR and urgent data: ftplib sends the whole line urgent, BSD ftp a Telnet
// Synch (IAC IP, then IAC DM with the IAC urgent) before it. Either arrives
// whole; a client's Synch is passed on as one of ftpgate's own, its IAC
// urgent (so missing from the plain stream the fake server reads), and an
// ABOR without one goes as it came: servers that do not parse Telnet would
// refuse the prefix.
func TestSessionABORSynch(t *testing.T) {
	for _, tc := range []struct {
		name         string
		urgent, rest string
		want         string
	}{
		{"ftplib", "ABOR\r\n", "", "ABOR"},
		{"bsd", "\xff\xf4\xff", "\xf2ABOR\r\n", "\xff\xf4\xf2ABOR"},
		{"plain", "", "ABOR\r\n", "ABOR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "", nil)
			if tc.urgent != "" {
				rc, err := h.client.(*net.TCPConn).SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				var serr error
				rc.Write(func(fd uintptr) bool {
					serr = unix.Sendto(int(fd), []byte(tc.urgent), unix.MSG_OOB, nil)
					return true
				})
				if serr != nil {
					t.Fatal(serr)
				}
			}
			h.client.Write([]byte(tc.rest))
			h.expect("200 ")
			if got := h.server.received(); len(got) != 1 || got[0] != tc.want {
				t.Fatalf("server received %q, want %q", got, tc.want)
			}
		})
	}
}

// An over-long first or last line of a multi-line reply keeps the reply
// whole: its end still pairs with the command, and the next command with its
// own reply.
func TestSessionLongLineOfMultilineReply(t *testing.T) {
	long := strings.Repeat("x", MaxLine+100)
	for _, tc := range []struct {
		name, reply string
		want        []string
	}{
		{"first", "214-" + long + "\r\n 227 (127,0,0,1,195,80)\r\n214 Help OK.\r\n",
			[]string{"214-ftpgate: an over-long line was dropped", " 227 (127,0,0,1,195,80)", "214 Help OK."}},
		{"last", "214-Help\r\n 227 (127,0,0,1,195,80)\r\n214 " + long + "\r\n",
			[]string{"214-Help", " 227 (127,0,0,1,195,80)", "214 ftpgate: an over-long line was dropped"}},
		{"middle", "214-Help\r\n" + long + "\r\n214 Help OK.\r\n",
			[]string{"214-Help", "214 Help OK."}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "", func(cmd string) string {
				if cmd == "HELP" {
					return tc.reply
				}
				return defaultRespond(cmd)
			})
			h.send("HELP", "NOOP")
			for _, w := range tc.want {
				h.expect(w)
			}
			h.expect("200 ")
			if f := h.gate.Flows(); len(f) != 0 {
				t.Fatalf("opened %v", f)
			}
		})
	}
}

// A client address holding its share of --passive-ports gets 425 for more,
// until it uses or gives back what it holds; its sessions go on.
func TestSessionClientPortShare(t *testing.T) {
	h := newHarnessConfig(t, Config{Mode: Reverse, PassivePorts: PortRange{60000, 60009}, MaxPortsPerClient: 2}, "", nil)
	h.send("PASV", "EPSV", "PASV")
	h.expect("227 ")
	h.expect("229 ")
	h.expect("425 ftpgate: too many unused data connections")
	if logs := h.logs.String(); !strings.Contains(logs, "reason=client_ports") {
		t.Fatalf("no client_ports refusal logged:\n%s", logs)
	}
	h.gate.mu.Lock()
	h.gate.useAll() // the client connected: its ports go back to the pool
	h.gate.mu.Unlock()
	if !eventually(func() bool { return h.srv.pool.inUse() == 0 }) {
		t.Fatal("used openings still hold their ports")
	}
	h.send("PASV")
	h.expect("227 ")
}

// A server's 421 announces that it closes and may answer any command or none
// (RFC 959; vsftpd's idle timeout sends one unasked). It reaches the client,
// is no hostile unsolicited reply, and ftpgate adds no 421 of its own.
func TestSessionServer421(t *testing.T) {
	for _, tc := range []struct {
		name, reply string // the server's answer to NOOP, after which it closes
		want        []string
	}{
		{"unasked", "200 OK.\r\n421 Timeout.\r\n", []string{"200 OK.", "421 Timeout."}},
		{"unasked multi-line", "200 OK.\r\n421-Server\r\n shutting down\r\n421 Bye.\r\n",
			[]string{"200 OK.", "421-Server", " shutting down", "421 Bye."}},
		{"answering NOOP", "421 Too busy.\r\n", []string{"421 Too busy."}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "", nil)
			h.server.write = func(c net.Conn, r string) {
				c.Write([]byte(r))
				if strings.Contains(r, "421") {
					c.Close()
				}
			}
			h.server.respond = func(cmd string) string {
				if cmd == "NOOP" {
					return tc.reply
				}
				return defaultRespond(cmd)
			}
			h.send("NOOP")
			for _, w := range tc.want {
				if got := h.expect(w); got != w {
					t.Fatalf("client got %q, want %q", got, w)
				}
			}
			h.client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if rest, err := io.ReadAll(h.r); err != nil || len(rest) != 0 {
				t.Fatalf("after the server's 421 the client got %q, %v; want the end", rest, err)
			}
			if !waitLog(h, "result=server_closed") || strings.Contains(h.logs.String(), "unsolicited_reply") {
				t.Fatalf("a server's 421 was refused, or the session end misnamed:\n%s", h.logs)
			}
		})
	}
}

// An unsolicited multi-line reply is dropped whole, decided at its first
// line: its end must not pair with the command the client sends meanwhile.
func TestSessionUnsolicitedMultilineDroppedWhole(t *testing.T) {
	h := newHarness(t, "220 hi\r\n214-unasked\r\n", answer("NOOP", " text\r\n214 end\r\n200 OK.\r\n"))
	if !waitLog(h, "reason=unsolicited_reply") {
		t.Fatalf("the unsolicited reply's first line was not refused:\n%s", h.logs)
	}
	h.send("NOOP")
	h.expect("200 OK.")
}

// An over-long reply line keeps its code: a 1xx stays preliminary, a final
// reply pairs with its command, a line that is no reply answers nothing and
// a 227/229 whose address cannot be read is refused; the pipelined NOOP gets
// its own reply.
func TestSessionOverLongReplyLine(t *testing.T) {
	long := strings.Repeat("a", MaxLine+100)
	for _, tc := range []struct {
		name, cmd, reply string
		want             []string
	}{
		{"150 (vsftpd echoes the file name)", "RETR f", "150 Opening BINARY mode data connection for " + long + "\r\n226 Done.\r\n",
			[]string{"150 ftpgate: an over-long line was dropped", "226 Done."}},
		{"final", "DELE f", "550 " + long + "\r\n", []string{"550 ftpgate: an over-long line was dropped"}},
		{"no reply", "STAT", long + "\r\n211 ok\r\n", []string{"211 ok"}},
		{"227", "PASV", "227 Entering Passive Mode (127,0,0,1,195,80) " + long + "\r\n", []string{"451 "}},
		{"229", "EPSV", "229 (|||50001|) " + long + "\r\n", []string{"451 "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "", func(cmd string) string {
				if cmd == tc.cmd {
					return tc.reply
				}
				return defaultRespond(cmd)
			})
			h.send(tc.cmd, "SIZE x", "NOOP")
			for _, w := range append(tc.want, "200 OK.", "200 OK.") {
				h.expect(w)
			}
			if f := h.gate.Flows(); len(f) != 0 {
				t.Fatalf("opened %v", f)
			}
			if logs := h.logs.String(); strings.Contains(logs, "unsolicited_reply") {
				t.Fatalf("pairing shifted:\n%s", logs)
			}
		})
	}
}

// Snapshot (/status) does not wait for a session whose reply goroutine is
// stuck writing to a client that does not read (for writeTimeout, 30 s).
func TestSnapshotWithBlockedWriter(t *testing.T) {
	h := floodClient(t)
	snapshot := func() []SessionInfo {
		got := make(chan []SessionInfo, 1)
		go func() { got <- h.srv.Snapshot() }()
		select {
		case infos := <-got:
			return infos
		case <-time.After(10 * time.Second): // a blocked write lasts writeTimeout, 30 s
			t.Fatal("Snapshot waited for the blocked write")
			return nil
		}
	}
	statPending := func(infos []SessionInfo) bool {
		return len(infos) == 1 && infos[0].Commands == 1 && infos[0].Pending == 1 && infos[0].Server == "127.0.0.1"
	}
	// The session reads and forwards STAT on its own goroutine.
	if !eventually(func() bool { return statPending(snapshot()) }) {
		t.Fatalf("Snapshot = %+v, want the session with STAT pending", snapshot())
	}
	for range 20 { // the buffers fill within a second or so
		time.Sleep(100 * time.Millisecond)
		if infos := snapshot(); !statPending(infos) {
			t.Fatalf("Snapshot = %+v, want the session with STAT pending", infos)
		}
	}
}
