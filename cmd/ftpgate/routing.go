package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/nft"
)

// In transparent mode the nft package installs, per intercepted family,
//
//	ip rule add fwmark FWMARK lookup TABLE
//	ip route replace local default dev lo table TABLE
//
// deleting any identical rule first, and deletes both on exit. Whatever else
// uses that table or that mark is therefore broken: a route of the table is
// replaced or deleted, traffic another rule sends to the table is delivered
// to this host, and another rule matching the mark steals the intercepted
// packets. The functions here look (read-only) before nft touches anything.

// policyRouting is what one family's policy routing holds that concerns
// ftpgate: every rule, and the routes of its table.
type policyRouting struct {
	family int
	rules  []netlink.Rule
	routes []netlink.Route
	lo     int            // index of lo
	names  map[int]string // interface names by index, for messages
}

// routingFindings sorts what st holds into conflicts (someone else's use of
// the mark or the table: ftpgate must not start) and leftovers (ftpgate's own
// rule or route, from an earlier run that could not remove them, or identical
// ones of someone else: ftpgate replaces them and deletes them on exit).
func routingFindings(fwmark uint32, table int, st policyRouting) (conflicts, leftovers []string) {
	for _, r := range st.rules {
		switch {
		case isOwnRule(r, fwmark, table):
			leftovers = append(leftovers, describeRule(st.family, r))
		case r.Table == table:
			conflicts = append(conflicts, describeRule(st.family, r)+": uses table "+fmt.Sprint(table)+", which ftpgate points at this host")
		case matchesMark(r, fwmark):
			conflicts = append(conflicts, describeRule(st.family, r)+fmt.Sprintf(": matches fwmark %#x, which ftpgate gives intercepted packets", fwmark))
		}
	}
	for _, rt := range st.routes {
		d := describeRoute(st.family, rt, st.names)
		if isOwnRoute(rt, st.lo) {
			leftovers = append(leftovers, d)
		} else {
			conflicts = append(conflicts, d+": ftpgate replaces the table's default route and deletes it on exit")
		}
	}
	return conflicts, leftovers
}

// isOwnRule reports whether r is a rule nft installs, or deletes at start as
// a leftover of an earlier run: fwmark and table, no other selector.
func isOwnRule(r netlink.Rule, fwmark uint32, table int) bool {
	return r.Mark == fwmark && r.Table == table && r.Src == nil && r.Dst == nil &&
		r.IifName == "" && r.OifName == "" && !r.Invert && (r.Mask == nil || *r.Mask == 0xffffffff)
}

// matchesMark reports whether r selects packets carrying exactly fwmark.
func matchesMark(r netlink.Rule, fwmark uint32) bool {
	if r.Mark == 0 && r.Mask == nil {
		return false // no fwmark selector
	}
	mask := uint32(0xffffffff)
	if r.Mask != nil {
		mask = *r.Mask
	}
	return (fwmark&mask == r.Mark) != r.Invert
}

// isOwnRoute reports whether rt is the route nft installs.
func isOwnRoute(rt netlink.Route, lo int) bool {
	return rt.Type == unix.RTN_LOCAL && isDefault(rt.Dst) && rt.LinkIndex == lo
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

func familyFlag(family int) string {
	if family == netlink.FAMILY_V6 {
		return "ip -6"
	}
	return "ip -4"
}

// describeRule writes r roughly as 'ip rule' lists it.
func describeRule(family int, r netlink.Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s rule %d:", familyFlag(family), r.Priority)
	if r.Invert {
		b.WriteString(" not")
	}
	from := "all"
	if r.Src != nil {
		from = r.Src.String()
	}
	fmt.Fprintf(&b, " from %s", from)
	if r.Dst != nil {
		fmt.Fprintf(&b, " to %s", r.Dst)
	}
	if r.Mark != 0 || r.Mask != nil {
		fmt.Fprintf(&b, " fwmark %#x", r.Mark)
		if r.Mask != nil && *r.Mask != 0xffffffff { // the kernel lists the full mask too
			fmt.Fprintf(&b, "/%#x", *r.Mask)
		}
	}
	if r.IifName != "" {
		fmt.Fprintf(&b, " iif %s", r.IifName)
	}
	if r.OifName != "" {
		fmt.Fprintf(&b, " oif %s", r.OifName)
	}
	if r.Table != 0 {
		fmt.Fprintf(&b, " lookup %d", r.Table)
	}
	return b.String()
}

// describeRoute writes rt roughly as 'ip route show table N' lists it.
func describeRoute(family int, rt netlink.Route, names map[int]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s route:", familyFlag(family))
	if rt.Type != unix.RTN_UNICAST {
		fmt.Fprintf(&b, " %s", routeTypes[rt.Type])
	}
	if isDefault(rt.Dst) {
		b.WriteString(" default")
	} else {
		fmt.Fprintf(&b, " %s", rt.Dst)
	}
	if rt.Gw != nil {
		fmt.Fprintf(&b, " via %s", rt.Gw)
	}
	if rt.LinkIndex > 0 {
		name := names[rt.LinkIndex]
		if name == "" {
			name = fmt.Sprintf("#%d", rt.LinkIndex)
		}
		fmt.Fprintf(&b, " dev %s", name)
	}
	fmt.Fprintf(&b, " table %d", rt.Table)
	return b.String()
}

var routeTypes = map[int]string{
	unix.RTN_UNSPEC: "unspec", unix.RTN_UNICAST: "unicast", unix.RTN_LOCAL: "local", unix.RTN_BROADCAST: "broadcast",
	unix.RTN_ANYCAST: "anycast", unix.RTN_MULTICAST: "multicast", unix.RTN_BLACKHOLE: "blackhole",
	unix.RTN_UNREACHABLE: "unreachable", unix.RTN_PROHIBIT: "prohibit", unix.RTN_THROW: "throw", unix.RTN_NAT: "nat",
}

// readPolicyRouting reads the rules and the routes of table of each family
// cfg intercepts, in the calling thread's network namespace. It only reads.
func readPolicyRouting(cfg nft.Config) ([]policyRouting, error) {
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	names, lo := map[int]string{}, 0
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
		if l.Attrs().Name == "lo" {
			lo = l.Attrs().Index
		}
	}
	var out []policyRouting
	for _, fam := range interceptedFamilies(cfg) {
		st := policyRouting{family: fam, lo: lo, names: names}
		if st.rules, err = retryDump(func() ([]netlink.Rule, error) { return netlink.RuleList(fam) }); err != nil {
			return nil, fmt.Errorf("%s rule list: %w", familyFlag(fam), err)
		}
		st.routes, err = retryDump(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(fam, &netlink.Route{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("%s route show table %d: %w", familyFlag(fam), cfg.RouteTable, err)
		}
		out = append(out, st)
	}
	return out, nil
}

// interceptedFamilies are the families nft installs policy routing for.
func interceptedFamilies(cfg nft.Config) []int {
	var fams []int
	if cfg.TProxy4.IsValid() {
		fams = append(fams, netlink.FAMILY_V4)
	}
	if cfg.TProxy6.IsValid() {
		fams = append(fams, netlink.FAMILY_V6)
	}
	return fams
}

// retryDump repeats a netlink dump that a concurrent change interrupted.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var (
		res []T
		err error
	)
	for range 3 {
		if res, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return res, err
}

// policyRoutingReport reads the policy routing for cfg and sorts it into
// conflicts and leftovers (see routingFindings).
func policyRoutingReport(cfg nft.Config) (conflicts, leftovers []string, err error) {
	states, err := readPolicyRouting(cfg)
	if err != nil {
		return nil, nil, err
	}
	for _, st := range states {
		c, l := routingFindings(cfg.FWMark, cfg.RouteTable, st)
		conflicts, leftovers = append(conflicts, c...), append(leftovers, l...)
	}
	return conflicts, leftovers, nil
}

// conflictFix says what to do about conflicts.
func conflictFix(cfg nft.Config) string {
	return fmt.Sprintf("choose a --route-table that nothing else uses (ip route show table all | grep 'table N') and a --fwmark no ip rule matches (now: --route-table %d, --fwmark %d)", cfg.RouteTable, cfg.FWMark)
}

// checkPolicyRouting refuses to start when another configuration uses the
// fwmark or the route table, and warns about leftovers that nft replaces.
func checkPolicyRouting(cfg nft.Config, log *slog.Logger) error {
	conflicts, leftovers, err := policyRoutingReport(cfg)
	if err != nil {
		// nft.New reports an unusable rtnetlink itself, with a hint.
		log.Warn("cannot inspect policy routing before installing it", "err", err)
		return nil
	}
	if len(conflicts) > 0 {
		return fmt.Errorf("policy routing already uses ftpgate's route table or fwmark:\n  %s\n— %s",
			strings.Join(conflicts, "\n  "), conflictFix(cfg))
	}
	if len(leftovers) > 0 {
		log.Warn("ftpgate's policy routing is already there (left by an earlier run that was killed, or set up by hand): ftpgate replaces it and deletes it on exit",
			"found", strings.Join(leftovers, "; "))
	}
	return nil
}
