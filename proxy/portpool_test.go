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
	p := newPortPool(PortRange{50000, 50002})
	var got []uint16
	for range 3 {
		port, err := p.get(a)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, port)
	}
	if got[0] != 50000 || got[1] != 50001 || got[2] != 50002 {
		t.Fatalf("ports %v, want 50000..50002 in order", got)
	}
	if _, err := p.get(a); !errors.Is(err, ErrNoPorts) {
		t.Fatalf("exhausted range gave %v, want ErrNoPorts", err)
	}
	if port, err := p.get(b); err != nil || port != 50000 {
		t.Fatalf("another address shares no ports: got %d, %v", port, err)
	}
	p.put(a, 50001)
	if port, err := p.get(a); err != nil || port != 50001 {
		t.Fatalf("after release got %d, %v; want 50001", port, err)
	}
	p.put(a, 50000)
	p.put(a, 50002)
	// Round robin: the port after the last handed out comes first.
	if port, _ := p.get(a); port != 50002 {
		t.Fatalf("got %d, want 50002 (round robin)", port)
	}
	if n := p.inUse(); n != 3 {
		t.Fatalf("inUse = %d, want 3", n)
	}
}
