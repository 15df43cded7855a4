package nft

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routing is the fwmark policy routing tproxy needs:
//
//	ip rule add fwmark FWMark lookup RouteTable
//	ip route replace local default dev lo table RouteTable
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
	}
}

func familyName(family int) string {
	if family == netlink.FAMILY_V6 {
		return "-6"
	}
	return "-4"
}

// install adds the rules and routes, replacing identical leftovers of an
// earlier run (which may have been killed before it could remove them).
func (rt *routing) install(h *netlink.Handle, cfg Config) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return wrap("netlink", "find interface lo", err)
	}
	var fams []int
	if cfg.interceptV4() {
		fams = append(fams, netlink.FAMILY_V4)
	}
	if cfg.interceptV6() {
		fams = append(fams, netlink.FAMILY_V6)
	}
	for _, fam := range fams {
		route := localDefaultRoute(cfg, fam, lo.Attrs().Index)
		if err := h.RouteReplace(route); err != nil {
			what := fmt.Sprintf("ip %s route replace local default dev lo table %d", familyName(fam), cfg.RouteTable)
			if errors.Is(err, unix.ENETDOWN) {
				return fmt.Errorf("netlink: %s: %w — bring lo up (ip link set lo up)", what, err)
			}
			return wrap("netlink", what, err)
		}
		rt.routes = append(rt.routes, route)

		rule := fwmarkRule(cfg, fam)
		if err := deleteRules(h, rule); err != nil {
			return err
		}
		if err := h.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return wrap("netlink", fmt.Sprintf("ip %s rule add fwmark %#x lookup %d", familyName(fam), cfg.FWMark, cfg.RouteTable), err)
		}
		rt.rules = append(rt.rules, rule)
	}
	return nil
}

// deleteRules removes existing rules identical to r (fwmark + table, no
// other selector).
func deleteRules(h *netlink.Handle, r *netlink.Rule) error {
	existing, err := h.RuleListFiltered(r.Family, r, netlink.RT_FILTER_MARK|netlink.RT_FILTER_TABLE)
	if err != nil {
		return wrap("netlink", fmt.Sprintf("ip %s rule list", familyName(r.Family)), err)
	}
	for i := range existing {
		old := existing[i]
		if old.Src != nil || old.Dst != nil || old.IifName != "" || old.OifName != "" || old.Invert ||
			(old.Mask != nil && *old.Mask != 0xffffffff) {
			continue
		}
		old.Family = r.Family
		if err := h.RuleDel(&old); err != nil && !errors.Is(err, unix.ENOENT) {
			return wrap("netlink", fmt.Sprintf("ip %s rule del fwmark %#x lookup %d (left over from an earlier run)", familyName(r.Family), r.Mark, r.Table), err)
		}
	}
	return nil
}

// remove deletes what install added; missing objects are not an error.
func (rt *routing) remove(h *netlink.Handle) error {
	var errs []error
	for _, r := range rt.rules {
		if err := h.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, wrap("netlink", fmt.Sprintf("ip %s rule del fwmark %#x lookup %d", familyName(r.Family), r.Mark, r.Table), err))
		}
	}
	for _, r := range rt.routes {
		if err := h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, wrap("netlink", fmt.Sprintf("ip %s route del local default table %d", familyName(r.Family), r.Table), err))
		}
	}
	rt.rules, rt.routes = nil, nil
	return errors.Join(errs...)
}
