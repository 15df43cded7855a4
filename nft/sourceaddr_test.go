package nft

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestSourceAddress: in natLab the gateway masquerades connections to the
// server's port 21 (a host table of the test namespace). SourceAddress on
// the gateway reports the gateway's outside address for them, the client's
// own address for a connection that is not NAT'ed, and an error for none.
// "transparent" dials from the gateway itself with the client's address,
// as the proxy's upstream does in transparent mode.
func TestSourceAddress(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name, cli, gwOut, srv string
	}{
		{"ipv4", "10.77.1.2", "10.77.2.1", "10.77.2.2"},
		{"ipv6", "fd77:1::2", "fd77:2::1", "fd77:2::2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			cli, gw, srv := natLab(t)
			gw.nft(t, `table inet hostnat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "fgin" tcp dport 21 masquerade
	}
}`)
			// Interception (for the transparent upstream's return traffic)
			// of another port: nothing listens for diverted connections.
			fw := newFirewall(t, gw, Config{Intercept: true, InterceptPorts: []uint16{990}})
			cliAddr, gwOut := netip.MustParseAddr(tc.cli), netip.MustParseAddr(tc.gwOut)
			masq, plain := ap(tc.srv, 21), ap(tc.srv, 2100)
			accepted21 := acceptor(t, srv, masq.String())
			accepted2100 := acceptor(t, srv, plain.String())

			check := func(c net.Conn, accepted <-chan net.Conn, want netip.Addr) {
				t.Helper()
				defer c.Close()
				select {
				case s := <-accepted:
					if got := addrPortOf(s.RemoteAddr()).Addr(); got != want {
						t.Errorf("server sees %s, want %s", got, want)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("server did not accept")
				}
				echo(t, c)
				got, err := fw.SourceAddress(addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr()))
				if err != nil || got != want {
					t.Errorf("SourceAddress(%s, %s) = %v, %v; want %s", c.LocalAddr(), c.RemoteAddr(), got, err, want)
				}
			}

			// Forwarded connections from the client.
			c, err := dialFrom(t, cli, cliAddr, masq)
			if err != nil {
				t.Fatal(err)
			}
			check(c, accepted21, gwOut)
			c, err = dialFrom(t, cli, cliAddr, plain)
			if err != nil {
				t.Fatal(err)
			}
			check(c, accepted2100, cliAddr)

			// The proxy's transparent upstream: from the client's address,
			// inside the gateway.
			gw.do(t, func() {
				d := net.Dialer{Timeout: 5 * time.Second, Control: transparent,
					LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(cliAddr, 0))}
				c, err = d.DialContext(context.Background(), "tcp", masq.String())
			})
			if err != nil {
				t.Fatalf("transparent upstream: %v", err)
			}
			check(c, accepted21, gwOut)

			// IPv4-mapped forms are accepted.
			if tc.name == "ipv4" {
				c, err = dialFrom(t, cli, cliAddr, masq)
				if err != nil {
					t.Fatal(err)
				}
				l, r := addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
				l = netip.AddrPortFrom(netip.AddrFrom16(l.Addr().As16()), l.Port())
				if got, err := fw.SourceAddress(l, r); err != nil || got != gwOut {
					t.Errorf("SourceAddress(%s, %s) = %v, %v; want %s", l, r, got, err, gwOut)
				}
				check(c, accepted21, gwOut)
			}

			// No such connection.
			_, err = fw.SourceAddress(netip.AddrPortFrom(cliAddr, 1), masq)
			if err == nil || !strings.Contains(err.Error(), "no conntrack entry") {
				t.Errorf("SourceAddress of no connection: %v, want a no-entry error", err)
			}
			if _, err := fw.SourceAddress(netip.AddrPortFrom(cliAddr, 1000), netip.MustParseAddrPort("[fd00::1]:21")); err == nil {
				t.Error("SourceAddress across families succeeded")
			}

			if err := fw.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := fw.SourceAddress(netip.AddrPortFrom(cliAddr, 1), masq); err != ErrClosed {
				t.Errorf("SourceAddress after Close = %v, want ErrClosed", err)
			}
		})
	}
}
