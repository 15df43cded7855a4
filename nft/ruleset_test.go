package nft

import (
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

func TestRulesetText(t *testing.T) {
	text := Ruleset(Config{Intercept: true})
	for _, want := range []string{
		"table inet ftpgate {",
		"set intercept_ports {",
		"elements = { 21 }",
		"set pin4 {",
		"type ipv4_addr . ipv4_addr . inet_service",
		"set pin6 {",
		"type ipv6_addr . ipv6_addr . inet_service",
		"flags dynamic,timeout",
		"type filter hook prerouting priority mangle; policy accept;",
		"meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x1 accept",
		"meta nfproto ipv4 meta l4proto tcp tcp dport @intercept_ports fib daddr type != local ct mark set ct mark & 0xfffffeff | 0x00000100 meta mark set 0x1 tproxy ip to 127.0.0.1:2121 accept",
		"meta nfproto ipv6 meta l4proto tcp tcp dport @intercept_ports fib daddr type != local ct mark set ct mark & 0xfffffeff | 0x00000100 meta mark set 0x1 tproxy ip6 to [::1]:2121 accept",
		"ct state new meta nfproto ipv4 meta l4proto tcp tcp flags syn / fin,syn,rst,ack ip saddr . ip daddr . tcp dport @pin4 delete @pin4 { ip saddr . ip daddr . tcp dport } ct mark set",
		"ct state new meta nfproto ipv6 meta l4proto tcp tcp flags syn / fin,syn,rst,ack ip6 saddr . ip6 daddr . tcp dport @pin6 delete @pin6 { ip6 saddr . ip6 daddr . tcp dport } ct mark set",
		"set natpin4 {",
		"map dnat4 {",
		"type ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service",
		"map snat6 {",
		"type ipv6_addr . ipv6_addr . inet_service : ipv6_addr",
		"chain nat_prerouting {",
		"type nat hook prerouting priority dstnat; policy accept;",
		"ct state new meta nfproto ipv4 meta l4proto tcp tcp flags syn / fin,syn,rst,ack ip saddr . ip daddr . tcp dport @natpin4 delete @natpin4 { ip saddr . ip daddr . tcp dport } ip saddr . ip daddr . tcp dport @dnat4 ct mark set ct mark & 0xfffffeff | 0x00000100 dnat ip to ip saddr . ip daddr . tcp dport map @dnat4",
		"dnat ip6 to ip6 saddr . ip6 daddr . tcp dport map @dnat6",
		"chain nat_postrouting {",
		"type nat hook postrouting priority srcnat; policy accept;",
		"meta nfproto ipv4 meta l4proto tcp ct status dnat snat ip to ip saddr . ct original ip daddr . ct original proto-dst map @snat4",
		"snat ip6 to ip6 saddr . ct original ip6 daddr . ct original proto-dst map @snat6",
		// An FTP server on the gateway itself: its data connections leave
		// prerouting (active) or postrouting (passive) out.
		"chain nat_output {\n\t\ttype nat hook output priority -100; policy accept;\n",
		"chain nat_input {\n\t\ttype nat hook input priority 100; policy accept;\n",
		"ip -4 rule add fwmark 0x1 lookup 100 proto 70",
		"ip -6 route add local ::/0 dev lo table 100 proto 70",
		"ct mark & 0x100 == 0x100 accept",
		"chain raw_prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n",
		"meta nfproto ipv4 meta l4proto tcp tcp dport @intercept_ports fib daddr type != local ct zone set 18004\n",
		"meta nfproto ipv6 meta l4proto tcp tcp dport @intercept_ports fib daddr type != local ct zone set 18004\n",
		"chain raw_output {\n\t\ttype filter hook output priority raw; policy accept;\n",
		"meta nfproto ipv4 meta l4proto tcp tcp sport @intercept_ports fib saddr type != local ct zone set 18004\n",
		"meta nfproto ipv6 meta l4proto tcp tcp sport @intercept_ports fib saddr type != local ct zone set 18004\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("Ruleset lacks %q:\n%s", want, text)
		}
	}
	plain := Ruleset(Config{})
	if !strings.Contains(plain, "chain nat_prerouting {") || !strings.Contains(plain, "map @snat4") ||
		!strings.Contains(plain, "chain nat_output {") || !strings.Contains(plain, "chain nat_input {") {
		t.Errorf("Ruleset without Intercept lacks the NAT chains (reverse mode needs them):\n%s", plain)
	}
	if strings.Contains(plain, "tproxy") || strings.Contains(plain, "socket transparent") || strings.Contains(plain, "ip rule") ||
		strings.Contains(plain, "raw_") || strings.Contains(plain, "ct zone") {
		t.Errorf("Ruleset without Intercept has interception:\n%s", plain)
	}
	// Only the intercepted family gets the zone rules.
	v4 := Ruleset(Config{Intercept: true, TProxy4: DefaultTProxy4, InterceptZone: 7})
	if !strings.Contains(v4, "meta nfproto ipv4 meta l4proto tcp tcp dport @intercept_ports fib daddr type != local ct zone set 7\n") ||
		strings.Contains(v4, "meta nfproto ipv6 meta l4proto tcp tcp dport @intercept_ports fib daddr type != local ct zone") ||
		strings.Contains(v4, "meta nfproto ipv6 meta l4proto tcp tcp sport @intercept_ports fib saddr type != local ct zone") {
		t.Errorf("Ruleset intercepting IPv4 only: want IPv4 zone rules (zone 7) only:\n%s", v4)
	}
	if bad := Ruleset(Config{CTMark: 3, CTMask: 1}); !strings.HasPrefix(bad, "# nft: invalid config") {
		t.Errorf("Ruleset of an invalid config: %q", bad)
	}
}

// TestRulesetLoads checks the text with `nft -c -f` in a throwaway namespace.
func TestRulesetLoads(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "rs")
	for _, cfg := range []Config{{}, {Intercept: true, InterceptPorts: []uint16{21, 990}, CTMark: 0x4000, CTMask: 0xc000}} {
		cmd := exec.Command("ip", "netns", "exec", ns.name, "nft", "-c", "-f", "-")
		text := Ruleset(cfg)
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("nft -c rejects Ruleset(%+v): %v: %s\n%s", cfg, err, out, text)
		}
	}
}

// TestRulesetMatchesNew loads Ruleset(cfg) with nft into one namespace, runs
// New(cfg) in another, and compares nft's listings of the two tables.
func TestRulesetMatchesNew(t *testing.T) {
	requireRoot(t)
	for _, cfg := range []Config{
		{},
		{Intercept: true},
		{Intercept: true, InterceptPorts: []uint16{990, 21}, CTMark: 0x4000, CTMask: 0xc000, FWMark: 7, RouteTable: 77,
			TProxy4: netip.MustParseAddrPort("10.1.2.3:3021"), InterceptZone: 0xffff},
		{Intercept: true, TProxy6: netip.MustParseAddrPort("[fd77::1]:2121"), InterceptZone: 1},
	} {
		viaNft, viaNew := newNS(t, "rsnft"), newNS(t, "rsnew")
		viaNft.nft(t, Ruleset(cfg))
		fw := newFirewall(t, viaNew, cfg)
		want := viaNft.exec(t, "nft", "list", "table", "inet", "ftpgate")
		got := viaNew.exec(t, "nft", "list", "table", "inet", "ftpgate")
		// nft names the owning process and may show the owner flag.
		got = regexp.MustCompile(` # progname \S+`).ReplaceAllString(got, "")
		got = strings.Replace(got, "\tflags owner\n\n", "", 1)
		got = strings.Replace(got, "\tflags owner\n", "", 1)
		if got != want {
			t.Errorf("config %+v: New installs\n%s\nbut Ruleset loads as\n%s", cfg, got, want)
		}
		if err := fw.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
