package proxy

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// redialObserver counts UpstreamRedial and upstream_error refusals.
type redialObserver struct {
	nopObserver
	redials, upstreamErrors atomic.Int32
	onRedial                func() // when set, called on UpstreamRedial: just before the second dial
}

func (o *redialObserver) UpstreamRedial() {
	o.redials.Add(1)
	if o.onRedial != nil {
		o.onRedial()
	}
}

func (o *redialObserver) Refused(r Reason) {
	if r == ReasonUpstream {
		o.upstreamErrors.Add(1)
	}
}

// greetingServer accepts connections and greets the n-th (from 0) once
// greet[n] is closed: at once if it is nil, never if there is no entry or
// nobody closes it.
func greetingServer(t *testing.T, greet ...<-chan struct{}) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{}) // ends the greeters still waiting
	t.Cleanup(func() { ln.Close(); close(stop) })
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			if n >= len(greet) {
				continue
			}
			go func(n int, ready <-chan struct{}) {
				if ready != nil {
					select {
					case <-ready:
					case <-stop:
						return
					}
				}
				c.Write([]byte("220 connection " + string(rune('0'+n)) + "\r\n"))
			}(n, greet[n])
		}
	}()
	return ln
}

// greetingOf runs one session against the server at sln and returns the
// first line the client gets, the observer's counts and the log. The dials
// numbered in failDials (from 0) fail without connecting; onRedial, if not
// nil, is the observer's hook.
func greetingOf(t *testing.T, sln net.Listener, cfg Config, onRedial func(), failDials ...int) (string, *redialObserver, string) {
	t.Helper()
	srv, obs, logs := observedServer(cfg)
	obs.onRedial = onRedial
	var dials atomic.Int32
	srv.dial = func(s *session) (net.Conn, error) {
		if slices.Contains(failDials, int(dials.Add(1)-1)) {
			return nil, &dialError{ReasonUpstream, "cannot reach server", nil, "cannot reach the FTP server (test)"}
		}
		return net.Dial("tcp", sln.Addr().String())
	}
	return firstLine(t, srv), obs, logs.String()
}

// observedServer is a Server with cfg, a redialObserver and a text log.
func observedServer(cfg Config) (*Server, *redialObserver, *syncBuffer) {
	obs := &redialObserver{}
	logs := &syncBuffer{}
	cfg.Observer = obs
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	return NewServer(cfg, &fakeGate{}), obs, logs
}

// firstLine serves one client session with srv and returns the first line
// the client gets.
func firstLine(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer func() { ln.Close(); srv.Close() }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("client read: %v", err)
	}
	return strings.TrimSpace(line)
}

// The real reverse-mode dial: the server accepts the first connection, then
// stops listening (the second is refused) and greets on the first late. The
// session goes on, and the refused second connection is no refusal.
func TestGreetingSecondDialRefused(t *testing.T) {
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Events, not delays: the second dial comes after the listener closed,
	// and the greeting after the session decided to redial.
	closed, redialed, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	defer close(done)
	go func() {
		c, err := sln.Accept()
		sln.Close()
		close(closed)
		if err != nil {
			return
		}
		defer c.Close()
		select {
		case <-redialed:
		case <-done:
			return
		}
		c.Write([]byte("220 late\r\n"))
		<-done
	}()
	// DialTimeout only bounds a failure.
	srv, obs, logs := observedServer(Config{Mode: Reverse, Upstream: sln.Addr().String(),
		DialTimeout: 10 * time.Second, GreetingRedial: 100 * time.Millisecond})
	obs.onRedial = func() { close(redialed); <-closed }
	got := firstLine(t, srv)
	if got != "220 late" || obs.redials.Load() != 1 || obs.upstreamErrors.Load() != 0 {
		t.Errorf("client got %q after %d redials, %d upstream_error refusals; want \"220 late\" after 1, 0\n%s",
			got, obs.redials.Load(), obs.upstreamErrors.Load(), logs)
	}
	if !strings.Contains(logs.String(), "second connection to the FTP server failed") {
		t.Errorf("log does not say the second connection failed:\n%s", logs)
	}
}

// When a connection of TestGreetingRedial's server greets.
type greetWhen int

const (
	greetAtOnce      greetWhen = iota
	greetNever                 // until the test ends
	greetAfterRedial           // once the session has decided to redial: certainly late
)

func TestGreetingRedial(t *testing.T) {
	// Where a greeting comes, DialTimeout only bounds a failure; where none
	// does, the 421 names it.
	var (
		prompt = Config{DialTimeout: 10 * time.Second, GreetingRedial: 5 * time.Second}
		greets = Config{DialTimeout: 10 * time.Second, GreetingRedial: 100 * time.Millisecond}
		silent = Config{DialTimeout: time.Second, GreetingRedial: 100 * time.Millisecond}
	)
	tests := []struct {
		name      string
		cfg       Config
		greet     []greetWhen // of the connections the server accepts; none for the others
		failDials []int
		want      string
		redials   int32
		refusals  int32 // upstream_error
	}{
		{"prompt server: one connection", prompt, []greetWhen{greetAtOnce}, nil, "220 connection 0", 0, 0},
		{"first handshake lost: the second connection greets", greets, []greetWhen{greetNever, greetAtOnce}, nil, "220 connection 1", 1, 0},
		{"slow but live first connection keeps its session", greets, []greetWhen{greetAfterRedial, greetNever}, nil, "220 connection 0", 1, 0},
		{"second dial fails, the slow first greets: no refusal", greets, []greetWhen{greetAfterRedial}, []int{1}, "220 connection 0", 1, 0},
		{"first dial fails: refused once", silent, nil, []int{0}, "421 ftpgate: cannot reach the FTP server (test)", 0, 1},
		{"neither greets: 421", silent, nil, nil, "421 ftpgate: the FTP server sent no greeting within 1s", 1, 1},
		{"silent first, failed second: one refusal", silent, nil, []int{1}, "421 ftpgate: the FTP server sent no greeting within 1s", 1, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			redialed := make(chan struct{})
			var greet []<-chan struct{}
			for _, w := range tc.greet {
				switch w {
				case greetAtOnce:
					greet = append(greet, nil)
				case greetNever:
					greet = append(greet, make(chan struct{}))
				case greetAfterRedial:
					greet = append(greet, redialed)
				}
			}
			sln := greetingServer(t, greet...)
			got, obs, logs := greetingOf(t, sln, tc.cfg, func() { close(redialed) }, tc.failDials...)
			if got != tc.want || obs.redials.Load() != tc.redials || obs.upstreamErrors.Load() != tc.refusals {
				t.Errorf("client got %q after %d redials, %d upstream_error refusals; want %q after %d, %d\n%s",
					got, obs.redials.Load(), obs.upstreamErrors.Load(), tc.want, tc.redials, tc.refusals, logs)
			}
		})
	}
}

// A server that closes without a word is not waited for (no redial): the
// client hears that the server closed.
func TestGreetingServerClosesAtOnce(t *testing.T) {
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sln.Close()
	go func() {
		for {
			c, err := sln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	got, obs, _ := greetingOf(t, sln, Config{DialTimeout: 5 * time.Second, GreetingRedial: 2 * time.Second}, nil)
	if redials := obs.redials.Load(); !strings.HasPrefix(got, "421 ftpgate: the FTP server closed") || redials != 0 {
		t.Errorf("client got %q after %d redials; want the server-closed 421 and no redial", got, redials)
	}
}

// A shutdown while the server is being dialled is no upstream failure.
func TestDialCutShortByShutdown(t *testing.T) {
	srv, obs, logs := observedServer(Config{})
	dialling := make(chan struct{})
	srv.dial = func(s *session) (net.Conn, error) {
		close(dialling)
		<-s.ctx.Done()
		return nil, &dialError{ReasonUpstream, "cannot reach server", nil, "cannot reach the FTP server (test)"}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go srv.Serve(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-dialling
	srv.Close() // waits for the session's end
	if n := obs.upstreamErrors.Load(); n != 0 || !strings.Contains(logs.String(), "result=shutdown") {
		t.Fatalf("%d upstream_error refusals, log:\n%s\nwant none and result=shutdown", n, logs)
	}
}

// A reverse-mode upstream whose name resolves to loopback only cannot carry
// data connections from outside: refused with a reason, for remote clients.
func TestDialReverseLoopbackUpstream(t *testing.T) {
	for _, tc := range []struct {
		client string
		ok     bool
	}{
		{"10.77.1.2", false},
		{"127.0.0.1", true}, // a local client: DNAT to loopback works
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cfg := &Config{Mode: Reverse, Upstream: "localhost:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), DialTimeout: time.Second}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s := &session{cfg: cfg, ctx: ctx, clientAddr: netip.MustParseAddr(tc.client)}
		c, err := dialReverse(s)
		if c != nil {
			c.Close()
		}
		var de *dialError
		switch {
		case tc.ok && err != nil:
			t.Errorf("client %s: %v", tc.client, err)
		case !tc.ok && (!errors.As(err, &de) || !strings.Contains(de.msg, "loopback")):
			t.Errorf("client %s: dialReverse = %v, want a refusal naming loopback", tc.client, err)
		}
	}
}
