package nft

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol tags the policy routing rule and route ftpgate installs
// ("proto 70" in `ip rule` and `ip route` listings; 70 is unassigned in
// iproute2's rt_protos). ftpgate deletes only rules and routes that carry
// it, and anything else that uses its fwmark or route table makes it refuse
// to start.
const RouteProtocol = 70

// routing is the fwmark policy routing tproxy needs:
//
//	ip rule add fwmark FWMark lookup RouteTable proto 70
//	ip route add local default dev lo table RouteTable proto 70
//
// per intercepted family.
type routing struct {
	rules  []*netlink.Rule
	routes []*netlink.Route
}

func fwmarkRule(cfg Config, family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Mark = cfg.FWMark
	r.Table = cfg.RouteTable
	r.Protocol = RouteProtocol
	return r
}

func localDefaultRoute(cfg Config, family, loIndex int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if family == netlink.FAMILY_V6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		LinkIndex: loIndex,
		Dst:       dst,
		Table:     cfg.RouteTable,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Family:    family,
		Protocol:  RouteProtocol,
	}
}

func familyName(family int) string {
	if family == netlink.FAMILY_V6 {
		return "-6"
	}
	return "-4"
}

// install adds the rules and routes. It first looks at what the families'
// policy routing holds: a rule or route of an earlier ftpgate that could not
// remove them (killed) is deleted; anything else that uses the fwmark or the
// route table is someone else's — the tproxy tutorials' values are ftpgate's
// defaults — and install refuses, changing nothing. So it does when the
// tagged rule and route may be those of another transparent ftpgate running
// in the namespace (see liveOwners): c lists the tables.
func (rt *routing) install(h *netlink.Handle, c *nftables.Conn, cfg Config) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return wrap("netlink", "find interface lo", err)
	}
	fams := routedFamilies(cfg)
	staleRules, staleRoutes, conflicts, err := inspectFamilies(h, cfg, fams)
	if err != nil {
		return err
	}
	if len(conflicts) == 0 && len(staleRules)+len(staleRoutes) > 0 {
		owned, err := ownedByLive(c, cfg, describeFound(h, staleRules, staleRoutes))
		if err != nil {
			return err
		}
		if owned != "" {
			return fmt.Errorf("netlink: policy routing for tproxy: %s", owned)
		}
	}
	if len(conflicts) > 0 {
		return fmt.Errorf("netlink: policy routing for tproxy: fwmark %#x or route table %d is in use:\n  %s\n— %s",
			cfg.FWMark, cfg.RouteTable, strings.Join(conflicts, "\n  "), RoutingConflictFix(cfg))
	}
	for i := range staleRules {
		r := &staleRules[i]
		if err := h.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			return wrap("netlink", fmt.Sprintf("ip %s rule del %s (left over from an earlier run)", familyName(r.Family), describeRule(*r)), err)
		}
	}
	for i := range staleRoutes {
		r := &staleRoutes[i]
		if err := h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return wrap("netlink", fmt.Sprintf("ip %s route del %s (left over from an earlier run)", familyName(r.Family), describeRoute(*r, linkName(h, r.LinkIndex))), err)
		}
	}
	for _, fam := range fams {
		route := localDefaultRoute(cfg, fam, lo.Attrs().Index)
		if err := h.RouteAdd(route); err != nil {
			what := fmt.Sprintf("ip %s route add local default dev lo table %d proto %d", familyName(fam), cfg.RouteTable, RouteProtocol)
			if errors.Is(err, unix.ENETDOWN) {
				return fmt.Errorf("netlink: %s: %w — bring lo up (ip link set lo up)", what, err)
			}
			return wrap("netlink", what, err)
		}
		rt.routes = append(rt.routes, route)

		rule := fwmarkRule(cfg, fam)
		if err := h.RuleAdd(rule); err != nil {
			return wrap("netlink", fmt.Sprintf("ip %s rule add fwmark %#x lookup %d proto %d", familyName(fam), cfg.FWMark, cfg.RouteTable, RouteProtocol), err)
		}
		rt.rules = append(rt.rules, rule)
	}
	return nil
}

// routedFamilies are the families install sets up policy routing for.
func routedFamilies(cfg Config) []int {
	var fams []int
	if cfg.interceptV4() {
		fams = append(fams, netlink.FAMILY_V4)
	}
	if cfg.interceptV6() {
		fams = append(fams, netlink.FAMILY_V6)
	}
	return fams
}

// inspectFamilies is inspectRouting over fams.
func inspectFamilies(h *netlink.Handle, cfg Config, fams []int) (staleRules []netlink.Rule, staleRoutes []netlink.Route, conflicts []string, err error) {
	for _, fam := range fams {
		sr, sro, c, err := inspectRouting(h, cfg, fam)
		if err != nil {
			return nil, nil, nil, err
		}
		staleRules, staleRoutes, conflicts = append(staleRules, sr...), append(staleRoutes, sro...), append(conflicts, c...)
	}
	return staleRules, staleRoutes, conflicts, nil
}

// PolicyRouting is what InspectPolicyRouting found for cfg's policy routing.
type PolicyRouting struct {
	// Conflicts: someone else's use of the fwmark or the route table (or
	// another running ftpgate's): New refuses to start.
	Conflicts []string
	// Held: ftpgate's tagged rule and route, held by the ftpgate of
	// cfg.Table running in the namespace: New refuses a second one.
	Held []string
	// Leftovers: ftpgate's tagged rule and route left by one that could not
	// remove them (killed): New replaces them.
	Leftovers []string
}

// InspectPolicyRouting reports, changing nothing, what New would find in the
// calling thread's network namespace for cfg's policy routing. For `ftpgate
// check`, and for `ftpgate run` to say what it replaces.
func InspectPolicyRouting(cfg Config) (PolicyRouting, error) {
	var pr PolicyRouting
	cfg, err := cfg.withDefaults()
	if err != nil {
		return pr, err
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return pr, wrap("netlink", "open rtnetlink", err)
	}
	defer h.Close()
	rules, routes, conflicts, err := inspectFamilies(h, cfg, routedFamilies(cfg))
	if err != nil {
		return pr, err
	}
	pr.Conflicts = conflicts
	if len(rules)+len(routes) == 0 {
		return pr, nil
	}
	c, err := nftables.New()
	if err != nil {
		return pr, wrap("nftables", "open netlink socket", err)
	}
	defer c.CloseLasting()
	found := describeFound(h, rules, routes)
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return pr, wrap("nftables", "list tables", err)
	}
	for _, t := range tables {
		// The kernel removes an owner-flagged table with its process.
		if t.Name == cfg.Table && t.Flags&nftables.TableFlagOwner != 0 {
			pr.Held = found
			return pr, nil
		}
	}
	owned, err := ownedByLive(c, cfg, found)
	if err != nil {
		return pr, err
	}
	if owned != "" {
		pr.Conflicts = append(pr.Conflicts, owned)
		return pr, nil
	}
	pr.Leftovers = found
	return pr, nil
}

// describeFound spells tagged rules and routes as ip(8) would.
func describeFound(h *netlink.Handle, rules []netlink.Rule, routes []netlink.Route) []string {
	var found []string
	for _, r := range rules {
		found = append(found, fmt.Sprintf("ip %s rule %s", familyName(r.Family), describeRule(r)))
	}
	for _, r := range routes {
		found = append(found, fmt.Sprintf("ip %s route %s", familyName(r.Family), describeRoute(r, linkName(h, r.LinkIndex))))
	}
	return found
}

// ownedByLive says, if the tagged rules and routes found for cfg (found,
// as describeFound spells them) may belong to another transparent ftpgate running in the
// namespace, whose; "" if they can only be left by a killed one. Its owner
// table "inet X" (X is not cfg.Table) is ftpgate's if it has the
// intercept_ports set; the kernel removes it with its process, so it exists
// only while that ftpgate runs. A reverse-mode one (its set empty) has no
// policy routing, nor has one whose rules set another fwmark (its rule,
// with the same table, would be a conflict).
func ownedByLive(c *nftables.Conn, cfg Config, found []string) (string, error) {
	owners, err := liveOwners(c, cfg)
	if err != nil || len(owners) == 0 {
		return "", err
	}
	return fmt.Sprintf("fwmark %#x / route table %d are used by the running ftpgate of table %s (%s) — give this instance another --fwmark and --route-table",
		cfg.FWMark, cfg.RouteTable, strings.Join(owners, ", "), strings.Join(found, "; ")), nil
}

// liveOwners returns the owner tables ("inet X", X not cfg.Table) of the
// transparent ftpgates running in c's namespace that may use cfg.FWMark.
func liveOwners(c *nftables.Conn, cfg Config) ([]string, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, wrap("nftables", "list tables", err)
	}
	var out []string
	for _, t := range tables {
		if t.Name == cfg.Table || t.Flags&nftables.TableFlagOwner == 0 {
			continue
		}
		set, err := c.GetSetByName(t, setInterceptPort)
		if err != nil {
			continue // no such set: not ftpgate's
		}
		if elems, err := c.GetSetElements(set); err == nil && len(elems) == 0 {
			continue // reverse mode
		}
		if mark, ok := fwmarkOf(c, t); ok && mark != cfg.FWMark {
			continue
		}
		out = append(out, "inet "+t.Name)
	}
	return out, nil
}

// fwmarkOf reads the fwmark the transparent ftpgate of table t sets (meta
// mark set, in its prerouting chain).
func fwmarkOf(c *nftables.Conn, t *nftables.Table) (uint32, bool) {
	rules, err := c.GetRules(t, &nftables.Chain{Name: chainPrerouting, Table: t})
	if err != nil {
		return 0, false
	}
	for _, r := range rules {
		var imm []byte
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Immediate:
				if e.Register == 1 {
					imm = e.Data
				}
			case *expr.Meta:
				if e.Key == expr.MetaKeyMARK && e.SourceRegister && e.Register == 1 && len(imm) == 4 {
					return binaryutil.NativeEndian.Uint32(imm), true
				}
			}
		}
	}
	return 0, false
}

// RoutingConflictFix says what to do when InspectPolicyRouting or New finds
// conflicts.
func RoutingConflictFix(cfg Config) string {
	return fmt.Sprintf("start ftpgate with a --fwmark and a --route-table nothing else uses (see `ip rule` and `ip route show table all`; now --fwmark %#x, --route-table %d); if these were left by an ftpgate older than this version (untagged, no \"proto %d\"), delete them",
		cfg.FWMark, cfg.RouteTable, RouteProtocol)
}

// inspectRouting sorts the family's rules and the routes of cfg.RouteTable
// into ftpgate's leftovers (tagged with RouteProtocol, as install adds them)
// and conflicts (described for the error).
func inspectRouting(h *netlink.Handle, cfg Config, fam int) (staleRules []netlink.Rule, staleRoutes []netlink.Route, conflicts []string, err error) {
	rules, err := retryDump(func() ([]netlink.Rule, error) { return h.RuleList(fam) })
	if err != nil {
		return nil, nil, nil, wrap("netlink", fmt.Sprintf("ip %s rule list", familyName(fam)), err)
	}
	for _, r := range rules {
		r.Family = fam
		switch {
		case isOwnRule(r, cfg):
			staleRules = append(staleRules, r)
		case r.Table == cfg.RouteTable:
			conflicts = append(conflicts, fmt.Sprintf("ip %s rule %s uses table %d", familyName(fam), describeRule(r), cfg.RouteTable))
		case matchesMark(r, cfg.FWMark):
			conflicts = append(conflicts, fmt.Sprintf("ip %s rule %s matches fwmark %#x", familyName(fam), describeRule(r), cfg.FWMark))
		}
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(fam, &netlink.Route{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, nil, nil, wrap("netlink", fmt.Sprintf("ip %s route show table %d", familyName(fam), cfg.RouteTable), err)
	}
	for _, r := range routes {
		if r.Protocol == RouteProtocol {
			staleRoutes = append(staleRoutes, r)
			continue
		}
		conflicts = append(conflicts, fmt.Sprintf("ip %s route %s is in table %d", familyName(fam), describeRoute(r, linkName(h, r.LinkIndex)), cfg.RouteTable))
	}
	return staleRules, staleRoutes, conflicts, nil
}

// isOwnRule reports whether r is the rule install adds for cfg: tagged, with
// the fwmark and the table and no other selector. A tagged rule for another
// mark or table (another ftpgate in this namespace, or an earlier run with
// other settings) is not deleted.
func isOwnRule(r netlink.Rule, cfg Config) bool {
	return r.Protocol == RouteProtocol && r.Mark == cfg.FWMark && r.Table == cfg.RouteTable &&
		(r.Mask == nil || *r.Mask == 0xffffffff) && r.Src == nil && r.Dst == nil &&
		r.IifName == "" && r.OifName == "" && !r.Invert
}

// matchesMark reports whether r selects packets carrying fwmark. An
// inverted rule ("not fwmark X", as WireGuard's wg-quick installs) selects
// everything but its own mark: it is not a use of ftpgate's, and ftpgate's
// rule (added without a priority) comes before it anyway.
func matchesMark(r netlink.Rule, fwmark uint32) bool {
	if r.Invert || (r.Mark == 0 && r.Mask == nil) {
		return false // no (positive) fwmark selector
	}
	mask := uint32(0xffffffff)
	if r.Mask != nil {
		mask = *r.Mask
	}
	return fwmark&mask == r.Mark
}

// describeRule writes r roughly as `ip rule` lists it.
func describeRule(r netlink.Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:", r.Priority)
	if r.Invert {
		b.WriteString(" not")
	}
	if r.Src != nil {
		fmt.Fprintf(&b, " from %s", r.Src)
	} else {
		b.WriteString(" from all")
	}
	if r.Dst != nil {
		fmt.Fprintf(&b, " to %s", r.Dst)
	}
	if r.Mark != 0 || r.Mask != nil {
		fmt.Fprintf(&b, " fwmark %#x", r.Mark)
		if r.Mask != nil && *r.Mask != 0xffffffff {
			fmt.Fprintf(&b, "/%#x", *r.Mask)
		}
	}
	if r.IifName != "" {
		fmt.Fprintf(&b, " iif %s", r.IifName)
	}
	if r.OifName != "" {
		fmt.Fprintf(&b, " oif %s", r.OifName)
	}
	fmt.Fprintf(&b, " lookup %d", r.Table)
	if r.Protocol != 0 {
		fmt.Fprintf(&b, " proto %d", r.Protocol)
	}
	return b.String()
}

// describeRoute writes r, whose device is dev, roughly as
// `ip route show table N` lists it.
func describeRoute(r netlink.Route, dev string) string {
	s := "default"
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones != 0 {
			s = r.Dst.String()
		}
	}
	switch r.Type {
	case unix.RTN_LOCAL:
		s = "local " + s
	case unix.RTN_BLACKHOLE:
		s = "blackhole " + s
	case unix.RTN_UNREACHABLE:
		s = "unreachable " + s
	}
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	if dev != "" {
		s += " dev " + dev
	}
	return s + fmt.Sprintf(" table %d proto %d", r.Table, r.Protocol)
}

// linkName names interface index, for messages ("" for none).
func linkName(h *netlink.Handle, index int) string {
	if index <= 0 {
		return ""
	}
	if l, err := h.LinkByIndex(index); err == nil {
		return l.Attrs().Name
	}
	return fmt.Sprintf("#%d", index)
}

// retryDump repeats a netlink dump that a concurrent change interrupted.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var res []T
	var err error
	for range 3 {
		if res, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return res, err
}

// remove deletes what install added; missing objects are not an error. The
// rule and route carry RouteProtocol, so the kernel deletes only ftpgate's.
func (rt *routing) remove(h *netlink.Handle) error {
	var errs []error
	for _, r := range rt.rules {
		if err := h.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, wrap("netlink", fmt.Sprintf("ip %s rule del fwmark %#x lookup %d proto %d", familyName(r.Family), r.Mark, r.Table, RouteProtocol), err))
		}
	}
	for _, r := range rt.routes {
		if err := h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, wrap("netlink", fmt.Sprintf("ip %s route del local default table %d proto %d", familyName(r.Family), r.Table, RouteProtocol), err))
		}
	}
	rt.rules, rt.routes = nil, nil
	return errors.Join(errs...)
}
