package e2e

// Faults: an unreachable or silent upstream, draining on SIGTERM, reloading
// on SIGHUP, and a restart under load.

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestUpstreamUnreachable(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l := NewLab(t)
	l.HostFirewall(t, true)
	g := l.StartFtpgate(t, "--upstream-connect-timeout", "1s")

	// Nothing listens on the server: the connection is refused.
	c := rawControl(t, l, l.ServerIP4, "421")
	t.Logf("refused upstream: %q", "421")
	c.c.Close()

	// The server drops SYNs: the connect times out.
	l.Server.Run(t, "nft", "add table inet blackhole; add chain inet blackhole in { type filter hook input priority 0; tcp dport 21 drop; }")
	c = rawControl(t, l, l.ServerIP6, "421")
	if v := g.Metric(t, `ftpgate_refusals_total{reason="upstream_error"}`); v != 2 {
		t.Errorf("upstream errors counted %v, want 2", v)
	}
}

func TestDrainOnSIGTERMAndReloadOnSIGHUP(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l := NewLab(t)
	l.HostFirewall(t, true)
	l.StartVsftpd(t)
	conf := filepath.Join(l.Dir, "ftpgate.yaml")
	// sysmon-poll: the daemon executes itself again at start; signals,
	// reloads and the drain must work on the new image.
	if err := os.WriteFile(conf, []byte("pinhole-timeout: 20s\nsysmon-poll: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The grace outlasts the probe below: open sessions must still be
	// draining while a new client is turned away.
	g := l.StartFtpgate(t, "--config", conf, "--shutdown-grace", "6s")
	if !waitFor(5*time.Second, func() bool { return strings.Contains(g.LogText(), "sysmon_poll=true") }) {
		t.Errorf("--sysmon-poll (config file) did not take effect:\n%s", g.LogText())
	}

	old := dialControl(t, l, l.ServerIP4)

	// Reload: new sessions are read-only, the running one keeps its policy.
	if err := os.WriteFile(conf, []byte("pinhole-timeout: 20s\nsysmon-poll: true\ndeny-commands: [STOR, DELE]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g.Signal(syscall.SIGHUP)
	if !waitFor(5*time.Second, func() bool { return strings.Contains(g.LogText(), "configuration reloaded") }) {
		t.Fatalf("no reload logged:\n%s", g.LogText())
	}
	fresh := dialControl(t, l, l.ServerIP4)
	fresh.cmd("DELE x", "550")
	if reply := old.cmd("DELE x", ""); strings.HasPrefix(reply, "550 ftpgate") {
		t.Errorf("the running session lost its policy on reload: %q", reply)
	}

	// A broken config is refused and the running one kept.
	os.WriteFile(conf, []byte("pinhole-timeout: soon\n"), 0o644)
	g.Signal(syscall.SIGHUP)
	if !waitFor(5*time.Second, func() bool { return strings.Contains(g.LogText(), "reload failed") }) {
		t.Errorf("a broken config was not reported:\n%s", g.LogText())
	}

	// Drain: SIGTERM turns new clients away with a 421 at once (the
	// listeners stay open to say so; closed, the tproxy rule would swallow
	// the SYN and the client would wait), open sessions go on for the grace.
	g.Signal(syscall.SIGTERM)
	if !waitFor(10*time.Second, func() bool { return strings.Contains(g.LogText(), "shutting down: new clients get a 421") }) {
		t.Fatalf("no drain after SIGTERM:\n%s", g.LogText())
	}
	old.cmd("NOOP", "200")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.Client.DialContext(ctx, "tcp", l.ServerIP4.String()+":21")
	if err != nil {
		t.Fatalf("a new client during the drain: %v, want a 421", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if !strings.HasPrefix(line, "421 ") || !strings.Contains(line, "shutting down") {
		t.Errorf("a new client during the drain got %q, want 421 shutting down", line)
	}
	if v := g.Metric(t, `ftpgate_refusals_total{reason="shutting_down"}`); v != 1 {
		t.Errorf("shutting_down refusals %v, want 1", v)
	}
	old.cmd("NOOP", "200") // still draining
	select {
	case <-g.Exited:
	case <-time.After(20 * time.Second):
		t.Fatal("ftpgate did not exit after the grace period")
	}
	old.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := old.r.ReadString('\n'); err == nil {
		t.Error("session still open after ftpgate exited")
	}
	if l.hasFtpgateTable(t) {
		t.Error("table left after the drain")
	}
}

func TestRestartUnderLoad(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l, srv, g := newGatewayLab(t, "--shutdown-grace", "1s")
	want := srv.Files[SmallFile]
	var ok, bad atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				got, err := miniFTP(ctx, l.Client, l.ClientIP4, l.ServerIP4, SmallFile, Modes[(w+i)%len(Modes)])
				cancel()
				if err == nil && bytes.Equal(got, want) {
					ok.Add(1)
				} else {
					bad.Add(1)
					time.Sleep(20 * time.Millisecond) // as a client would back off: draining, a 421 comes at once
				}
			}
		}()
	}
	time.Sleep(time.Second)
	if err := g.Stop(5 * time.Second); err != nil {
		t.Logf("stop: %v", err)
	}
	g = l.StartFtpgate(t, "--shutdown-grace", "1s")
	// Served at once: the first session after the restart works.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	got, err := miniFTP(ctx, l.Client, l.ClientIP4, l.ServerIP4, SmallFile, ModePASV)
	cancel()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("first session after the restart: %v\n%s", err, g.LogText())
	}
	// Wait for a worker's success rather than a fixed time: a worker whose
	// session slipped past both gateways is stuck until its 10s timeout.
	before := ok.Load()
	if !waitFor(30*time.Second, func() bool { return ok.Load() > before }) {
		t.Errorf("no successful transfers after the restart (ok %d, failed %d)", ok.Load(), bad.Load())
	}
	close(stop)
	wg.Wait()
	t.Logf("transfers: %d ok, %d failed around the restart", ok.Load(), bad.Load())
}

// vsftpd ends an idle session with "421 Timeout." of its own accord (no
// command pending): the client must get that reply, once, and nothing may
// count it as a hostile server's unsolicited reply.
func TestServerIdleTimeout421(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	l, srv, g := newGatewayLab(t)
	// vsftpd's idle timer runs during the login too: 3s leaves it room.
	RestartVsftpd(t, l, srv, "idle_session_timeout=3")

	c := dialControl(t, l, l.ServerIP4)
	c.expect("421") // after 3s of silence
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(c.r); len(rest) > 0 {
		t.Errorf("after the server's 421 the client got %q (%v), want the end of the connection", rest, err)
	}
	if v := g.Metric(t, `ftpgate_refusals_total{reason="unsolicited_reply"}`); v != 0 {
		t.Errorf("refusals{unsolicited_reply} = %v, want 0: a 421 announcing the end is no hostile reply\n%s", v, tailString(g.LogText(), 2000))
	}
}
