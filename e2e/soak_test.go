package e2e

// The soak test: many sessions, many at once, every mode and family, each
// file checked; at the end nothing may be left open or leaking in ftpgate.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// miniFTP is a minimal in-process FTP client for load: one session, one
// download, in any of the four modes, from the lab's client namespace.
func miniFTP(ctx context.Context, ns *NS, clientIP, server netip.Addr, file string, mode Mode) ([]byte, error) {
	c, err := ns.DialContext(ctx, "tcp", netip.AddrPortFrom(server, 21).String())
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	r := bufio.NewReader(c)
	reply := func() (string, error) {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return "", err
			}
			if len(line) >= 4 && line[3] == ' ' {
				return strings.TrimRight(line, "\r\n"), nil
			}
		}
	}
	cmd := func(line, want string) (string, error) {
		if line != "" {
			if _, err := c.Write([]byte(line + "\r\n")); err != nil {
				return "", err
			}
		}
		rep, err := reply()
		if err != nil {
			if line == "" {
				return "", fmt.Errorf("awaiting %s: %w", want, err)
			}
			return "", fmt.Errorf("%s: %w", line, err)
		}
		if !strings.HasPrefix(rep, want) {
			return rep, fmt.Errorf("%s: got %q, want %s", line, rep, want)
		}
		return rep, nil
	}
	if _, err := cmd("", "220"); err != nil {
		return nil, err
	}
	if rep, err := cmd("USER anonymous", ""); err != nil {
		return nil, err
	} else if strings.HasPrefix(rep, "331") {
		if _, err := cmd("PASS soak@", "230"); err != nil {
			return nil, err
		}
	}
	if _, err := cmd("TYPE I", "200"); err != nil {
		return nil, err
	}
	var data net.Conn
	var ln net.Listener
	switch mode {
	case ModePASV, ModeEPSV:
		verb, code := "PASV", "227"
		if mode == ModeEPSV {
			verb, code = "EPSV", "229"
		}
		rep, err := cmd(verb, code)
		if err != nil {
			return nil, err
		}
		var ap netip.AddrPort
		if mode == ModePASV {
			m := re227.FindStringSubmatch(rep)
			if m == nil {
				return nil, fmt.Errorf("bad 227 %q", rep)
			}
			var b [6]byte
			for i := range b {
				n, _ := strconv.Atoi(m[i+1])
				b[i] = byte(n)
			}
			ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(b[4])<<8|uint16(b[5]))
		} else {
			_, after, _ := strings.Cut(rep, "(|||")
			p, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(after, ")"), "|"))
			if err != nil {
				return nil, fmt.Errorf("bad 229 %q", rep)
			}
			ap = netip.AddrPortFrom(server, uint16(p))
		}
		if data, err = ns.DialContext(ctx, "tcp", ap.String()); err != nil {
			return nil, fmt.Errorf("data connect %s: %w", ap, err)
		}
	default:
		err := ns.Do(func() error {
			var err error
			ln, err = net.Listen("tcp", netip.AddrPortFrom(clientIP, 0).String())
			return err
		})
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		local := addrPort(ln.Addr())
		var line string
		if mode == ModeEPRT {
			fam := 1
			if clientIP.Is6() {
				fam = 2
			}
			line = fmt.Sprintf("EPRT |%d|%s|%d|", fam, clientIP, local.Port())
		} else {
			line = "PORT " + portArg(clientIP, int(local.Port()))
		}
		if _, err := cmd(line, "200"); err != nil {
			return nil, err
		}
	}
	if _, err := cmd("RETR "+file, "150"); err != nil {
		if data != nil {
			data.Close()
		}
		return nil, err
	}
	if ln != nil {
		ln.(*net.TCPListener).SetDeadline(deadline)
		if data, err = ln.Accept(); err != nil {
			return nil, fmt.Errorf("data accept: %w", err)
		}
	}
	data.SetDeadline(deadline)
	got, err := io.ReadAll(data)
	data.Close()
	if err != nil {
		return nil, fmt.Errorf("data read: %w", err)
	}
	if _, err := cmd("", "226"); err != nil {
		return nil, err
	}
	cmd("QUIT", "221")
	return got, nil
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func openFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

func TestSoak(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	sessions, concurrency := 10000, 64
	if testing.Short() {
		sessions = 400
	}
	if v, err := strconv.Atoi(os.Getenv("FTPGATE_SOAK_SESSIONS")); err == nil && v > 0 {
		sessions = v
	}
	// Info level: a failure shows the sessions that did not end well.
	l, srv, g := newGatewayLab(t, "--max-sessions-per-client", "256", "--log-level", "info")
	payload := make([]byte, 64<<10)
	rand.Read(payload)
	name := "soak.bin"
	if err := os.WriteFile(filepath.Join(srv.Root, name), payload, 0o644); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(payload)
	type combo struct {
		mode Mode
		fam  int
	}
	combos := []combo{{ModePASV, 4}, {ModeEPSV, 4}, {ModePORT, 4}, {ModeEPRT, 4}, {ModeEPSV, 6}, {ModeEPRT, 6}}

	pid := g.Cmd.Process.Pid
	fdsBefore := openFDs(pid)
	goroutinesBefore := g.Metric(t, "go_goroutines")

	var next, failed, done atomic.Int64
	var firstErr sync.Once
	var errMsg string
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(sessions) || ctx.Err() != nil {
					return
				}
				c := combos[i%int64(len(combos))]
				// vsftpd's listen backlog is 32: with 64 clients a burst drops
				// SYNs, which the connecting side's retransmits (1, 3, 7, 15,
				// 31 s) recover from. Slow, not lost.
				sctx, scancel := context.WithTimeout(ctx, 90*time.Second)
				got, err := miniFTP(sctx, l.Client, l.ClientIP(c.fam), l.ServerIP(c.fam), name, c.mode)
				scancel()
				if err == nil && sha256.Sum256(got) != want {
					err = errors.New("content differs")
				}
				if err != nil {
					failed.Add(1)
					firstErr.Do(func() { errMsg = fmt.Sprintf("session %d (%s ipv%d): %v", i, c.mode, c.fam, err) })
				}
				if n := done.Add(1); n%1000 == 0 {
					t.Logf("soak: %d/%d sessions, %d failed, %.0f sessions/s", n, sessions, failed.Load(), float64(n)/time.Since(start).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	// vsftpd's backlog can also drop a handshake's last ACK; the server,
	// speaking first, then never greets, and ftpgate races a second
	// connection (see proxy.dialGreeted). Counted, not a failure.
	t.Logf("soak: %d sessions at %d concurrent in %v, %d failed, %v upstream greeting redials",
		done.Load(), concurrency, time.Since(start).Round(time.Second), failed.Load(), g.Metric(t, "ftpgate_upstream_greeting_redials_total"))
	if failed.Load() != 0 || done.Load() != int64(sessions) {
		t.Fatalf("%d of %d sessions failed (done %d); first: %s\nftpgate's lines other than sessions that ended well:\n%s",
			failed.Load(), sessions, done.Load(), errMsg, tailString(notOK(g.LogText()), 8000))
	}

	// Nothing left: openings, goroutines, descriptors.
	if !waitFor(10*time.Second, func() bool { return l.OpenElements(t) == "" }) {
		t.Errorf("openings left: %s", l.OpenElements(t))
	}
	if !waitFor(10*time.Second, func() bool { return g.Metric(t, `ftpgate_sessions_active{mode="transparent"}`) == 0 }) {
		t.Errorf("sessions still active: %v", g.Metric(t, `ftpgate_sessions_active{mode="transparent"}`))
	}
	if !waitFor(10*time.Second, func() bool { return g.Metric(t, "go_goroutines") <= goroutinesBefore+2 }) {
		t.Errorf("goroutines: %v before, %v after", goroutinesBefore, g.Metric(t, "go_goroutines"))
	}
	if !waitFor(10*time.Second, func() bool { return openFDs(pid) <= fdsBefore+2 }) {
		t.Errorf("file descriptors: %d before, %d after", fdsBefore, openFDs(pid))
	}
	if v := g.Metric(t, `ftpgate_refusals_total{reason="firewall_error"}`); v != 0 {
		t.Errorf("firewall errors: %v", v)
	}
}

// notOK keeps the log lines other than "session start" lines and "session
// end" lines of sessions that ended well within a minute.
func notOK(log string) string {
	var b strings.Builder
	for _, line := range strings.Split(log, "\n") {
		if line == "" || strings.Contains(line, "session start") ||
			strings.Contains(line, "session end") && strings.Contains(line, "result=ok") && !slowSession(line) {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// slowSession reports whether a "session end" line has a duration of a
// minute or more.
func slowSession(line string) bool {
	_, after, ok := strings.Cut(line, " duration=")
	if !ok {
		return false
	}
	v, _, _ := strings.Cut(after, " ")
	d, err := time.ParseDuration(v)
	return err == nil && d >= time.Minute
}
