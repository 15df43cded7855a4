package nft

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func findings(t *testing.T, ns *testNS, cfg Config) []Finding {
	var out []Finding
	ns.do(t, func() { out = Check(cfg) })
	for _, f := range out {
		t.Log(f)
	}
	return out
}

func TestCheck(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "check")

	// A clean namespace: everything supported, nothing to add. Only
	// transparent mode needs (and probes) the interception features.
	interception := []string{"tproxy", "socket transparent", "conntrack zones"}
	for _, c := range []struct {
		cfg     Config
		want    []string
		notWant []string
	}{
		{Config{Intercept: true}, interception, nil},
		{Config{}, nil, interception},
	} {
		out := findings(t, ns, c.cfg)
		for _, f := range out {
			if !f.OK {
				t.Errorf("%+v: unexpected failed finding in a clean namespace: %v", c.cfg, f)
			}
		}
		if !hasFinding(out, true, "no host chain drops forwarded traffic; nothing to add") {
			t.Errorf("%+v: missing the nothing-to-add finding", c.cfg)
		}
		for _, want := range append([]string{"CAP_NET_ADMIN", "dynset delete", "ct mark", "timeouts",
			"nat chains", "NAT pinhole maps", "one-shot NAT pinholes", "SNAT of NAT pinholes", "nat output chain", "nat input chain", "NAT map elements"}, c.want...) {
			if !hasFinding(out, true, want) {
				t.Errorf("%+v: missing an OK finding about %q", c.cfg, want)
			}
		}
		for _, no := range c.notWant {
			if hasFinding(out, true, no) || hasFinding(out, false, no) {
				t.Errorf("%+v: a finding about %q, which this mode does not use", c.cfg, no)
			}
		}
	}
	if tables := ns.exec(t, "nft", "list", "tables"); strings.TrimSpace(tables) != "" {
		t.Errorf("Check left tables behind:\n%s", tables)
	}

	// A forward chain that drops by default without the ct mark line.
	ns.nft(t, `table inet filter {
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "lo" accept
	}
}
table ip legacy {
	chain in4 {
		type filter hook input priority filter; policy accept;
		tcp dport 22 accept
		drop
	}
}`)
	out := findings(t, ns, Config{})
	want := Finding{
		What: "table inet filter chain forward drops by default and does not accept ftpgate's ct mark",
		Fix:  "add before its drops: ct mark & 0x100 == 0x100 accept",
	}
	if !contains(out, want) {
		t.Errorf("missing finding %+v", want)
	}
	want = Finding{
		What: "table ip legacy chain in4 (hook input) ends with a drop rule and does not accept ftpgate's ct mark",
		Fix:  "add before its drops: ct mark & 0x100 == 0x100 accept",
	}
	if !contains(out, want) {
		t.Errorf("missing finding %+v", want)
	}
	if hasFinding(out, false, "chain input") {
		t.Errorf("the accepting input chain was reported")
	}
	// A different mark is reported with that mark.
	out = findings(t, ns, Config{CTMark: 0x4000, CTMask: 0xc000})
	if !contains(out, Finding{
		What: "table inet filter chain forward drops by default and does not accept ftpgate's ct mark",
		Fix:  "add before its drops: ct mark & 0xc000 == 0x4000 accept",
	}) {
		t.Errorf("custom mark not reflected in the fix")
	}

	// With the line added (in the forms nft users write) the chains are fine.
	ns.exec(t, "nft", "insert", "rule", "inet", "filter", "forward", "ct", "mark", "&", "0x100", "==", "0x100", "accept")
	ns.exec(t, "nft", "add", "chain", "ip", "legacy", "ftp")
	ns.exec(t, "nft", "add", "rule", "ip", "legacy", "ftp", "ct", "mark", "and", "0x100", "!=", "0", "accept")
	ns.exec(t, "nft", "insert", "rule", "ip", "legacy", "in4", "jump", "ftp")
	out = findings(t, ns, Config{})
	for _, f := range out {
		if !f.OK {
			t.Errorf("unexpected failed finding: %v", f)
		}
	}
	for _, w := range []string{
		"table inet filter chain forward drops by default and accepts ftpgate's ct mark",
		"table ip legacy chain in4 (hook input) ends with a drop rule and accepts ftpgate's ct mark",
	} {
		if !hasFinding(out, true, w) {
			t.Errorf("missing OK finding %q", w)
		}
	}
	// A rule matching another bit does not count.
	out = findings(t, ns, Config{CTMark: 0x200, CTMask: 0x200})
	if !hasFinding(out, false, "table inet filter chain forward drops by default and does not accept") {
		t.Errorf("a ct mark rule for another bit was taken as accepting 0x200")
	}

	// Only a rule that accepts every marked connection counts, as nft
	// compiles it (counters and logs are fine, other conditions are not).
	for _, c := range []struct {
		rule string
		ok   bool
	}{
		{`iifname "lo" ct mark & 0x100 == 0x100 accept`, false},
		{"ct mark & 0x100 == 0x100 tcp dport 22 accept", false},
		{"ct mark & 0x100 == 0x100 limit rate 10/second accept", false},
		{`counter ct mark & 0x100 == 0x100 counter log prefix "ftpgate " accept`, true},
	} {
		cns := newNS(t, "checkrule")
		cns.nft(t, "table inet host {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\t"+c.rule+"\n\t}\n}")
		if got := findings(t, cns, Config{}); !hasFinding(got, c.ok, "table inet host chain forward drops by default and") {
			t.Errorf("the only rule %q: want a finding with OK=%v", c.rule, c.ok)
		}
	}

	// Host rules that set conntrack zones are pointed out in transparent mode.
	if hasFinding(findings(t, ns, Config{Intercept: true}), true, "conntrack zones:") {
		t.Errorf("a zone finding without any zone rule")
	}
	ns.nft(t, `table ip zones {
	chain pre {
		type filter hook prerouting priority raw; policy accept;
		iifname "veth*" ct zone set 5
	}
}`)
	if !hasFinding(findings(t, ns, Config{Intercept: true}), true,
		"table ip zones chain pre sets conntrack zones: make sure it sets none on TCP to or from ports 21 of addresses not on this host — ftpgate puts the control connections it intercepts, both ways, in zone 18004") {
		t.Errorf("missing the finding about the host's zone rule")
	}
	if hasFinding(findings(t, ns, Config{}), true, "conntrack zones:") {
		t.Errorf("a zone finding in reverse mode (no zones there)")
	}
}

// TestCheckLegacyIptables: with iptables-legacy tables loaded in the
// namespace (their rules invisible to nf_tables), check does not say there
// is nothing to add but what to add to INPUT and FORWARD. The kernel's
// lists are faked: loading x_tables would change the host.
func TestCheckLegacyIptables(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "checklegacy")
	dir := t.TempDir()
	v4, v6 := filepath.Join(dir, "ip_tables_names"), filepath.Join(dir, "ip6_tables_names")
	if err := os.WriteFile(v4, []byte("nat\nfilter\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v6, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	saved := legacyTableFiles
	t.Cleanup(func() { legacyTableFiles = saved })
	legacyTableFiles = []struct{ tool, path string }{{"iptables", v4}, {"ip6tables", v6}}

	out := findings(t, ns, Config{CTMark: 0x4000, CTMask: 0xc000})
	if hasFinding(out, true, "nothing to add") {
		t.Error("check says there is nothing to add although legacy iptables tables are loaded")
	}
	if !hasFinding(out, true, "legacy iptables tables are loaded (filter, nat) and check cannot read their rules") ||
		!hasFinding(out, true, "iptables-legacy -I FORWARD -m connmark --mark 0x4000/0xc000 -j ACCEPT and iptables-legacy -I INPUT -m connmark --mark 0x4000/0xc000 -j ACCEPT") {
		t.Error("no finding telling what to add to the legacy iptables chains")
	}
	for _, f := range out {
		if strings.Contains(f.What, "legacy") && !f.Warn {
			t.Errorf("%q is not a warning", f.What)
		}
	}
	if hasFinding(out, true, "ip6tables") {
		t.Error("a finding about ip6tables, whose list of tables is empty")
	}

	// Nothing loaded (empty or missing lists): nothing to add.
	legacyTableFiles = []struct{ tool, path string }{{"iptables", v6}, {"ip6tables", filepath.Join(dir, "missing")}}
	if out := findings(t, ns, Config{}); !hasFinding(out, true, "nothing to add") || hasFinding(out, true, "legacy") {
		t.Error("without legacy tables: want the nothing-to-add finding and none about legacy tables")
	}
}

func hasFinding(out []Finding, ok bool, substr string) bool {
	for _, f := range out {
		if f.OK == ok && strings.Contains(f.What, substr) {
			return true
		}
	}
	return false
}

func contains(out []Finding, want Finding) bool {
	for _, f := range out {
		if f == want {
			return true
		}
	}
	return false
}
