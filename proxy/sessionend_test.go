package proxy

import (
	"io"
	"net"
	"strings"
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
	h := newHarnessConfig(t, Config{TLS: TLSPassthrough}, "", func(cmd string) string {
		if cmd == "AUTH TLS" {
			return "CLOSE"
		}
		return defaultRespond(cmd)
	})
	h.send("AUTH TLS")
	h.expectEOF()
	if !sessionsReach(h.srv, 0) {
		t.Fatalf("%d sessions still running after the server closed", h.srv.Sessions())
	}
}

// A client pipelining commands while the server does not answer is cut off
// at maxPipelined commands awaiting replies, not queued without bound.
func TestSessionPipelineCap(t *testing.T) {
	h := newHarness(t, "", func(cmd string) string {
		if cmd == "RETR big" {
			return "" // a transfer that never ends
		}
		return defaultRespond(cmd)
	})
	lines := []string{"RETR big"}
	for range maxPipelined + 10 {
		lines = append(lines, "LPSV") // answered by ftpgate, queued behind RETR
	}
	h.send(lines...)
	h.expect("421 ftpgate: too many commands")
	h.expectEOF()
	if logs := h.logs.String(); !strings.Contains(logs, "reason=pipeline_overflow") {
		t.Fatalf("no pipeline_overflow refusal logged:\n%s", logs)
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
	defer func(d time.Duration) { writeTimeout = d }(writeTimeout)
	writeTimeout = 200 * time.Millisecond
	h := floodClient(t)
	if !sessionsReach(h.srv, 0) {
		t.Fatal("the session of a client that stopped reading is still running")
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
