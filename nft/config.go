// Package nft is the kernel side of ftpgate: the owner-flagged nftables table
// "inet ftpgate" with the transparent-interception rules, the one-shot pinhole
// sets, the NAT pinholes (one-shot keys with DNAT/SNAT timeout maps, in nat
// chains) and the fwmark policy routing that tproxy needs.
//
// A Firewall is bound to the network namespace of the thread that calls New:
// every netlink socket it uses (nftables, conntrack events and queries,
// rtnetlink) is opened there, once, and kept for the Firewall's life.
package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/ftpgate/ftpgate/proxy"
)

// Defaults used by Config.
const (
	DefaultTable      = "ftpgate"
	DefaultCTMark     = 0x100
	DefaultCTMask     = 0x100
	DefaultFWMark     = 1
	DefaultRouteTable = 100
	// DefaultInterceptZone is the conntrack zone of the control connections
	// ftpgate intercepts in transparent mode: 0x4654, "FT" (nft lists it as
	// 18004).
	DefaultInterceptZone = 0x4654
)

var (
	// DefaultTProxy4 is where intercepted IPv4 control connections are diverted to.
	DefaultTProxy4 = netip.MustParseAddrPort("127.0.0.1:2121")
	// DefaultTProxy6 is where intercepted IPv6 control connections are diverted to.
	DefaultTProxy6 = netip.MustParseAddrPort("[::1]:2121")
	// DefaultInterceptPorts are the FTP control ports intercepted in transparent mode.
	DefaultInterceptPorts = []uint16{21}
)

// expireGrace is added to a pinhole's ttl before it is reported as expired,
// so that a connection made just before the kernel expired the element still
// has its conntrack event delivered and counted as "used".
const expireGrace = time.Second

// pinSetSize bounds the number of outstanding pinholes per family (the size
// nft itself gives dynamic sets).
const pinSetSize = 65535

// Config describes what New installs.
type Config struct {
	// Table is the name of the inet table (default "ftpgate").
	Table string
	// Intercept installs the tproxy interception rule, the socket-transparent
	// return rule and the fwmark policy routing (transparent mode).
	Intercept bool
	// InterceptPorts are the TCP ports intercepted (default {21}).
	InterceptPorts []uint16
	// TProxy4 and TProxy6 are the listener addresses intercepted connections are
	// diverted to. When both are the zero value, both defaults are used
	// (127.0.0.1:2121 and [::1]:2121); when only one is set, the other family
	// is not intercepted.
	TProxy4 netip.AddrPort
	TProxy6 netip.AddrPort
	// CTMark/CTMask: every admitted connection gets
	// ct mark = (ct mark &^ CTMask) | CTMark. Default 0x100/0x100. A zero
	// CTMask with a non-zero CTMark means CTMask = CTMark.
	CTMark, CTMask uint32
	// FWMark is the packet mark set on tproxy'd packets and on return traffic
	// of transparent sockets; policy routing sends it to RouteTable (default 1).
	FWMark uint32
	// RouteTable holds the "local default dev lo" routes (default 100).
	// Both must be ftpgate's alone: in transparent mode New refuses to start
	// when a rule or route it did not tag (RouteProtocol) uses either.
	RouteTable int
	// InterceptZone is, in transparent mode, the conntrack zone of the
	// control connections ftpgate intercepts — both halves: the clients'
	// packets the tproxy rule diverts and ftpgate's answers on them —
	// default DefaultInterceptZone; it cannot be zone 0. Everything else,
	// ftpgate's upstream connections included, stays in zone 0.
	//
	// An upstream connection uses the client's address, and the kernel picks
	// its source port checking only the socket table: without a zone apart,
	// its conntrack tuple (client:port -> server:21) can equal that of
	// another intercepted connection of the same client, and the two
	// connections then share one conntrack entry and hang. The intercepted
	// side is the one that can be told before conntrack runs, by the same
	// match as the tproxy rule (an intercept port of a foreign address).
	// The upstream side cannot: its replies come from port 21 like the
	// replies to any connection the gateway forwards to an FTP server (a
	// port forward of the gateway's own address, which tproxy leaves alone),
	// and when the host masquerades the upstream they are not even addressed
	// to a socket of ftpgate's until conntrack has undone the NAT. Zoning
	// the upstreams by port broke such port forwards: the server's replies
	// went to the zone, found no conntrack entry there and were invalid.
	InterceptZone uint16
	// OnPinholeEnd, if not nil, is called exactly once per pinhole when it
	// ends, with how (PinholeEnd).
	// It is called without locks held, from an internal goroutine or from the
	// goroutine calling Pinhole.Close / Open / Firewall.Close. It must not
	// block and must not call Firewall.Close.
	OnPinholeEnd func(f proxy.Flow, end PinholeEnd)
	// OnDataEnd, if not nil, is called when the conntrack entry of a data
	// connection admitted by a pinhole is destroyed, with the kernel's byte
	// counters of its original and reply directions (zero unless
	// net.netfilter.nf_conntrack_acct=1). TCP entries outlive the connection
	// by the conntrack TIME_WAIT timeout.
	OnDataEnd func(f proxy.Flow, origBytes, replyBytes uint64)
}

// Validate reports whether New would accept cfg, after filling in the
// defaults the way New does. The error starts with "nft: invalid config:"
// and holds one line per problem, each saying what to change; it is nil
// for a valid cfg. Validate does not touch the kernel: New can still fail
// on what only the host can tell (privileges, routing already in use).
func (cfg Config) Validate() error {
	_, err := cfg.withDefaults()
	return err
}

// withDefaults returns cfg with defaults filled in and checks it.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if len(cfg.InterceptPorts) == 0 {
		cfg.InterceptPorts = slices.Clone(DefaultInterceptPorts)
	} else {
		cfg.InterceptPorts = slices.Clone(cfg.InterceptPorts)
		slices.Sort(cfg.InterceptPorts)
		cfg.InterceptPorts = slices.Compact(cfg.InterceptPorts)
	}
	if !cfg.TProxy4.IsValid() && !cfg.TProxy6.IsValid() {
		cfg.TProxy4, cfg.TProxy6 = DefaultTProxy4, DefaultTProxy6
	}
	if cfg.CTMark == 0 && cfg.CTMask == 0 {
		cfg.CTMark, cfg.CTMask = DefaultCTMark, DefaultCTMask
	}
	if cfg.CTMask == 0 {
		cfg.CTMask = cfg.CTMark
	}
	if cfg.FWMark == 0 {
		cfg.FWMark = DefaultFWMark
	}
	if cfg.RouteTable == 0 {
		cfg.RouteTable = DefaultRouteTable
	}
	if cfg.InterceptZone == 0 {
		cfg.InterceptZone = DefaultInterceptZone
	}

	var errs []error
	if len(cfg.Table) > 255 {
		errs = append(errs, fmt.Errorf("table name %q is longer than 255 bytes — choose a shorter name", cfg.Table))
	}
	for _, p := range cfg.InterceptPorts {
		if p == 0 {
			errs = append(errs, errors.New("intercept port 0 is not a port — remove it from the intercept ports"))
		}
	}
	if cfg.TProxy4.IsValid() && (!cfg.TProxy4.Addr().Unmap().Is4() || cfg.TProxy4.Port() == 0) {
		errs = append(errs, fmt.Errorf("tproxy IPv4 listener %s must be an IPv4 address with a non-zero port", cfg.TProxy4))
	}
	if cfg.TProxy6.IsValid() && (!cfg.TProxy6.Addr().Is6() || cfg.TProxy6.Addr().Is4In6() || cfg.TProxy6.Port() == 0) {
		errs = append(errs, fmt.Errorf("tproxy IPv6 listener %s must be an IPv6 address with a non-zero port", cfg.TProxy6))
	}
	if cfg.CTMark == 0 {
		errs = append(errs, fmt.Errorf("ct mark is 0 with mask %#x: admitted connections would carry no mark — use a non-zero ct mark such as 0x100", cfg.CTMask))
	}
	if cfg.CTMark&^cfg.CTMask != 0 {
		errs = append(errs, fmt.Errorf("ct mark %#x has bits outside the ct mask %#x — widen the mask or narrow the mark", cfg.CTMark, cfg.CTMask))
	}
	if cfg.RouteTable < 0 || cfg.RouteTable > 0xffffffff-1 {
		errs = append(errs, fmt.Errorf("route table %d is out of range — use 1..4294967294", cfg.RouteTable))
	}
	switch cfg.RouteTable {
	case 253, 254, 255:
		errs = append(errs, fmt.Errorf("route table %d is one of the system tables (default/main/local) — use a dedicated table such as 100", cfg.RouteTable))
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("nft: invalid config: %w", err)
	}
	cfg.TProxy4 = netip.AddrPortFrom(cfg.TProxy4.Addr().Unmap(), cfg.TProxy4.Port())
	return cfg, nil
}

// interceptV4 reports whether IPv4 connections are intercepted.
func (cfg Config) interceptV4() bool { return cfg.Intercept && cfg.TProxy4.IsValid() }

// interceptV6 reports whether IPv6 connections are intercepted.
func (cfg Config) interceptV6() bool { return cfg.Intercept && cfg.TProxy6.IsValid() }

// intercepts reports whether fa's connections are intercepted.
func (cfg Config) intercepts(fa *family) bool {
	if fa == &fam4 {
		return cfg.interceptV4()
	}
	return cfg.interceptV6()
}

// interceptedFamilies returns the families whose connections are intercepted.
func (cfg Config) interceptedFamilies() []*family {
	var out []*family
	for _, fa := range families {
		if cfg.intercepts(fa) {
			out = append(out, fa)
		}
	}
	return out
}

// PinholeEnd is how a pinhole ended.
type PinholeEnd int

const (
	// Expired: its time ran out before any connection used it — the one
	// that operators watch (a NAT or the host's ct-mark line in the way).
	Expired PinholeEnd = iota
	// Used: a connection consumed it.
	Used
	// Revoked: it was closed (its session ended, the server refused the
	// PORT, the session's cap on pending openings), replaced by an Open of
	// the same key, or the Firewall closed, before any connection used it.
	Revoked
)

// String is the end's metric label value.
func (e PinholeEnd) String() string {
	switch e {
	case Used:
		return "used"
	case Revoked:
		return "revoked"
	}
	return "expired"
}
