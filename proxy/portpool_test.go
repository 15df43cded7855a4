package proxy

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in   string
		want PortRange
		ok   bool
	}{
		{"50000-50099", PortRange{50000, 50099}, true},
		{" 2121 ", PortRange{2121, 2121}, true},
		{"50099-50000", PortRange{}, false},
		{"0-10", PortRange{}, false},
		{"1-65536", PortRange{}, false},
		{"a-b", PortRange{}, false},
		{"", PortRange{}, false},
	}
	for _, tc := range tests {
		got, err := ParsePortRange(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestPortPool(t *testing.T) {
	a := netip.MustParseAddr("10.77.0.1")
	b := netip.MustParseAddr("10.77.0.2")
	client := netip.MustParseAddr("10.77.9.9")
	p := newPortPool(PortRange{50000, 50002}, 0)
	var got []uint16
	for range 3 {
		port, err := p.get(a, client)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, port)
	}
	if got[0] != 50000 || got[1] != 50001 || got[2] != 50002 {
		t.Fatalf("ports %v, want 50000..50002 in order", got)
	}
	if _, err := p.get(a, client); !errors.Is(err, ErrNoPorts) {
		t.Fatalf("exhausted range gave %v, want ErrNoPorts", err)
	}
	if port, err := p.get(b, client); err != nil || port != 50000 {
		t.Fatalf("another address shares no ports: got %d, %v", port, err)
	}
	p.put(a, 50001)
	if port, err := p.get(a, client); err != nil || port != 50001 {
		t.Fatalf("after release got %d, %v; want 50001", port, err)
	}
	p.put(a, 50000)
	p.put(a, 50002)
	// Round robin: the port after the last handed out comes first.
	if port, _ := p.get(a, client); port != 50002 {
		t.Fatalf("got %d, want 50002 (round robin)", port)
	}
	if n := p.inUse(); n != 3 {
		t.Fatalf("inUse = %d, want 3", n)
	}
}

// One client address holds at most its share; ports it gives back, and
// other clients, are not affected.
func TestPortPoolPerClient(t *testing.T) {
	gw := netip.MustParseAddr("10.77.0.1")
	greedy := netip.MustParseAddr("10.77.9.1")
	other := netip.MustParseAddr("10.77.9.2")
	p := newPortPool(PortRange{50000, 50009}, 3)
	var held []uint16
	for range 3 {
		port, err := p.get(gw, greedy)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, port)
	}
	if _, err := p.get(gw, greedy); !errors.Is(err, ErrClientPorts) {
		t.Fatalf("a fourth port for one client: %v, want ErrClientPorts", err)
	}
	if _, err := p.get(gw, other); err != nil {
		t.Fatalf("another client is refused: %v", err)
	}
	p.put(gw, held[0])
	p.put(gw, held[0]) // twice: no effect
	if _, err := p.get(gw, greedy); err != nil {
		t.Fatalf("after giving one back: %v", err)
	}
	if _, err := p.get(gw, greedy); !errors.Is(err, ErrClientPorts) {
		t.Fatalf("a double put raised the share: %v", err)
	}
}

func TestClientKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.77.9.1", "10.77.9.1"},
		{"::ffff:10.77.9.1", "10.77.9.1"},
		{"fd77:9::1", "fd77:9::"},
		{"fd77:9::dead:beef:1:2", "fd77:9::"},
		{"fd77:9:0:1::1", "fd77:9:0:1::"},
		{"fe80::1%eth0", "fe80::"},
	} {
		if got := clientKey(netip.MustParseAddr(tc.in)); got != netip.MustParseAddr(tc.want) {
			t.Errorf("clientKey(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// An IPv6 client picking a new address in its /64 for every opening still
// holds one share.
func TestPortPoolPerClientIPv6Prefix(t *testing.T) {
	gw := netip.MustParseAddr("fd77:1::1")
	p := newPortPool(PortRange{50000, 50009}, 2)
	for _, c := range []string{"fd77:9::1", "fd77:9::2"} {
		if _, err := p.get(gw, netip.MustParseAddr(c)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.get(gw, netip.MustParseAddr("fd77:9::3")); !errors.Is(err, ErrClientPorts) {
		t.Fatalf("a third address of the same /64: %v, want ErrClientPorts", err)
	}
	if _, err := p.get(gw, netip.MustParseAddr("fd77:9:0:1::1")); err != nil {
		t.Fatalf("another /64 is refused: %v", err)
	}
}
