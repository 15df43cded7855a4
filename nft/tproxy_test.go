package nft

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// transparent sets IP_TRANSPARENT / IPV6_TRANSPARENT before bind.
func transparent(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// transparentListener listens on addr inside ns as ftpgate's listener does
// (IP_TRANSPARENT); it is closed when the test ends.
func transparentListener(t *testing.T, ns *testNS, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	ns.do(t, func() {
		var err error
		lc := net.ListenConfig{Control: transparent}
		if ln, err = lc.Listen(context.Background(), "tcp", addr); err != nil {
			t.Fatalf("transparent listen %s: %v", addr, err)
		}
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestTransparentInterception routes cli -> gw -> srv. The Firewall in gw
// diverts cli's connection to srv:21 to a transparent listener in gw, and a
// transparent upstream socket bound to cli's address reaches srv, whose
// replies come back to gw through the socket-transparent rule and the fwmark
// policy routing.
func TestTransparentInterception(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name          string
		v6            bool
		cli, srv, lst string
	}{
		{"ipv4", false, "10.77.2.1", "10.77.3.2", "127.0.0.1:2121"},
		{"ipv6", true, "fd77:2::1", "fd77:3::2", "[::1]:2121"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			cli, gw, srv := routedLab(t)
			newFirewall(t, gw, Config{Intercept: true})

			srvAddr := net.JoinHostPort(tc.srv, "21")
			echoServer(t, srv, srvAddr)

			// The proxy's transparent listener in gw.
			ln := transparentListener(t, gw, tc.lst)
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					accepted <- c
				}
				close(accepted)
			}()

			c, err := dial(t, cli, srvAddr)
			if err != nil {
				t.Fatalf("client connect to %s: %v", srvAddr, err)
			}
			defer c.Close()
			var down net.Conn
			select {
			case down = <-accepted:
			case <-time.After(10 * time.Second):
				t.Fatal("the connection was not diverted to the transparent listener")
			}
			if down == nil {
				t.Fatal("accept failed")
			}
			defer down.Close()
			if got := down.LocalAddr().String(); got != srvAddr {
				t.Errorf("diverted connection's local address %s, want the original destination %s", got, srvAddr)
			}
			ct := gw.exec(t, "conntrack", "-L", "-f", map[bool]string{false: "ipv4", true: "ipv6"}[tc.v6], "-p", "tcp", "--dport", "21")
			if !regexp.MustCompile(`(?m)^tcp .*dport=21 .*mark=256 `).MatchString(ct) {
				t.Errorf("intercepted control connection lacks ct mark 0x100:\n%s", ct)
			}

			// Upstream: dial srv from the client's own address.
			var up net.Conn
			gw.do(t, func() {
				d := net.Dialer{
					Timeout:   5 * time.Second,
					Control:   transparent,
					LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(tc.cli), 0)),
				}
				up, err = d.Dial("tcp", srvAddr)
			})
			if err != nil {
				t.Fatalf("transparent upstream connection from %s to %s: %v", tc.cli, srvAddr, err)
			}
			defer up.Close()
			msg := fmt.Sprintf("hello from %s", tc.cli)
			if _, err := up.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, len(msg))
			_ = up.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(up, buf); err != nil || string(buf) != msg {
				t.Fatalf("echo over the transparent upstream (return traffic): %q, %v", buf, err)
			}
		})
	}
}

// TestGatewayOwnServerNotIntercepted: a connection to an FTP port of the
// gateway's own address reaches the gateway's own server, not ftpgate's
// listener (proxied, the local server's replies would bypass ftpgate).
func TestGatewayOwnServerNotIntercepted(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct{ name, gwAddr, lst string }{
		{"ipv4", "10.77.2.2", "127.0.0.1:2121"},
		{"ipv6", "fd77:2::2", "[::1]:2121"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			cli, gw, _ := routedLab(t)
			newFirewall(t, gw, Config{Intercept: true})
			own := net.JoinHostPort(tc.gwAddr, "21")
			echoServer(t, gw, own)
			ln := transparentListener(t, gw, tc.lst)
			diverted := make(chan struct{})
			go func() {
				if c, err := ln.Accept(); err == nil {
					c.Close()
					close(diverted)
				}
			}()

			c, err := dial(t, cli, own)
			if err != nil {
				t.Fatalf("client connect to the gateway's own %s: %v", own, err)
			}
			defer c.Close()
			if err := echoed(c, "to the gateway itself", 5*time.Second); err != nil {
				t.Fatalf("echo from the gateway's own server: %v", err)
			}
			select {
			case <-diverted:
				t.Fatal("a connection to the gateway's own address was diverted to ftpgate's listener")
			default:
			}
		})
	}
}
