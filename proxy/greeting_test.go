package proxy

import (
	"bufio"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// redialObserver counts UpstreamRedial.
type redialObserver struct {
	nopObserver
	redials atomic.Int32
}

func (o *redialObserver) UpstreamRedial() { o.redials.Add(1) }

// greetingServer accepts connections and greets the n-th (from 0) after
// delays[n]; a negative delay, or no entry, means never.
func greetingServer(t *testing.T, delays ...time.Duration) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			if n >= len(delays) || delays[n] < 0 {
				continue
			}
			go func(n int, d time.Duration) {
				time.Sleep(d)
				c.Write([]byte("220 connection " + string(rune('0'+n)) + "\r\n"))
			}(n, delays[n])
		}
	}()
	return ln
}

// greetingOf runs one session against the server at sln and returns the
// first line the client gets and the number of redials.
func greetingOf(t *testing.T, sln net.Listener, cfg Config) (string, int32, string) {
	t.Helper()
	obs := &redialObserver{}
	logs := &syncBuffer{}
	cfg.Observer = obs
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	srv := NewServer(cfg, &fakeGate{})
	srv.dial = func(s *session) (net.Conn, error) { return net.Dial("tcp", sln.Addr().String()) }
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
	return strings.TrimSpace(line), obs.redials.Load(), logs.String()
}

func TestGreetingRedial(t *testing.T) {
	tests := []struct {
		name    string
		delays  []time.Duration
		want    string
		redials int32
	}{
		{"prompt server: one connection", []time.Duration{0}, "220 connection 0", 0},
		{"first handshake lost: the second connection greets", []time.Duration{-1, 0}, "220 connection 1", 1},
		{"slow but live first connection keeps its session", []time.Duration{400 * time.Millisecond, -1}, "220 connection 0", 1},
		{"neither greets: 421", nil, "421 ftpgate: the FTP server sent no greeting within 1s", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sln := greetingServer(t, tc.delays...)
			got, redials, logs := greetingOf(t, sln, Config{DialTimeout: time.Second, GreetingRedial: 100 * time.Millisecond})
			if got != tc.want || redials != tc.redials {
				t.Errorf("client got %q after %d redials; want %q after %d\n%s", got, redials, tc.want, tc.redials, logs)
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
	got, redials, _ := greetingOf(t, sln, Config{DialTimeout: 5 * time.Second, GreetingRedial: 2 * time.Second})
	if !strings.HasPrefix(got, "421 ftpgate: the FTP server closed") || redials != 0 {
		t.Errorf("client got %q after %d redials; want the server-closed 421 and no redial", got, redials)
	}
}
