// Package proxybench measures ftpgate's protocol side in-process: whole FTP
// control sessions through proxy.Server (reverse mode, so that no tproxy is
// needed) over loopback TCP, against a scripted server, with an in-memory
// Gate. No root, no namespaces, no nftables: what remains is exactly the
// userspace cost of a session — the line codec, pairing, rewriting, the
// metrics observer and the logger — so `go test -cpuprofile` shows where it
// goes. Run:
//
//	go test -run '^$' -bench . -benchmem -cpuprofile /tmp/proxy.prof ./bench/proxybench
//	go tool pprof -top /tmp/proxy.prof
package proxybench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftpgate/ftpgate/metrics"
	"github.com/ftpgate/ftpgate/proxy"
)

// fakeGate opens pinholes in memory; they end on Close.
type fakeGate struct{ opened atomic.Int64 }

type fakePinhole struct {
	once sync.Once
	done chan struct{}
}

func (p *fakePinhole) Close() error          { p.once.Do(func() { close(p.done) }); return nil }
func (p *fakePinhole) Done() <-chan struct{} { return p.done }
func (g *fakeGate) Open(_ context.Context, _ proxy.Flow, _ time.Duration) (proxy.Pinhole, error) {
	g.opened.Add(1)
	return &fakePinhole{done: make(chan struct{})}, nil
}

// scriptServer answers like vsftpd would, without data connections.
func scriptServer(tb testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveScript(c)
		}
	}()
	return ln
}

func serveScript(c net.Conn) {
	defer c.Close()
	w := bufio.NewWriter(c)
	r := bufio.NewReader(c)
	say := func(s string) bool {
		w.WriteString(s)
		return w.Flush() == nil
	}
	if !say("220 (vsFTPd 3.0.3)\r\n") {
		return
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		var rep string
		switch strings.ToUpper(verb) {
		case "USER":
			rep = "331 Please specify the password.\r\n"
		case "PASS":
			rep = "230 Login successful.\r\n"
		case "TYPE":
			rep = "200 Switching to Binary mode.\r\n"
		case "PASV":
			rep = "227 Entering Passive Mode (127,0,0,1,156,65).\r\n"
		case "EPSV":
			rep = "229 Entering Extended Passive Mode (|||40001|)\r\n"
		case "PORT", "EPRT":
			rep = "200 PORT command successful. Consider using PASV.\r\n"
		case "RETR":
			rep = "150 Opening BINARY mode data connection for bench-4k.bin (4096 bytes).\r\n226 Transfer complete.\r\n"
		case "QUIT":
			say("221 Goodbye.\r\n")
			return
		default:
			rep = "500 Unknown command.\r\n"
		}
		if !say(rep) {
			return
		}
	}
}

// startProxy runs a reverse-mode proxy.Server in front of upstream.
func startProxy(tb testing.TB, upstream string, withMetrics bool) (string, *fakeGate) {
	cfg := proxy.Config{
		Mode:                 proxy.Reverse,
		Upstream:             upstream,
		MaxSessions:          1 << 16,
		MaxSessionsPerClient: 1 << 16,
		PassivePorts:         proxy.PortRange{Lo: 50000, Hi: 50999},
	}
	if withMetrics {
		// What the daemon runs with: metrics and a warn-level text logger.
		cfg.Observer = metrics.New(prometheus.NewRegistry(), metrics.Options{Mode: "reverse", Version: "bench"})
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	g := &fakeGate{}
	srv := proxy.NewServer(cfg, g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go srv.Serve(ln)
	tb.Cleanup(func() {
		ln.Close()
		srv.Close()
	})
	return ln.Addr().String(), g
}

var verbs = []string{"PASV", "EPSV", "PORT 127,0,0,1,200,10", "EPRT |1|127.0.0.1|51210|"}

// session runs one client session: login, one negotiation, RETR, QUIT.
func session(addr string, i int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	expect := func(code string) error {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("want %s: %w", code, err)
			}
			if len(line) >= 4 && line[3] == ' ' {
				if !strings.HasPrefix(line, code) {
					return fmt.Errorf("got %q, want %s", line, code)
				}
				return nil
			}
		}
	}
	cmd := func(line, code string) error {
		if _, err := io.WriteString(c, line+"\r\n"); err != nil {
			return err
		}
		return expect(code)
	}
	if err := expect("220"); err != nil {
		return err
	}
	neg := verbs[i%len(verbs)]
	negCode := map[byte]string{'P': "2", 'E': "2"}[neg[0]]
	for _, s := range []struct{ line, code string }{
		{"USER anonymous", "331"}, {"PASS bench@", "230"}, {"TYPE I", "200"},
		{neg, negCode}, {"RETR bench-4k.bin", "150"},
	} {
		if err := cmd(s.line, s.code); err != nil {
			return fmt.Errorf("%s: %w", s.line, err)
		}
	}
	if err := expect("226"); err != nil {
		return err
	}
	return cmd("QUIT", "221")
}

func benchSessions(b *testing.B, withMetrics bool, parallel bool) {
	up := scriptServer(b)
	addr, g := startProxy(b, up.Addr().String(), withMetrics)
	b.ReportAllocs()
	start := time.Now()
	var n atomic.Int64
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := int(n.Add(1))
				if err := session(addr, i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	} else {
		for b.Loop() {
			i := int(n.Add(1))
			if err := session(addr, i); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "sessions/s")
	if g.opened.Load() != n.Load() {
		b.Errorf("%d pinholes for %d sessions", g.opened.Load(), n.Load())
	}
}

// BenchmarkSession: sessions one after another (latency-bound).
func BenchmarkSession(b *testing.B) { benchSessions(b, true, false) }

// BenchmarkSessionParallel: GOMAXPROCS clients at once (CPU-bound).
func BenchmarkSessionParallel(b *testing.B) { benchSessions(b, true, true) }

// BenchmarkSessionBare: no metrics observer, discarding logger — the cost of
// the instrumentation is the difference to BenchmarkSession.
func BenchmarkSessionBare(b *testing.B) { benchSessions(b, false, false) }

// BenchmarkDirect is the client and scripted server without ftpgate: the
// floor of the three benchmarks above.
func BenchmarkDirect(b *testing.B) {
	up := scriptServer(b)
	addr := up.Addr().String()
	b.ReportAllocs()
	start := time.Now()
	n := 0
	for b.Loop() {
		n++
		if err := session(addr, n); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "sessions/s")
}

// idleServer greets and holds connections until they close.
func idleServer(tb testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("220 idle\r\n"))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln
}

// BenchmarkIdleSessionMemory opens idleSessions control sessions through the
// proxy and reports what each costs in heap and goroutine stacks while idle
// (the daemon-level figure, RSS per session, is TestBenchCompare's). Set
// FTPGATE_BENCH_HEAPPROFILE=FILE for an inuse heap profile taken while they
// are open.
func BenchmarkIdleSessionMemory(b *testing.B) {
	const idleSessions = 1000
	up := idleServer(b)
	addr, _ := startProxy(b, up.Addr().String(), true)
	var heap, stack float64
	for b.Loop() {
		// This process holds all three ends: measure the proxy's share by
		// subtracting a run of the same connections without the proxy.
		direct := openIdle(b, up.Addr().String(), idleSessions)
		h0, s0 := memNow()
		closeAll(direct)
		base := idleSessions
		conns := openIdle(b, addr, idleSessions)
		h2, s2 := memNow()
		if p := os.Getenv("FTPGATE_BENCH_HEAPPROFILE"); p != "" {
			if !filepath.IsAbs(p) {
				p = filepath.Join("..", "..", p) // relative to the repository, not to this package
			}
			if f, err := os.Create(p); err == nil {
				pprof.WriteHeapProfile(f)
				f.Close()
			}
		}
		closeAll(conns)
		// Direct, this process holds the client and server ends (h0);
		// through the proxy the same ends plus the proxy's sessions (h2).
		heap = (float64(h2) - float64(h0)) / float64(base)
		stack = (float64(s2) - float64(s0)) / float64(base)
	}
	b.ReportMetric(heap, "heap-B/session")
	b.ReportMetric(stack, "stack-B/session")
}

func memNow() (heapInuse, stackInuse uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, m.StackInuse
}

func openIdle(b *testing.B, addr string, n int) []net.Conn {
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		line, err := bufio.NewReaderSize(c, 64).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "220") {
			b.Fatalf("greeting %q: %v", line, err)
		}
		conns = append(conns, c)
	}
	// Let every goroutine reach its idle read.
	time.Sleep(200 * time.Millisecond)
	return conns
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
	time.Sleep(200 * time.Millisecond)
}
