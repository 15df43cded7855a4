package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The benchmark's setup (e) is the least any userspace control-channel relay
// does: accept, dial the server, copy bytes both ways, one wakeup per segment
// — no parsing, no policy, no firewall work. Its CPU and context switches per
// session are the floor that ftpgate's are read against: what a relay that
// reads each line costs on the machine, whoever wrote it. It is this test
// binary run again with plainRelayEnv set (TestMain), so that /proc measures
// it as a process of its own, like the ftpgate daemon.
const plainRelayEnv = "FTPGATE_E2E_PLAIN_RELAY" // "listen,upstream"

// plainRelayMain runs the relay until SIGTERM; it returns the exit code.
func plainRelayMain(spec string) int {
	listen, upstream, ok := strings.Cut(spec, ",")
	if !ok {
		fmt.Fprintf(os.Stderr, "plain relay: %s=%q: want listen,upstream\n", plainRelayEnv, spec)
		return 2
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "plain relay:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	fmt.Fprintf(os.Stderr, "plain relay: %s -> %s\n", listen, upstream)
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return 0
			}
			fmt.Fprintln(os.Stderr, "plain relay: accept:", err)
			time.Sleep(10 * time.Millisecond) // e.g. out of descriptors: do not spin
			continue
		}
		go relaySession(c.(*net.TCPConn), upstream)
	}
}

func relaySession(client *net.TCPConn, upstream string) {
	defer client.Close()
	u, err := net.DialTimeout("tcp", upstream, 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "plain relay: dial:", err)
		return
	}
	server := u.(*net.TCPConn)
	defer server.Close()
	done := make(chan struct{})
	go func() {
		relayCopy(server, client)
		close(done)
	}()
	relayCopy(client, server)
	<-done
}

// relayCopy copies src to dst with read and write on a small buffer, as a
// line relay would (io.Copy would splice through a pipe: more system calls
// per short segment), then passes the end of the stream on.
func relayCopy(dst, src *net.TCPConn) {
	buf := make([]byte, 4096)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close() // the other direction's reader ends too
				return
			}
		}
		if err != nil {
			dst.CloseWrite()
			return
		}
	}
}

// startPlainRelay starts the relay in the gateway namespace, listening on the
// gateway's client-side address and relaying to vsftpd, with the scheduling
// ftpgate gets in the benchmark (nice, real-time priority, one P, the
// sysmon-poll GODEBUG), and waits for vsftpd's greeting through it.
func (b *benchRun) startPlainRelay(l *Lab) *Daemon {
	t := b.t
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	procs := "1" // as ftpgate's default --procs 1
	if v := os.Getenv("FTPGATE_BENCH_GOMAXPROCS"); v != "" {
		procs = v
	}
	listen := netip.AddrPortFrom(l.GwClientIP4, 21).String()
	env := []string{plainRelayEnv + "=" + listen + "," + netip.AddrPortFrom(l.ServerIP4, 21).String(), "GOMAXPROCS=" + procs}
	if b.cfg.SysmonPoll {
		env = append(env, "GODEBUG=schedtrace=2147483647") // what --sysmon-poll re-executes ftpgate with
	}
	args := append([]string{}, env...)
	if b.cfg.RTPriority > 0 {
		args = append(args, "chrt", "--rr", strconv.Itoa(b.cfg.RTPriority))
	}
	args = append(args, "nice", "-n", strconv.Itoa(b.cfg.Nice), exe)
	d := l.Gateway.StartDaemon(t, filepath.Join(l.Dir, "plain-relay.log"), "env", args...)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err = l.Gateway.WaitTCP(ctx, d, listen, func(c net.Conn) error {
		buf := make([]byte, 4)
		if _, err := c.Read(buf); err != nil {
			return err
		}
		if string(buf[:3]) != "220" {
			return fmt.Errorf("greeting %q", buf)
		}
		return nil
	})
	if err != nil {
		log, _ := os.ReadFile(d.Log)
		t.Fatalf("plain relay not ready: %v\n%s", err, log)
	}
	return d
}

// plainRelayRuleset lets the relay's sessions use every data mode without a
// firewall in the way: EPSV's 229 names only a port, which the client dials
// on the address it reached — the gateway — so the gateway sends every port
// but 21 of that address on to the server. PASV's 227 names the server, and
// active-mode connections come from it: both are routed as in setup (a).
func plainRelayRuleset(l *Lab) string {
	return fmt.Sprintf(`table ip plainrelay
delete table ip plainrelay
table ip plainrelay {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport != 21 dnat to %s
	}
}
`, l.GwClientIP4, l.ServerIP4)
}

// plainRelayVsftpd: vsftpd sees the relay's address on the control
// connection, the client's on data connections; by default it refuses both
// kinds of mismatch (a bounce-attack guard the relay does not provide). With
// port_promiscuous, binding active-mode connections to port 20 fails ("500
// OOPS: vsf_sysutil_bind"), so they come from an ephemeral port here.
var plainRelayVsftpd = []string{"pasv_promiscuous=YES", "port_promiscuous=YES", "connect_from_port_20=NO"}

// TestPlainRelayArgs: the relay refuses a malformed spec instead of
// listening somewhere unexpected.
func TestPlainRelayArgs(t *testing.T) {
	if code := plainRelayMain("127.0.0.1:0"); code != 2 {
		t.Fatalf("spec without upstream: exit %d, want 2", code)
	}
}
