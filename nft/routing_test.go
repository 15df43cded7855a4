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
			ns.do(t, func() { conflicts, leftovers, err = InspectPolicyRouting(cfg) })
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
