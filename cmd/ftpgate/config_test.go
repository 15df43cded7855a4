package main

import (
	"net/netip"
	"testing"
)

func TestParseMark(t *testing.T) {
	tests := []struct {
		in         string
		mark, mask uint32
		ok         bool
	}{
		{"0x100/0x100", 0x100, 0x100, true},
		{"0x100", 0x100, 0x100, true},
		{"256/0xff00", 0x100, 0xff00, true},
		{"0x100/0x0ff", 0, 0, false}, // value outside the mask
		{"0/0", 0, 0, false},
		{"banana", 0, 0, false},
		{"0x1/zz", 0, 0, false},
	}
	for _, tc := range tests {
		mark, mask, err := parseMark(tc.in)
		if (err == nil) != tc.ok || mark != tc.mark || mask != tc.mask {
			t.Errorf("parseMark(%q) = %#x, %#x, %v; want %#x, %#x, ok=%v", tc.in, mark, mask, err, tc.mark, tc.mask, tc.ok)
		}
	}
}

func TestListenAndPorts(t *testing.T) {
	var o options
	fs := newFlagSet("run", &o)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	v4, v6, err := o.tproxyTargets()
	if err != nil || v4 != netip.MustParseAddrPort("127.0.0.1:2121") || v6 != netip.MustParseAddrPort("[::1]:2121") {
		t.Fatalf("default targets = %v %v %v", v4, v6, err)
	}
	if err := fs.Parse([]string{"--listen", "10.77.0.1:2000", "--intercept-port", "21", "--intercept-port", "2121"}); err != nil {
		t.Fatal(err)
	}
	v4, v6, err = o.tproxyTargets()
	if err != nil || v4 != netip.MustParseAddrPort("10.77.0.1:2000") || v6.IsValid() {
		t.Fatalf("explicit --listen replaced the defaults badly: %v %v %v", v4, v6, err)
	}
	ports, err := o.ports()
	if err != nil || len(ports) != 2 || ports[1] != 2121 {
		t.Fatalf("ports = %v, %v", ports, err)
	}
	for _, bad := range [][]string{{"--listen", "nonsense"}, {"--listen", "127.0.0.1:1", "--listen", "127.0.0.2:2"}} {
		var o options
		fs := newFlagSet("run", &o)
		fs.Parse(bad)
		if _, _, err := o.tproxyTargets(); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	o.interceptPorts = listFlag{values: []string{"0"}}
	if _, err := o.ports(); err == nil {
		t.Error("port 0 accepted")
	}
}
