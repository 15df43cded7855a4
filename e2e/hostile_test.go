package e2e

// Hostile input through a real gateway: a scripted server in the server
// namespace and hand-made client lines. Every case checks what the peer was
// told and reads the live nftables sets and maps to prove nothing was opened.

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// OpenElements returns the elements of every pinhole set and NAT map of the
// ftpgate table, "" when nothing is open.
func (l *Lab) OpenElements(t testing.TB) string {
	t.Helper()
	out := l.Gateway.Run(t, "nft", "list", "table", "inet", "ftpgate")
	var open []string
	for _, block := range regexp.MustCompile(`(?m)^\t(?:set|map) `).Split(out, -1)[1:] {
		name, _, _ := strings.Cut(block, " ")
		if name == "intercept_ports" {
			continue
		}
		if _, after, ok := strings.Cut(block, "elements = {"); ok {
			body, _, _ := strings.Cut(after, "}")
			open = append(open, name+": "+strings.Join(strings.Fields(body), " "))
		}
	}
	return strings.Join(open, "; ")
}

// scriptServer is a hostile FTP server in the lab's server namespace: for
// each connection it sends greet, then answers each command line with what
// answer returns (written by write, which may split it).
type scriptServer struct {
	ln     net.Listener
	greet  string
	answer func(cmd string) string
	// write is changed while serve goroutines run; nil writes as is.
	write atomic.Pointer[func(c *net.TCPConn, s string)]
	mu    sync.Mutex
	got   []string
	done  chan struct{} // closed when the accept loop has returned
}

func startScriptServer(t *testing.T, l *Lab, greet string, answer func(string) string) *scriptServer {
	t.Helper()
	s := &scriptServer{greet: greet, answer: answer, done: make(chan struct{})}
	// The previous subtest's listener is closed, but the port can stay taken
	// a moment longer (seen on 2-core CI runs, not alone): a process forked
	// meanwhile by another test (ip, nft, a client) holds a copy of every
	// descriptor until its exec closes the close-on-exec ones, and while it
	// does, closing ours leaves the socket listening. Retry briefly.
	var err error
	for try := 0; try < 50; try++ {
		err = l.Server.Do(func() error {
			var err error
			s.ln, err = net.Listen("tcp", ":21")
			return err
		})
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("script server: %v", err)
	}
	t.Cleanup(s.Close)
	go func() {
		defer close(s.done)
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c.(*net.TCPConn))
		}
	}()
	return s
}

// Close stops listening and waits for the accept loop to end.
func (s *scriptServer) Close() {
	s.ln.Close()
	<-s.done
}

func (s *scriptServer) send(c *net.TCPConn, text string) {
	if w := s.write.Load(); w != nil {
		(*w)(c, text)
	} else {
		c.Write([]byte(text))
	}
}

func (s *scriptServer) serve(c *net.TCPConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	s.send(c, s.greet)
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		s.mu.Lock()
		s.got = append(s.got, line)
		s.mu.Unlock()
		s.send(c, s.answer(line))
	}
}

func (s *scriptServer) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// rawControl is a control connection without login.
func rawControl(t *testing.T, l *Lab, server netip.Addr, greeting string) *control {
	t.Helper()
	c, err := l.Client.DialContext(t.Context(), "tcp", netip.AddrPortFrom(server, 21).String())
	if err != nil {
		t.Fatalf("control connection: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ctl := &control{t: t, c: c, r: bufio.NewReader(c)}
	ctl.expect(greeting)
	return ctl
}

func (c *control) raw(b string) {
	c.t.Helper()
	if _, err := c.c.Write([]byte(b)); err != nil {
		c.t.Fatal(err)
	}
}

func TestHostileServer(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l := NewLab(t)
	l.HostFirewall(t, true)
	g := l.StartFtpgate(t)
	srv := l.ServerIP4
	b := srv.As4()
	at := func(port int) string {
		return fmt.Sprintf("%d,%d,%d,%d,%d,%d", b[0], b[1], b[2], b[3], port>>8, port&255)
	}
	pasv := "227 Entering Passive Mode (" + at(40001) + ").\r\n"

	cases := []struct {
		name  string
		greet string
		reply map[string]string // command -> hostile answer
		cmd   string
		want  string // reply code the client must get
		opens int    // elements that must be open afterwards
		// The server sends one reply nobody asked for: after the greeting
		// when greet is set, else after the reply to cmd.
		unsolicited bool
	}{
		{"unsolicited 227 after the greeting", "220 hi\r\n" + pasv, nil, "NOOP", "200", 0, true},
		{"227 naming a third party", "", map[string]string{"PASV": "227 Entering Passive Mode (10,77,250,9,156,65).\r\n"}, "PASV", "425", 0, false},
		{"227 naming port 22", "", map[string]string{"PASV": "227 Entering Passive Mode (" + at(22) + ").\r\n"}, "PASV", "425", 0, false},
		{"229 naming port 23", "", map[string]string{"EPSV": "229 Entering Extended Passive Mode (|||23|)\r\n"}, "EPSV", "425", 0, false},
		{"227 byte 256", "", map[string]string{"PASV": "227 Entering Passive Mode (" + strings.Replace(at(40001), ",156,", ",256,", 1) + ").\r\n"}, "PASV", "425", 0, false},
		{"227 inside a multi-line 214", "", map[string]string{"HELP": "214-Help\r\n" + pasv + "214 Done\r\n"}, "HELP", "214", 0, false},
		{"227 answering NOOP", "", map[string]string{"NOOP": pasv}, "NOOP", "451", 0, false},
		{"227 text in an error reply", "", map[string]string{"PASV": "500 Entering Passive Mode (" + at(40001) + ").\r\n"}, "PASV", "500", 0, false},
		{"PORT from the server", "", map[string]string{"NOOP": "PORT " + at(40001) + "\r\n200 ok\r\n"}, "NOOP", "200", 0, false},
		{"duplicated 227", "", map[string]string{"PASV": pasv + pasv}, "PASV", "227", 1, true},
	}
	const unsolicited = `ftpgate_refusals_total{reason="unsolicited_reply"}`
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			greet := tc.greet
			if greet == "" {
				greet = "220 hostile\r\n"
			}
			s := startScriptServer(t, l, greet, func(cmd string) string {
				if a, ok := tc.reply[cmd]; ok {
					return a
				}
				return "200 ok\r\n"
			})
			defer s.Close()
			// ftpgate finds a reply unsolicited when it reads it: a command
			// sent before then would be paired with it. Wait for the count.
			before := g.Metric(t, unsolicited)
			settle := func() {
				t.Helper()
				if !waitFor(5*time.Second, func() bool { return g.Metric(t, unsolicited) > before }) {
					t.Fatal("the unsolicited reply was not counted")
				}
			}
			c := rawControl(t, l, srv, "220")
			if tc.unsolicited && tc.greet != "" {
				settle()
			}
			got := c.cmd(tc.cmd, tc.want)
			if tc.unsolicited && tc.greet == "" {
				settle()
			}
			c.cmd("SYST", "200") // the session goes on, replies in step
			open := l.OpenElements(t)
			if n := strings.Count(open, ":"); (tc.opens == 0 && open != "") || (tc.opens > 0 && strings.Count(open, ",")+1 != tc.opens) {
				t.Fatalf("client got %q; open elements {%s} (%d), want %d", got, open, n, tc.opens)
			}
			c.c.Close()
			if !waitFor(5*time.Second, func() bool { return l.OpenElements(t) == "" }) {
				t.Fatalf("openings left after the session: %s", l.OpenElements(t))
			}
		})
	}

	// A 227 split across TCP segments at every byte opens exactly its port.
	t.Run("227 split at every byte", func(t *testing.T) {
		s := startScriptServer(t, l, "220 split\r\n", func(cmd string) string {
			if cmd == "PASV" {
				return pasv
			}
			return "200 ok\r\n"
		})
		defer s.Close()
		for i := 1; i < len(pasv); i++ {
			write := func(c *net.TCPConn, text string) {
				if text != pasv {
					c.Write([]byte(text))
					return
				}
				c.SetNoDelay(true)
				c.Write([]byte(text[:i]))
				time.Sleep(3 * time.Millisecond)
				c.Write([]byte(text[i:]))
			}
			s.write.Store(&write)
			c := rawControl(t, l, srv, "220")
			c.cmd("PASV", "227")
			open := l.OpenElements(t)
			if !strings.Contains(open, "40001") || strings.Count(open, ",") != 0 {
				t.Fatalf("split at %d: open {%s}, want one element for port 40001", i, open)
			}
			c.c.Close()
			waitFor(5*time.Second, func() bool { return l.OpenElements(t) == "" })
		}
	})
	if v := g.Metric(t, unsolicited); v < 2 {
		t.Errorf("unsolicited replies counted %v times, want >= 2 (after greeting, duplicate)", v)
	}
}

func TestHostileClient(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	// One session serves the subtests below, with an exec'd nft between
	// commands: 5s of idling leaves room on a loaded machine.
	l, srv, g := newGatewayLab(t, "--idle-timeout", "5s")
	_ = srv
	cp := func(port int) string { return portArg(l.ClientIP4, port) }

	c := dialControl(t, l, l.ServerIP4)
	for _, tc := range []struct{ name, line, want string }{
		{"byte above 255", "PORT 10,77,1,2,256,22", "501"},
		{"NUL injection", "NOOP\x00PORT " + cp(50000), "500"},
		{"lone CR injection", "NOOP\rPORT " + portArg(netip.MustParseAddr("10.77.250.9"), 50000), "500"},
		{"1 MiB line", "NOOP " + strings.Repeat("A", 1<<20), "500"},
		{"reply from the client", "227 Entering Passive Mode (" + cp(50000) + ")", "500"},
		{"LPRT", "LPRT 4,4,10,77,1,2,2,195,80", "502"},
		{"AUTH TLS", "AUTH TLS", "534"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.cmd(tc.line, tc.want)
			if open := l.OpenElements(t); open != "" {
				t.Fatalf("opened %s", open)
			}
		})
	}

	t.Run("Telnet IAC around a legitimate PORT", func(t *testing.T) {
		// IAC IP IAC DM (an interrupt) before the command: removed, the PORT stands.
		c.raw("\xff\xf4\xff\xf2PORT " + cp(50000) + "\r\n")
		c.expect("200")
		if open := l.OpenElements(t); !strings.Contains(open, l.ClientIP4.String()) {
			t.Fatalf("open {%s}, want the client's port", open)
		}
	})

	t.Run("pipelined commands answered in order", func(t *testing.T) {
		c.raw("NOOP\r\nPORT 10,77,250,9,195,80\r\nLPSV\r\nTYPE I\r\nPWD\r\n")
		for _, want := range []string{"200", "501", "502", "200", "257"} {
			c.expect(want)
		}
	})

	t.Run("slow loris", func(t *testing.T) {
		s := rawControl(t, l, l.ServerIP4, "220")
		s.raw("US")
		time.Sleep(time.Second)
		s.raw("E")
		s.expect("421")
	})
	if v := g.Metric(t, `ftpgate_refusals_total{reason="idle_timeout"}`); v < 1 {
		t.Errorf("idle timeouts counted %v", v)
	}
}
