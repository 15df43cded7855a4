package nft

import (
	"fmt"
	"strconv"
	"strings"
)

// Ruleset returns, in `nft -f` syntax, what New installs for cfg, followed by
// the policy routing as `ip` commands in comments. New creates the table with
// the owner flag (bound to ftpgate's netlink socket); the text leaves the flag
// out so that it can be loaded with `nft -f` for inspection. Best effort: an
// invalid cfg yields a comment saying why.
func Ruleset(cfg Config) string {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return "# " + strings.ReplaceAll(err.Error(), "\n", "\n# ") + "\n"
	}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	ctSet := fmt.Sprintf("ct mark set ct mark & 0x%08x | 0x%08x", ^cfg.CTMask, cfg.CTMark)
	w("# ftpgate: table created by ftpgate with \"flags owner\" (removed by the kernel when ftpgate exits)")
	w("table inet %s {", cfg.Table)
	ports := make([]string, len(cfg.InterceptPorts))
	for i, p := range cfg.InterceptPorts {
		ports[i] = strconv.Itoa(int(p))
	}
	w("\tset %s {", setInterceptPort)
	w("\t\ttype inet_service")
	if cfg.Intercept {
		w("\t\telements = { %s }", strings.Join(ports, ", "))
	}
	w("\t}")
	for _, fa := range families {
		w("")
		w("\t# one-shot pinholes: each element admits one connection, the kernel expires unused ones")
		w("\tset %s {", fa.pinSet)
		w("\t\ttype %s", fa.keyType.Name)
		w("\t\tsize %d", pinSetSize)
		w("\t\tflags dynamic,timeout")
		w("\t}")
	}
	for _, fa := range families {
		w("")
		w("\t# one-shot NAT pinholes: the key admits one connection, translated with @%s and @%s", fa.dnatMap, fa.snatMap)
		w("\tset %s {", fa.natSet)
		w("\t\ttype %s", fa.keyType.Name)
		w("\t\tsize %d", pinSetSize)
		w("\t\tflags dynamic,timeout")
		w("\t}")
	}
	for _, fa := range families {
		w("")
		w("\t# NAT pinholes: where the connection goes (address . port)")
		w("\tmap %s {", fa.dnatMap)
		w("\t\ttype %s : %s", fa.keyType.Name, fa.dnatType.Name)
		w("\t\tsize %d", pinSetSize)
		w("\t\tflags timeout")
		w("\t}")
	}
	for _, fa := range families {
		w("")
		w("\t# NAT pinholes: the source address it gets, keyed by its original tuple")
		w("\tmap %s {", fa.snatMap)
		w("\t\ttype %s : %s", fa.keyType.Name, fa.addrType.Name)
		w("\t\tsize %d", pinSetSize)
		w("\t\tflags timeout")
		w("\t}")
	}
	if cfg.Intercept {
		w("")
		w("\tchain %s {", chainRawPre)
		w("\t\ttype filter hook prerouting priority raw; policy accept;")
		w("\t\t# the control connections diverted below: a conntrack zone apart from this host's own")
		w("\t\t# connections (zone 0), whose tuples ftpgate's upstreams from the clients' addresses may repeat")
		for _, fa := range cfg.interceptedFamilies() {
			w("\t\tmeta nfproto %s meta l4proto tcp tcp dport @%s fib daddr type != local ct zone set %d", fa.name, setInterceptPort, cfg.InterceptZone)
		}
		w("\t}")
		w("")
		w("\tchain %s {", chainRawOut)
		w("\t\ttype filter hook output priority raw; policy accept;")
		w("\t\t# ftpgate's answers on them, sent from the server's address")
		for _, fa := range cfg.interceptedFamilies() {
			w("\t\tmeta nfproto %s meta l4proto tcp tcp sport @%s fib saddr type != local ct zone set %d", fa.name, setInterceptPort, cfg.InterceptZone)
		}
		w("\t}")
	}
	w("")
	w("\tchain %s {", chainPrerouting)
	w("\t\ttype filter hook prerouting priority mangle; policy accept;")
	if cfg.Intercept {
		w("\t\t# packets of ftpgate's transparent sockets (not new connections: a TIME_WAIT socket")
		w("\t\t# must not catch a client's reconnection from the same port)")
		w("\t\tmeta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set %#x accept", cfg.FWMark)
		w("\t\t# divert forwarded FTP control connections to ftpgate (not those to the gateway itself)")
		if cfg.interceptV4() {
			w("\t\tmeta nfproto ipv4 meta l4proto tcp tcp dport @%s fib daddr type != local %s meta mark set %#x tproxy ip to %s accept",
				setInterceptPort, ctSet, cfg.FWMark, cfg.TProxy4)
		}
		if cfg.interceptV6() {
			w("\t\tmeta nfproto ipv6 meta l4proto tcp tcp dport @%s fib daddr type != local %s meta mark set %#x tproxy ip6 to %s accept",
				setInterceptPort, ctSet, cfg.FWMark, cfg.TProxy6)
		}
	}
	w("\t\t# data connections through a pinhole: their opening SYN consumes the element; mark the connection")
	for _, fa := range families {
		key := fmt.Sprintf("%[1]s saddr . %[1]s daddr . tcp dport", fa.ip)
		w("\t\tct state new meta nfproto %s meta l4proto tcp %s %s @%s delete @%s { %s } %s", fa.name, synOnly, key, fa.pinSet, fa.pinSet, key, ctSet)
	}
	w("\t}")
	w("")
	dnatRules := func() {
		for _, fa := range families {
			key := fmt.Sprintf("%[1]s saddr . %[1]s daddr . tcp dport", fa.ip)
			w("\t\tct state new meta nfproto %s meta l4proto tcp %s %s @%s delete @%s { %s } %s @%s %s dnat %s to %s map @%s",
				fa.name, synOnly, key, fa.natSet, fa.natSet, key, key, fa.dnatMap, ctSet, fa.ip, key, fa.dnatMap)
		}
	}
	snatRules := func() {
		for _, fa := range families {
			w("\t\tmeta nfproto %s meta l4proto tcp ct status dnat snat %s to %[2]s saddr . ct original %[2]s daddr . ct original proto-dst map @%s",
				fa.name, fa.ip, fa.snatMap)
		}
	}
	w("\tchain %s {", chainNATPre)
	w("\t\ttype nat hook prerouting priority dstnat; policy accept;")
	w("\t\t# data connections through a NAT pinhole: their opening SYN consumes the key; if its DNAT data")
	w("\t\t# is there (never mark a connection that is not translated), mark the connection, DNAT it")
	dnatRules()
	w("\t}")
	w("")
	w("\tchain %s {", chainNATPost)
	w("\t\ttype nat hook postrouting priority srcnat; policy accept;")
	w("\t\t# and SNAT it if its pinhole says so")
	snatRules()
	w("\t}")
	w("")
	w("\tchain %s {", chainNATOut)
	w("\t\ttype nat hook output priority -100; policy accept;") // dstnat: older nft accept the name only in prerouting
	w("\t\t# the same for connections made on this host (an FTP server on the gateway, active mode)")
	dnatRules()
	w("\t}")
	w("")
	w("\tchain %s {", chainNATIn)
	w("\t\ttype nat hook input priority 100; policy accept;") // srcnat, likewise
	w("\t\t# and the SNAT of those delivered to this host (an FTP server on the gateway, passive mode)")
	snatRules()
	w("\t}")
	w("}")
	if cfg.Intercept {
		w("")
		w("# policy routing for tproxy (installed with netlink, removed on exit):")
		w("# (tagged proto %d; ftpgate refuses to start if anything else uses the fwmark or the table)", RouteProtocol)
		if cfg.interceptV4() {
			w("#   ip -4 rule add fwmark %#x lookup %d proto %d", cfg.FWMark, cfg.RouteTable, RouteProtocol)
			w("#   ip -4 route add local 0.0.0.0/0 dev lo table %d proto %d", cfg.RouteTable, RouteProtocol)
		}
		if cfg.interceptV6() {
			w("#   ip -6 rule add fwmark %#x lookup %d proto %d", cfg.FWMark, cfg.RouteTable, RouteProtocol)
			w("#   ip -6 route add local ::/0 dev lo table %d proto %d", cfg.RouteTable, RouteProtocol)
		}
	}
	w("")
	w("# host firewalls with drop rules or policy drop on input/forward need, before their drops:")
	w("#   %s", acceptLine(cfg))
	return b.String()
}

// acceptLine is the rule a host chain needs to let ftpgate's connections pass.
func acceptLine(cfg Config) string {
	return fmt.Sprintf("ct mark & %#x == %#x accept", cfg.CTMask, cfg.CTMark)
}

// synOnly matches a connection's opening SYN (see consumePin).
const synOnly = "tcp flags syn / fin,syn,rst,ack"
