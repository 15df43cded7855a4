package nft

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// TestPolicyRoutingOwnership: ftpgate's policy routing (fwmark 1, table 100
// by default — the values of the tproxy tutorials) never takes over or
// deletes someone else's rule or route. Anything else using the fwmark or
// the table makes New refuse, changing nothing; unrelated policy routing is
// left alone; leftovers tagged as ftpgate's (a killed earlier run) are
// replaced and removed on Close.
func TestPolicyRoutingOwnership(t *testing.T) {
	requireRoot(t)
	for _, c := range []struct {
		name  string
		setup [][]string // ip commands in the namespace, before New
		cfg   Config
		// want is "" when New must succeed, else a substring of its error.
		want string
		// after lists `ip` listings (args, substring) that must hold after
		// Close, and during the Firewall's life.
		after [][2]string
	}{
		{
			name:  "tutorial-rule",
			setup: [][]string{{"-4", "rule", "add", "fwmark", "1", "lookup", "100"}},
			want:  "ip -4 rule",
			after: [][2]string{{"-4 rule show", "fwmark 0x1 lookup 100"}},
		},
		{
			name:  "tutorial-route",
			setup: [][]string{{"-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100"}},
			want:  "ip -6 route local default dev lo table 100 proto 3 is in table 100",
			after: [][2]string{{"-6 route show table 100", "local default dev lo"}},
		},
		{
			name:  "table-used-by-another-mark",
			setup: [][]string{{"-4", "rule", "add", "fwmark", "7", "lookup", "100"}},
			want:  "uses table 100",
			after: [][2]string{{"-4 rule show", "fwmark 0x7 lookup 100"}},
		},
		{
			name: "wireguard-not-fwmark-rule",
			setup: [][]string{
				{"-4", "rule", "add", "not", "fwmark", "0xca6c", "lookup", "51820"},
			},
			after: [][2]string{{"-4 rule show", "not from all fwmark 0xca6c lookup 51820"}},
		},
		{
			name:  "mark-used-by-another-table",
			setup: [][]string{{"-6", "rule", "add", "fwmark", "0x1/0x3", "lookup", "200"}},
			want:  "matches fwmark 0x1",
			after: [][2]string{{"-6 rule show", "fwmark 0x1/0x3 lookup 200"}},
		},
		{
			name: "tutorial-setup-with-other-settings",
			setup: [][]string{
				{"-4", "rule", "add", "fwmark", "1", "lookup", "100"},
				{"-4", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"},
			},
			cfg: Config{FWMark: 5, RouteTable: 50},
			after: [][2]string{
				{"-4 rule show", "fwmark 0x1 lookup 100"},
				{"-4 route show table 100", "local default dev lo"},
			},
		},
		{
			name: "leftovers-of-a-killed-ftpgate",
			setup: [][]string{
				{"-4", "rule", "add", "fwmark", "1", "lookup", "100", "proto", "70"},
				{"-4", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100", "proto", "70"},
				{"-6", "rule", "add", "fwmark", "1", "lookup", "100", "proto", "70"},
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			leakCheck(t)
			ns := newNS(t, "route")
			for _, args := range c.setup {
				run(t, append([]string{"ip", "-n", ns.name}, args...)...)
			}
			check := func(when string) {
				t.Helper()
				for _, a := range c.after {
					if out := run(t, append([]string{"ip", "-n", ns.name}, strings.Fields(a[0])...)...); !strings.Contains(out, a[1]) {
						t.Errorf("%s: ip %s lacks %q:\n%s", when, a[0], a[1], out)
					}
				}
			}
			cfg := c.cfg
			cfg.Intercept = true
			// What `ftpgate check` reports agrees with what New does.
			var conflicts, leftovers []string
			var err error
			var pr PolicyRouting
			ns.do(t, func() { pr, err = InspectPolicyRouting(cfg) })
			conflicts, leftovers = pr.Conflicts, pr.Leftovers
			if err != nil {
				t.Fatalf("InspectPolicyRouting: %v", err)
			}
			if got := strings.Join(conflicts, "\n"); (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
				t.Errorf("InspectPolicyRouting conflicts:\n%s\nwant them to mention %q", got, c.want)
			}
			if wantLeft := strings.Contains(c.name, "leftovers"); wantLeft != (len(leftovers) > 0) {
				t.Errorf("InspectPolicyRouting leftovers: %q", leftovers)
			}
			var fw *Firewall
			ns.do(t, func() { fw, err = New(cfg, testLogger(t)) })
			if c.want != "" {
				if err == nil {
					fw.Close()
					t.Fatal("New succeeded although another configuration uses the fwmark or the route table")
				}
				t.Log(err)
				for _, w := range []string{c.want, "--fwmark", "--route-table"} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("New: %v\nwant it to say %q", err, w)
					}
				}
				if tables := ns.exec(t, "nft", "list", "tables"); strings.TrimSpace(tables) != "" {
					t.Errorf("the refused New left tables behind:\n%s", tables)
				}
				check("after the refused New")
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			mark, table := fmt.Sprintf("%#x", fw.cfg.FWMark), strconv.Itoa(fw.cfg.RouteTable)
			for _, fam := range []string{"-4", "-6"} {
				rules := run(t, "ip", "-n", ns.name, fam, "rule", "show")
				own := strings.Count(rules, "lookup "+table+" proto 70")
				if own != 1 || !strings.Contains(rules, "fwmark "+mark+" lookup "+table+" proto 70") {
					t.Errorf("ip %s rule show: want exactly ftpgate's tagged rule for table %s:\n%s", fam, table, rules)
				}
				routes := run(t, "ip", "-n", ns.name, fam, "route", "show", "table", table)
				if strings.Count(routes, "\n") != 1 || !strings.Contains(routes, "local default dev lo proto 70") {
					t.Errorf("ip %s route show table %s: want ftpgate's tagged route only:\n%s", fam, table, routes)
				}
			}
			check("while ftpgate runs")
			if err := fw.Close(); err != nil {
				t.Fatal(err)
			}
			check("after Close")
			for _, fam := range []string{"-4", "-6"} {
				if rules := run(t, "ip", "-n", ns.name, fam, "rule", "show"); strings.Contains(rules, "proto 70") {
					t.Errorf("ip %s rule show: ftpgate's rule left after Close:\n%s", fam, rules)
				}
				if routes := run(t, "ip", "-n", ns.name, fam, "route", "show", "table", table); strings.Contains(routes, "proto 70") {
					t.Errorf("ip %s route show table %s: ftpgate's route left after Close:\n%s", fam, table, routes)
				}
			}
		})
	}
}

// TestSecondInstanceKeepsRouting: a second transparent ftpgate in the
// namespace (another table) with the first one's fwmark and route table is
// refused — it used to take the first one's tagged rule and route for
// leftovers of a killed run, replace them, and delete them on exit, leaving
// the first without policy routing. With its own fwmark and route table it
// runs beside the first; and leftovers of a killed ftpgate are still
// replaced while other ftpgates run (a reverse-mode one, a transparent one
// with another fwmark).
func TestSecondInstanceKeepsRouting(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "route2")
	routing := func() string {
		var b strings.Builder
		for _, fam := range []string{"-4", "-6"} {
			b.WriteString(run(t, "ip", "-n", ns.name, fam, "rule", "show"))
			b.WriteString(run(t, "ip", "-n", ns.name, fam, "route", "show", "table", "all", "proto", "70"))
		}
		return b.String()
	}
	hasRouting := func(when, mark, table string) {
		t.Helper()
		rs := routing()
		if n := strings.Count(rs, "fwmark "+mark+" lookup "+table+" proto 70"); n != 2 {
			t.Errorf("%s: %d tagged rules for fwmark %s table %s, want 2 (IPv4, IPv6):\n%s", when, n, mark, table, rs)
		}
		for _, fam := range []string{"-4", "-6"} {
			if out := run(t, "ip", "-n", ns.name, fam, "route", "show", "table", table); !strings.Contains(out, "local default dev lo proto 70") {
				t.Errorf("%s: ip %s route show table %s lacks the tagged local route:\n%s", when, fam, table, out)
			}
		}
	}
	newFW := func(cfg Config) (*Firewall, error) {
		var fw *Firewall
		var err error
		ns.do(t, func() { fw, err = New(cfg, testLogger(t)) })
		return fw, err
	}
	inspect := func(cfg Config) (conflicts, leftovers []string) {
		var err error
		var pr PolicyRouting
		ns.do(t, func() { pr, err = InspectPolicyRouting(cfg) })
		conflicts, leftovers = pr.Conflicts, pr.Leftovers
		if err != nil {
			t.Fatalf("InspectPolicyRouting: %v", err)
		}
		return conflicts, leftovers
	}

	a, err := newFW(Config{Intercept: true})
	if err != nil {
		t.Fatalf("New a: %v", err)
	}
	defer a.Close()
	hasRouting("a runs", "0x1", "100")

	// Same fwmark and route table: refused, and says so beforehand.
	bCfg := Config{Intercept: true, Table: "ftpgate2", InterceptPorts: []uint16{2121}}
	conflicts, leftovers := inspect(bCfg)
	if got := strings.Join(conflicts, "\n"); !strings.Contains(got, "used by the running ftpgate of table inet ftpgate (") || len(leftovers) != 0 {
		t.Errorf("InspectPolicyRouting with a running: conflicts %q, leftovers %q; want a conflict naming table inet ftpgate and no leftovers", conflicts, leftovers)
	}
	if b, err := newFW(bCfg); err == nil {
		b.Close()
		t.Error("a second transparent ftpgate with the first one's fwmark and route table started")
	} else {
		t.Log(err)
		for _, w := range []string{"fwmark 0x1 / route table 100 are used by the running ftpgate of table inet ftpgate", "--fwmark", "--route-table"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("New b: %v\nwant it to say %q", err, w)
			}
		}
	}
	if tables := ns.exec(t, "nft", "list", "tables"); strings.TrimSpace(tables) != "table inet ftpgate" {
		t.Errorf("the refused New left tables behind:\n%s", tables)
	}
	hasRouting("after the refused b", "0x1", "100")

	// Its own fwmark and route table: both run, and its exit leaves a's.
	b, err := newFW(Config{Intercept: true, Table: "ftpgate2", InterceptPorts: []uint16{2121}, FWMark: 2, RouteTable: 101})
	if err != nil {
		t.Fatalf("New b with its own fwmark and route table: %v", err)
	}
	hasRouting("a and b run", "0x1", "100")
	hasRouting("a and b run", "0x2", "101")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	hasRouting("after b.Close", "0x1", "100")

	// Leftovers of a killed a (its table gone, its tagged routing left) are
	// replaced while a reverse-mode ftpgate and a transparent one with
	// another fwmark run.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"-4", "-6"} {
		def := "0.0.0.0/0"
		if fam == "-6" {
			def = "::/0"
		}
		run(t, "ip", "-n", ns.name, fam, "rule", "add", "fwmark", "1", "lookup", "100", "proto", "70")
		run(t, "ip", "-n", ns.name, fam, "route", "add", "local", def, "dev", "lo", "table", "100", "proto", "70")
	}
	rev, err := newFW(Config{Table: "ftpgate_rev"})
	if err != nil {
		t.Fatalf("New reverse: %v", err)
	}
	defer rev.Close()
	other, err := newFW(Config{Intercept: true, Table: "ftpgate2", InterceptPorts: []uint16{2121}, FWMark: 2, RouteTable: 101})
	if err != nil {
		t.Fatalf("New b again: %v", err)
	}
	defer other.Close()
	if conflicts, leftovers := inspect(Config{Intercept: true}); len(conflicts) != 0 || len(leftovers) != 4 {
		t.Errorf("InspectPolicyRouting of a killed run's leftovers: conflicts %q, leftovers %q; want the 4 leftovers", conflicts, leftovers)
	}
	a2, err := newFW(Config{Intercept: true})
	if err != nil {
		t.Fatalf("New replacing a killed run's leftovers: %v", err)
	}
	hasRouting("a2 replaced the leftovers", "0x1", "100")
	if err := a2.Close(); err != nil {
		t.Fatal(err)
	}
	if rs := routing(); strings.Contains(rs, "fwmark 0x1") || strings.Contains(rs, "lookup 100") || strings.Contains(rs, "table 100") {
		t.Errorf("a2 left its policy routing after Close:\n%s", rs)
	}
	hasRouting("after a2.Close", "0x2", "101")
}
