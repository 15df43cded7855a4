package nft

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
)

// Finding is one result of Check.
type Finding struct {
	OK   bool
	Warn bool // OK, but something check cannot see needs the operator's eye
	What string
	Fix  string // what to do when !OK
}

func (f Finding) String() string {
	if f.OK && f.Warn {
		return "warn: " + f.What
	}
	if f.OK {
		return "ok: " + f.What
	}
	return "FAIL: " + f.What + " — " + f.Fix
}

// capNetAdmin is CAP_NET_ADMIN's bit in CapEff.
const capNetAdmin = 12

// Check inspects the network namespace of the calling thread: privileges,
// nftables, kernel support for what New installs for cfg (probed in a
// throwaway dormant table "inet ftpgate_check_<pid>" that is deleted again;
// the interception features only when cfg.Intercept is set), conntrack
// events, and whether the host ruleset lets ftpgate's connections through.
// It changes nothing else.
func Check(cfg Config) []Finding {
	var out []Finding
	cfg, err := cfg.withDefaults()
	if err != nil {
		return []Finding{{What: "configuration", Fix: err.Error()}}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	out = append(out, checkPrivileges())

	conn, err := nftables.New()
	if err == nil {
		_, err = conn.ListTables()
	}
	if err != nil {
		return append(out, Finding{What: "nftables is not reachable: " + cause(err), Fix: fixFor(err, "load the nf_tables module (modprobe nf_tables)")})
	}
	out = append(out, Finding{OK: true, What: "nftables is reachable"})
	out = append(out, checkKernel(conn, cfg)...)
	out = append(out, checkCTEvents())
	out = append(out, checkHostRuleset(conn, cfg)...)
	if cfg.Intercept {
		out = append(out, checkHostZones(conn, cfg)...)
	}
	return out
}

func fixFor(err error, otherwise string) string {
	if h := hint(err); h != "" {
		return h
	}
	return otherwise
}

func checkPrivileges() Finding {
	// Capabilities are per thread: read this (locked) thread's.
	data, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		data, err = os.ReadFile("/proc/self/status")
	}
	if err != nil {
		return Finding{What: "cannot read /proc/self/status to check capabilities: " + err.Error(), Fix: "mount /proc"}
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		hexCaps, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hexCaps), 16, 64)
		if err != nil {
			break
		}
		if caps&(1<<capNetAdmin) != 0 {
			return Finding{OK: true, What: fmt.Sprintf("running with CAP_NET_ADMIN (uid %d)", os.Geteuid())}
		}
		return Finding{
			What: fmt.Sprintf("running without CAP_NET_ADMIN (uid %d)", os.Geteuid()),
			Fix:  "run as root with CAP_NET_ADMIN, or grant it (systemd: AmbientCapabilities=CAP_NET_ADMIN)",
		}
	}
	return Finding{What: "no CapEff line in /proc/self/status", Fix: "run on Linux with /proc mounted"}
}

// checkKernel probes each kernel feature New needs in its own batch, inside a
// dormant (hence packet-inert) throwaway table.
func checkKernel(c *nftables.Conn, cfg Config) []Finding {
	name := fmt.Sprintf("ftpgate_check_%d", os.Getpid())
	o := newObjects(cfg, name, nftables.TableFlagDormant)
	var out []Finding

	c.AddTable(o.table)
	c.AddChain(o.chain)
	err := c.AddSet(o.ports, []nftables.SetElement{{Key: binaryutil.BigEndian.PutUint16(21)}})
	for _, fa := range families {
		if err == nil {
			err = c.AddSet(o.pins[fa], nil)
		}
	}
	if err == nil {
		err = c.Flush()
	}
	if err != nil {
		// Nothing was created: the batch is atomic.
		return append(out, Finding{
			What: fmt.Sprintf("cannot create a probe table with a prerouting chain and timeout sets (inet %s): %v", name, err),
			Fix:  fixFor(err, "use a kernel with nf_tables, inet tables and hash sets with timeouts (CONFIG_NF_TABLES_INET, CONFIG_NFT_SET_HASH)"),
		})
	}
	out = append(out, Finding{OK: true, What: "kernel supports the inet table, prerouting chain and timeout sets"})

	probeIn := func(ch *nftables.Chain, what, fix string, exprs ...[]expr.Any) Finding {
		for _, e := range exprs {
			c.AddRule(&nftables.Rule{Table: o.table, Chain: ch, Exprs: e})
		}
		if err := c.Flush(); err != nil {
			return Finding{What: "kernel lacks " + what + ": " + err.Error(), Fix: fixFor(err, fix)}
		}
		return Finding{OK: true, What: "kernel supports " + what}
	}
	probe := func(what, fix string, exprs ...[]expr.Any) { out = append(out, probeIn(o.chain, what, fix, exprs...)) }
	probe("ct mark (nft_ct)", "load nft_ct / enable CONFIG_NFT_CT",
		setCTMark(cfg.CTMark, cfg.CTMask))
	probe("one-shot pinholes (dynset delete on concatenated keys, nft_dynset)",
		"use Linux >= 5.4 with CONFIG_NFT_DYNSET",
		pinRuleExprs(cfg, &fam4, o.pins[&fam4]), pinRuleExprs(cfg, &fam6, o.pins[&fam6]))
	if cfg.Intercept {
		// Only transparent mode installs these: reverse mode runs on
		// kernels without nft_socket, nft_tproxy, fib or zones.
		out = append(out, checkInterception(c, cfg, o, probeIn)...)
	}

	// Elements with a timeout, and destroying an element (used to refresh).
	set := o.pins[&fam4]
	key := fam4.pinKey(netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), 65535)
	err = c.SetAddElements(set, []nftables.SetElement{{Key: key, Timeout: time.Second}})
	if err == nil {
		err = c.Flush()
	}
	if err != nil {
		out = append(out, Finding{What: "cannot add a set element with a timeout: " + err.Error(), Fix: fixFor(err, "use a kernel with set element timeouts (CONFIG_NFT_SET_HASH)")})
	} else {
		err = c.SetDestroyElements(set, []nftables.SetElement{{Key: key}, {Key: key}})
		if err == nil {
			err = c.Flush()
		}
		if err != nil {
			out = append(out, Finding{What: "kernel cannot destroy set elements (NFT_MSG_DESTROYSETELEM): " + err.Error(), Fix: "use Linux >= 6.3 (re-opening an outstanding pinhole fails otherwise)"})
		} else {
			out = append(out, Finding{OK: true, What: "kernel supports set element timeouts and destroy"})
		}
	}

	out = append(out, checkNAT(c, cfg, o, probeIn)...)

	c.DelTable(o.table)
	if err := c.Flush(); err != nil {
		out = append(out, Finding{
			What: fmt.Sprintf("cannot delete the probe table inet %s: %v", name, err),
			Fix:  fmt.Sprintf("delete it by hand: nft delete table inet %s", name),
		})
	}
	return out
}

// checkInterception probes what transparent mode adds, in the probe table of
// checkKernel.
func checkInterception(c *nftables.Conn, cfg Config, o *objects,
	probeIn func(*nftables.Chain, string, string, ...[]expr.Any) Finding) []Finding {
	out := []Finding{probeIn(o.chain, "socket transparent (nft_socket)", "load nft_socket / enable CONFIG_NFT_SOCKET",
		returnRuleExprs(cfg))}
	tp4, tp6 := cfg.TProxy4, cfg.TProxy6
	if !tp4.IsValid() {
		tp4 = DefaultTProxy4
	}
	if !tp6.IsValid() {
		tp6 = DefaultTProxy6
	}
	out = append(out, probeIn(o.chain, "tproxy for forwarded connections (nft_tproxy, nft_fib_inet)", "load nft_tproxy and nft_fib_inet / enable CONFIG_NFT_TPROXY and CONFIG_NFT_FIB_INET",
		tproxyRuleExprs(cfg, &fam4, o.ports, tp4), tproxyRuleExprs(cfg, &fam6, o.ports, tp6)))
	// The raw chains and their rules, in one batch.
	c.AddChain(o.rawPre)
	c.AddChain(o.rawOut)
	c.AddRule(&nftables.Rule{Table: o.table, Chain: o.rawPre, Exprs: zoneRuleExprs(cfg, &fam4, o.ports, o.rawPre.Hooknum)})
	return append(out, probeIn(o.rawOut, "conntrack zones for intercepted connections (ct zone set in raw prerouting/output chains)",
		"load nft_ct and nft_fib_inet and use a kernel with CONFIG_NF_CONNTRACK_ZONES; without zones transparent upstream connections can collide with intercepted ones",
		zoneRuleExprs(cfg, &fam6, o.ports, o.rawOut.Hooknum)))
}

// checkNAT probes what NAT pinholes need, in the probe table of checkKernel.
func checkNAT(c *nftables.Conn, cfg Config, o *objects,
	probeIn func(*nftables.Chain, string, string, ...[]expr.Any) Finding) []Finding {
	var out []Finding
	for _, ch := range []*nftables.Chain{o.natPre, o.natPost, o.natOut, o.natIn} {
		c.AddChain(ch)
	}
	if err := c.Flush(); err != nil {
		return append(out, Finding{
			What: "kernel lacks nat chains (prerouting/postrouting/output/input) in inet tables: " + err.Error(),
			Fix:  fixFor(err, "load nft_chain_nat / use Linux >= 5.2 with CONFIG_NFT_NAT; without them NAT pinholes (reverse mode, masqueraded clients) fail"),
		})
	}
	out = append(out, Finding{OK: true, What: "kernel supports nat chains in inet tables"})

	var err error
	for _, fa := range families {
		for _, set := range []*nftables.Set{o.natPins[fa], o.dnats[fa], o.snats[fa]} {
			if err == nil {
				err = c.AddSet(set, nil)
			}
		}
	}
	if err == nil {
		err = c.Flush()
	}
	if err != nil {
		return append(out, Finding{
			What: "kernel cannot create the NAT pinhole maps (timeout maps with concatenated keys and data): " + err.Error(),
			Fix:  fixFor(err, "use Linux >= 5.6 with CONFIG_NFT_SET_HASH; without them NAT pinholes fail"),
		})
	}
	out = append(out, Finding{OK: true, What: "kernel supports NAT pinhole maps (timeout maps with concatenated keys and data)"})

	var dnat, snat [][]expr.Any
	for _, fa := range families {
		dnat = append(dnat, dnatRuleExprs(cfg, fa, o.natPins[fa], o.dnats[fa]))
		snat = append(snat, snatRuleExprs(fa, o.snats[fa]))
	}
	fix := "load nft_nat, nft_dynset, nft_ct / use Linux >= 5.6 (NAT to address . port from a map)"
	for _, f := range []Finding{
		probeIn(o.natPre, "one-shot NAT pinholes (dynset delete, dnat to map data, nft_nat)", fix, dnat...),
		probeIn(o.natPost, "SNAT of NAT pinholes (snat to map data keyed by ct original)", fix, snat...),
		probeIn(o.natOut, "NAT pinholes of connections made on this host (nat output chain)", fix, dnat...),
		probeIn(o.natIn, "SNAT of NAT pinholes delivered to this host (nat input chain)", fix, snat...),
	} {
		out = append(out, f)
		if !f.OK {
			return out
		}
	}

	// Map elements with data and timeouts, and destroying them.
	key := fam4.pinKey(netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), 65535)
	err = c.SetAddElements(o.dnats[&fam4], []nftables.SetElement{{Key: key, Val: fam4.dnatData(netip.MustParseAddrPort("192.0.2.3:65535")), Timeout: time.Second}})
	if err == nil {
		err = c.SetAddElements(o.snats[&fam4], []nftables.SetElement{{Key: key, Val: netip.MustParseAddr("192.0.2.4").AsSlice(), Timeout: time.Second}})
	}
	if err == nil {
		err = c.Flush()
	}
	if err == nil {
		err = c.SetDestroyElements(o.dnats[&fam4], []nftables.SetElement{{Key: key}, {Key: key}})
		if err == nil {
			err = c.SetDestroyElements(o.snats[&fam4], []nftables.SetElement{{Key: key}})
		}
		if err == nil {
			err = c.Flush()
		}
	}
	if err != nil {
		return append(out, Finding{What: "cannot add and destroy NAT map elements with timeouts: " + err.Error(), Fix: fixFor(err, "use Linux >= 6.3")})
	}
	return append(out, Finding{OK: true, What: "kernel supports NAT map elements with timeouts and destroy"})
}

func checkCTEvents() Finding {
	if b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_events"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return Finding{
			What: "conntrack events are disabled (net.netfilter.nf_conntrack_events = 0): used pinholes are counted as expired",
			Fix:  "sysctl -w net.netfilter.nf_conntrack_events=2",
		}
	}
	c, err := conntrack.Dial(nil)
	if err != nil {
		return Finding{What: "cannot open a conntrack netlink socket: " + err.Error(), Fix: fixFor(err, "load nf_conntrack_netlink")}
	}
	defer c.Close()
	evCh := make(chan conntrack.Event)
	if _, err := c.Listen(evCh, 1, []netfilter.NetlinkGroup{netfilter.GroupCTNew}); err != nil {
		return Finding{What: "cannot subscribe to conntrack events: " + err.Error(), Fix: fixFor(err, "load nf_conntrack_netlink (CONFIG_NF_CT_NETLINK)")}
	}
	return Finding{OK: true, What: "conntrack new-connection events can be watched"}
}

var familyNames = map[nftables.TableFamily]string{
	nftables.TableFamilyIPv4: "ip",
	nftables.TableFamilyIPv6: "ip6",
	nftables.TableFamilyINet: "inet",
}

// checkHostRuleset looks at every input/forward base chain of other tables
// that drops by default or ends with a drop/reject rule, and checks that it
// accepts ftpgate's ct mark.
func checkHostRuleset(c *nftables.Conn, cfg Config) []Finding {
	chains, err := c.ListChains()
	if err != nil {
		return []Finding{{What: "cannot list nftables chains: " + err.Error(), Fix: fixFor(err, "check nftables")}}
	}
	line := acceptLine(cfg)
	rulesOf := map[*nftables.Chain][]*nftables.Rule{}
	getRules := func(ch *nftables.Chain) ([]*nftables.Rule, error) {
		if r, ok := rulesOf[ch]; ok {
			return r, nil
		}
		r, err := c.GetRules(ch.Table, ch)
		rulesOf[ch] = r
		return r, err
	}
	byName := func(t *nftables.Table, name string) *nftables.Chain {
		for _, ch := range chains {
			if ch.Name == name && ch.Table.Name == t.Name && ch.Table.Family == t.Family {
				return ch
			}
		}
		return nil
	}

	var out []Finding
	for _, ch := range chains {
		fam, ok := familyNames[ch.Table.Family]
		if !ok || ch.Hooknum == nil {
			continue
		}
		if *ch.Hooknum != *nftables.ChainHookInput && *ch.Hooknum != *nftables.ChainHookForward {
			continue
		}
		if ch.Table.Family == nftables.TableFamilyINet && (ch.Table.Name == cfg.Table || strings.HasPrefix(ch.Table.Name, "ftpgate_check_")) {
			continue
		}
		hook := "input"
		if *ch.Hooknum == *nftables.ChainHookForward {
			hook = "forward"
		}
		where := fmt.Sprintf("table %s %s chain %s", fam, ch.Table.Name, ch.Name)
		if ch.Name != hook {
			where += " (hook " + hook + ")"
		}
		rules, err := getRules(ch)
		if err != nil {
			out = append(out, Finding{What: fmt.Sprintf("cannot list the rules of %s: %v", where, err), Fix: fixFor(err, "check nftables")})
			continue
		}
		policyDrop := ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop
		lastDrop := len(rules) > 0 && isDropRule(rules[len(rules)-1])
		if !policyDrop && !lastDrop {
			continue
		}
		how := "drops by default"
		if !policyDrop {
			how = "ends with a drop rule"
		}
		acceptAt, dropsBefore := -1, 0
		for i, r := range rules {
			if policyDrop || i < len(rules)-1 {
				if acceptsMark(r, cfg) || jumpsToAccept(r, ch.Table, byName, getRules, cfg, 4) {
					acceptAt = i
					break
				}
			}
			if isDropRule(r) {
				dropsBefore++
			}
		}
		if acceptAt < 0 {
			out = append(out, Finding{
				What: fmt.Sprintf("%s %s and does not accept ftpgate's ct mark", where, how),
				Fix:  "add before its drops: " + line,
			})
			continue
		}
		what := fmt.Sprintf("%s %s and accepts ftpgate's ct mark", where, how)
		if dropsBefore > 0 {
			what += fmt.Sprintf(" (after %d drop/reject rules: make sure they do not match FTP data connections)", dropsBefore)
		}
		out = append(out, Finding{OK: true, What: what})
	}
	out = append(out, checkLegacyTables(cfg)...)
	if len(out) == 0 {
		out = append(out, Finding{OK: true, What: "no host chain drops forwarded traffic; nothing to add"})
	}
	return out
}

// legacyTableFiles name the x_tables (iptables-legacy) tables loaded in the
// calling thread's network namespace, one per line: /proc/net is the main
// thread's namespace, thread-self/net the locked thread's. A variable for
// tests.
var legacyTableFiles = []struct{ tool, path string }{
	{"iptables", "/proc/thread-self/net/ip_tables_names"},
	{"ip6tables", "/proc/thread-self/net/ip6_tables_names"},
}

// checkLegacyTables reports loaded iptables-legacy tables: their rules are
// not nf_tables rules, so checkHostRuleset cannot see whether they drop
// ftpgate's connections — and must not say there is nothing to add.
func checkLegacyTables(cfg Config) []Finding {
	var out []Finding
	for _, l := range legacyTableFiles {
		b, err := os.ReadFile(l.path)
		if err != nil {
			continue // x_tables not in the kernel: nothing loaded
		}
		names := strings.Fields(string(b))
		if len(names) == 0 {
			continue
		}
		slices.Sort(names)
		// Named -legacy: on hosts whose iptables is the nft variant, plain
		// iptables would add the line where these tables never look.
		out = append(out, Finding{OK: true, Warn: true, What: fmt.Sprintf(
			"legacy %[1]s tables are loaded (%[2]s) and check cannot read their rules: if their INPUT or FORWARD chain drops (policy DROP, DROP or REJECT rules), accept ftpgate's connections before the drops: %[1]s-legacy -I FORWARD -m connmark --mark %#[3]x/%#[4]x -j ACCEPT and %[1]s-legacy -I INPUT -m connmark --mark %#[3]x/%#[4]x -j ACCEPT",
			l.tool, strings.Join(names, ", "), cfg.CTMark, cfg.CTMask)})
	}
	return out
}

// isDropRule reports whether r ends in drop or reject.
func isDropRule(r *nftables.Rule) bool {
	if len(r.Exprs) == 0 {
		return false
	}
	switch e := r.Exprs[len(r.Exprs)-1].(type) {
	case *expr.Verdict:
		return e.Kind == expr.VerdictDrop
	case *expr.Reject:
		return true
	}
	for _, e := range r.Exprs {
		if _, ok := e.(*expr.Reject); ok {
			return true
		}
	}
	return false
}

// acceptsMark reports whether r accepts every connection carrying
// ftpgate's ct mark: ct mark [& M] ==/!= D ... accept (or iptables-nft's
// -m connmark --mark M/K -j ACCEPT), where nothing else in the rule can stop
// it from matching — no other condition (iifname, tcp dport, ct state, a
// limit, ...), only loads, counters, logs and statements that set things.
// A rule with other conditions accepts only some of ftpgate's connections.
func acceptsMark(r *nftables.Rule, cfg Config) bool {
	n := len(r.Exprs)
	if n == 0 {
		return false
	}
	if v, ok := r.Exprs[n-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictAccept {
		return false
	}
	// Track which registers hold (ct mark & mask).
	type val struct{ mask uint32 }
	regs := map[uint32]val{}
	matched := false
	for _, e := range r.Exprs[:n-1] {
		switch e := e.(type) {
		case *expr.Counter, *expr.Log:
			// Side effects only.
		case *expr.Ct:
			switch {
			case e.SourceRegister: // ct ... set: a side effect
			case e.Key == expr.CtKeyMARK:
				regs[e.Register] = val{mask: 0xffffffff}
			default:
				delete(regs, e.Register)
			}
		case *expr.Bitwise:
			v, ok := regs[e.SourceRegister]
			if !ok || len(e.Mask) != 4 || len(e.Xor) != 4 || binaryutil.NativeEndian.Uint32(e.Xor) != 0 {
				delete(regs, e.DestRegister)
				continue
			}
			regs[e.DestRegister] = val{mask: v.mask & binaryutil.NativeEndian.Uint32(e.Mask)}
		case *expr.Match:
			// iptables-nft: -m connmark --mark M/K; any other match is a
			// condition.
			if !xtConnmarkAccepts(e, cfg) {
				return false
			}
			matched = true
		case *expr.Cmp:
			v, ok := regs[e.Register]
			if !ok || len(e.Data) != 4 || !markPasses(e, v.mask, cfg) {
				return false // a condition on something else, or one ftpgate's mark fails
			}
			matched = true
		default:
			// A load (of something a later compare would test) is harmless
			// in itself; anything else — lookups, ranges, limits, quotas,
			// fib, socket — is a condition.
			reg, ok := destRegister(e)
			if !ok {
				if !setsOnly(e) {
					return false
				}
				continue
			}
			delete(regs, reg)
		}
	}
	return matched
}

// markPasses reports whether every connection carrying ftpgate's mark passes
// the compare c of (ct mark & mask).
func markPasses(c *expr.Cmp, mask uint32, cfg Config) bool {
	d := binaryutil.NativeEndian.Uint32(c.Data)
	if mask&^cfg.CTMask != 0 {
		// Compares bits ftpgate does not set: tolerate a plain
		// "ct mark == <mark>" (other bits are normally clear).
		return c.Op == expr.CmpOpEq && d == cfg.CTMark
	}
	switch c.Op {
	case expr.CmpOpEq:
		return d == cfg.CTMark&mask
	case expr.CmpOpNeq:
		return d != cfg.CTMark&mask
	}
	return false
}

// setsOnly reports whether e is a statement that sets something without
// testing anything: meta ... set, payload ... set.
func setsOnly(e expr.Any) bool {
	switch e := e.(type) {
	case *expr.Meta:
		return e.SourceRegister
	case *expr.Payload:
		return e.OperationType == expr.PayloadWrite
	}
	return false
}

// xtConnmarkAccepts decodes an iptables connmark match (struct
// xt_connmark_mtinfo1: u32 mark, u32 mask, u8 invert, host byte order).
func xtConnmarkAccepts(m *expr.Match, cfg Config) bool {
	info, ok := m.Info.(*xt.Unknown)
	if m.Name != "connmark" || m.Rev != 1 || !ok || len(*info) < 9 {
		return false
	}
	b := *info
	mark := binaryutil.NativeEndian.Uint32(b[0:4])
	mask := binaryutil.NativeEndian.Uint32(b[4:8])
	return b[8] == 0 && mask != 0 && mask&^cfg.CTMask == 0 && mark == cfg.CTMark&mask
}

func destRegister(e expr.Any) (uint32, bool) {
	switch e := e.(type) {
	case *expr.Meta:
		return e.Register, !e.SourceRegister
	case *expr.Payload:
		return e.DestRegister, e.OperationType == expr.PayloadLoad
	case *expr.Immediate:
		return e.Register, true
	}
	return 0, false
}

// jumpsToAccept reports whether r is an unconditional jump/goto to a chain of
// the same table that accepts ftpgate's mark (followed up to depth levels).
func jumpsToAccept(r *nftables.Rule, t *nftables.Table, byName func(*nftables.Table, string) *nftables.Chain,
	getRules func(*nftables.Chain) ([]*nftables.Rule, error), cfg Config, depth int) bool {
	if depth == 0 || len(r.Exprs) != 1 {
		return false
	}
	v, ok := r.Exprs[0].(*expr.Verdict)
	if !ok || (v.Kind != expr.VerdictJump && v.Kind != expr.VerdictGoto) {
		return false
	}
	ch := byName(t, v.Chain)
	if ch == nil {
		return false
	}
	rules, err := getRules(ch)
	if err != nil {
		return false
	}
	for _, sub := range rules {
		if acceptsMark(sub, cfg) || jumpsToAccept(sub, t, byName, getRules, cfg, depth-1) {
			return true
		}
		if isDropRule(sub) && len(sub.Exprs) == 1 {
			return false
		}
	}
	return false
}

// checkHostZones reports chains of other tables that set conntrack zones
// (nft "ct zone set", iptables "-j CT --zone"): the first zone set on a
// packet wins, so such a rule can move the connections ftpgate intercepts,
// or its answers on them, out of Config.InterceptZone — or ftpgate's rule
// can preempt the host's. Informational: whether they meet depends on what
// the rules match.
func checkHostZones(c *nftables.Conn, cfg Config) []Finding {
	chains, err := c.ListChains()
	if err != nil {
		return []Finding{{What: "cannot list nftables chains: " + err.Error(), Fix: fixFor(err, "check nftables")}}
	}
	var out []Finding
	for _, ch := range chains {
		fam, ok := familyNames[ch.Table.Family]
		if !ok || ch.Table.Family == nftables.TableFamilyINet && (ch.Table.Name == cfg.Table || strings.HasPrefix(ch.Table.Name, "ftpgate_check_")) {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			continue // reported by checkHostRuleset for the chains that matter there
		}
		if slices.ContainsFunc(rules, setsZone) {
			out = append(out, Finding{OK: true, What: fmt.Sprintf(
				"table %s %s chain %s sets conntrack zones: make sure it sets none on TCP to or from ports %s of addresses not on this host — ftpgate puts the control connections it intercepts, both ways, in zone %d at priority raw (-300), and the first zone set on a packet wins",
				fam, ch.Table.Name, ch.Name, portList(cfg.InterceptPorts), cfg.InterceptZone)})
		}
	}
	return out
}

// setsZone reports whether r sets a conntrack zone.
func setsZone(r *nftables.Rule) bool {
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Ct:
			if e.SourceRegister && e.Key == expr.CtKeyZONE {
				return true
			}
		case *expr.Target:
			// iptables-nft -j CT: struct xt_ct_target_info(_v1): u16 flags,
			// u16 zone, ... in host byte order; flags XT_CT_ZONE_MARK
			// (0x10) takes the zone from the packet mark.
			if info, ok := e.Info.(*xt.Unknown); ok && e.Name == "CT" && len(*info) >= 4 {
				b := *info
				if binaryutil.NativeEndian.Uint16(b[2:4]) != 0 || binaryutil.NativeEndian.Uint16(b[0:2])&0x10 != 0 {
					return true
				}
			}
		}
	}
	return false
}

func portList(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}
