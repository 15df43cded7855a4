package main

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestRoutingFindings(t *testing.T) {
	const lo, eth0 = 1, 2
	mask := func(m uint32) *uint32 { return &m }
	rule := func(prio int, mark uint32, table int) netlink.Rule {
		r := *netlink.NewRule()
		r.Priority, r.Mark, r.Table = prio, mark, table
		return r
	}
	// The rules every Linux host has.
	system := []netlink.Rule{rule(0, 0, 255), rule(32766, 0, 254), rule(32767, 0, 253)}
	own := rule(32765, 1, 100)
	own.Mask = mask(0xffffffff) // as the kernel lists it
	ownRoute := netlink.Route{Type: unix.RTN_LOCAL, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, LinkIndex: lo, Table: 100}
	fromLAN := rule(100, 0, 100)
	fromLAN.Src = &net.IPNet{IP: net.IPv4(10, 0, 0, 0), Mask: net.CIDRMask(8, 32)}
	otherMarkUser := rule(90, 1, 200)
	maskedMark := rule(91, 0x1, 201)
	maskedMark.Mask = mask(0xff)
	otherBits := rule(92, 0x100, 202)
	otherBits.Mask = mask(0x100)
	ownMarkWithIif := rule(93, 1, 100)
	ownMarkWithIif.IifName = "eth0"
	vpnRoute := netlink.Route{Type: unix.RTN_UNICAST, Dst: &net.IPNet{IP: net.IPv4(192, 168, 7, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.IPv4(10, 0, 0, 1), LinkIndex: eth0, Table: 100}
	defaultVia := netlink.Route{Type: unix.RTN_UNICAST, Gw: net.IPv4(10, 0, 0, 1), LinkIndex: eth0, Table: 100}

	tests := []struct {
		name      string
		rules     []netlink.Rule
		routes    []netlink.Route
		conflicts []string // substrings, in order
		leftovers []string
	}{
		{name: "a clean host", rules: system},
		{name: "left by a killed run", rules: append(slices.Clone(system), own), routes: []netlink.Route{ownRoute},
			leftovers: []string{"ip -4 rule 32765: from all fwmark 0x1 lookup 100", "ip -4 route: local default dev lo table 100"}},
		{name: "another rule uses the table", rules: append(slices.Clone(system), fromLAN),
			conflicts: []string{"ip -4 rule 100: from 10.0.0.0/8 lookup 100: uses table 100"}},
		{name: "the table holds other routes", rules: system, routes: []netlink.Route{vpnRoute, defaultVia},
			conflicts: []string{"ip -4 route: 192.168.7.0/24 via 10.0.0.1 dev eth0 table 100", "ip -4 route: default via 10.0.0.1 dev eth0 table 100"}},
		{name: "another rule routes the mark elsewhere", rules: append(slices.Clone(system), otherMarkUser),
			conflicts: []string{"fwmark 0x1 lookup 200: matches fwmark 0x1"}},
		{name: "a masked rule matches the mark", rules: []netlink.Rule{maskedMark},
			conflicts: []string{"fwmark 0x1/0xff lookup 201"}},
		{name: "a rule on other mark bits", rules: []netlink.Rule{otherBits}},
		{name: "the mark and table with an extra selector", rules: []netlink.Rule{ownMarkWithIif},
			conflicts: []string{"iif eth0 lookup 100: uses table 100"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := policyRouting{family: netlink.FAMILY_V4, rules: tc.rules, routes: tc.routes, lo: lo,
				names: map[int]string{lo: "lo", eth0: "eth0"}}
			conflicts, leftovers := routingFindings(1, 100, st)
			match := func(what string, got, want []string) {
				if len(got) != len(want) {
					t.Fatalf("%s = %q, want %d matching %q", what, got, len(want), want)
				}
				for i := range want {
					if !strings.Contains(got[i], want[i]) {
						t.Errorf("%s[%d] = %q, want it to contain %q", what, i, got[i], want[i])
					}
				}
			}
			match("conflicts", conflicts, tc.conflicts)
			match("leftovers", leftovers, tc.leftovers)
		})
	}
}
