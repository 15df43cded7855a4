package nft

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Object names inside the table.
const (
	chainPrerouting  = "prerouting"
	chainNATPre      = "nat_prerouting"
	chainNATPost     = "nat_postrouting"
	chainNATOut      = "nat_output"
	chainNATIn       = "nat_input"
	chainRawPre      = "raw_prerouting"
	chainRawOut      = "raw_output"
	setInterceptPort = "intercept_ports"
)

// dynsetOpDelete is the kernel's NFT_DYNSET_OP_DELETE; google/nftables has no
// constant for it.
const dynsetOpDelete = 2

// ctStatusDNAT is IPS_DST_NAT, the "ct status dnat" bit.
const ctStatusDNAT = 0x20

// family describes how one address family is matched in the inet table.
type family struct {
	name    string // "ipv4" / "ipv6", as in "meta nfproto"
	ip      string // "ip" / "ip6", as in "ip saddr"
	nfproto byte
	// Set and map names: pinSet holds plain pinholes; a NAT pinhole is one
	// element in natSet (the one-shot key) plus one in dnatMap and, with
	// SNAT, one in snatMap, all with the same key.
	pinSet, natSet, dnatMap, snatMap string
	addrLen                          uint32
	saddrOff                         uint32 // offset of the source address in the network header
	daddrOff                         uint32
	// registers for the concatenated key saddr . daddr . dport; each part
	// is padded to a multiple of 4 bytes, so the parts sit in consecutive
	// 32-bit registers starting at NFT_REG_1.
	regSaddr, regDaddr, regDport uint32
	keyType                      nftables.SetDatatype
	// dnatType is the data of dnatMap (addr . port) and addrType that of
	// snatMap. A map lookup writes its data to NFT_REG_1 onwards: the
	// address there, the DNAT port in the register after it (regNATPort).
	dnatType, addrType nftables.SetDatatype
	regNATPort         uint32
	ctDstIP            expr.CtKey // ct original ip(6) daddr
}

var (
	fam4 = family{
		name: "ipv4", ip: "ip", nfproto: unix.NFPROTO_IPV4,
		pinSet: "pin4", natSet: "natpin4", dnatMap: "dnat4", snatMap: "snat4",
		addrLen: 4, saddrOff: 12, daddrOff: 16,
		regSaddr: unix.NFT_REG_1, regDaddr: unix.NFT_REG32_01, regDport: unix.NFT_REG32_02,
		keyType:  nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr, nftables.TypeInetService),
		dnatType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService),
		addrType: nftables.TypeIPAddr, regNATPort: unix.NFT_REG32_01, ctDstIP: expr.CtKeyDSTIP,
	}
	fam6 = family{
		name: "ipv6", ip: "ip6", nfproto: unix.NFPROTO_IPV6,
		pinSet: "pin6", natSet: "natpin6", dnatMap: "dnat6", snatMap: "snat6",
		addrLen: 16, saddrOff: 8, daddrOff: 24,
		regSaddr: unix.NFT_REG_1, regDaddr: unix.NFT_REG_2, regDport: unix.NFT_REG_3,
		keyType:  nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr, nftables.TypeInetService),
		dnatType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService),
		addrType: nftables.TypeIP6Addr, regNATPort: unix.NFT_REG_2, ctDstIP: expr.CtKeyDSTIP6,
	}
	families = []*family{&fam4, &fam6}
)

func familyOf(a netip.Addr) *family {
	if a.Is4() {
		return &fam4
	}
	return &fam6
}

// pinKey encodes the set key saddr . daddr . dport (port padded to 4 bytes).
func (fa *family) pinKey(src, dst netip.Addr, port uint16) []byte {
	key := make([]byte, 0, 2*fa.addrLen+4)
	key = append(key, src.AsSlice()...)
	key = append(key, dst.AsSlice()...)
	key = binary.BigEndian.AppendUint16(key, port)
	return append(key, 0, 0)
}

// dnatData encodes the dnatMap data addr . port (port padded to 4 bytes).
func (fa *family) dnatData(to netip.AddrPort) []byte {
	d := make([]byte, 0, fa.addrLen+4)
	d = append(d, to.Addr().AsSlice()...)
	d = binary.BigEndian.AppendUint16(d, to.Port())
	return append(d, 0, 0)
}

func nativeU32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// matchFamilyTCP: meta nfproto <fa> meta l4proto tcp
func matchFamilyTCP(fa *family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fa.nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

// setCTMark: ct mark set ct mark & ~mask | mark
func setCTMark(mark, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeU32(^mask), Xor: nativeU32(mark)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

// setMetaMark: meta mark set <mark>
func setMetaMark(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: nativeU32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

func accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }

// TCP header flags.
const (
	tcpFlagFIN = 0x01
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagACK = 0x10
)

// returnRuleExprs: meta l4proto tcp tcp flags & (syn | ack) != syn
// socket transparent 1 meta mark set FWMark accept
//
// It routes to the local stack the packets of this host's transparent
// sockets: replies to the upstream connections and the later packets of the
// intercepted ones. Not a connection's first SYN: "socket" also finds
// TIME_WAIT sockets, and the gateway's TIME_WAIT socket of a closed
// intercepted connection (ftpgate closed it first) would catch a client's
// new connection from the same port for 60s — routed to the local stack
// without the tproxy rule, it reaches no listener, gets no ct mark and is
// dropped by the host's input filter. The tproxy rule hands such a SYN to
// the listener instead (it handles TIME_WAIT).
func returnRuleExprs(cfg Config) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagSYN | tcpFlagACK}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{tcpFlagSYN}},
		&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
	}
	e = append(e, setMetaMark(cfg.FWMark)...)
	return append(e, accept())
}

// tproxyRuleExprs: meta nfproto X meta l4proto tcp tcp dport @intercept_ports
// fib daddr type != local ct mark set ... meta mark set FWMark
// tproxy ip(6) to ADDR:PORT accept
//
// Only forwarded connections are diverted: one to an address of the gateway
// itself (an FTP server running there) goes to that server untouched. Proxied,
// it could not work — the local server's replies to the client's address
// would leave by the route to the client, bypassing ftpgate's socket.
func tproxyRuleExprs(cfg Config, fa *family, ports *nftables.Set, to netip.AddrPort) []expr.Any {
	e := matchFamilyTCP(fa)
	e = append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offDport, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: ports.Name, SetID: ports.ID},
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nativeU32(unix.RTN_LOCAL)},
	)
	e = append(e, setCTMark(cfg.CTMark, cfg.CTMask)...)
	e = append(e, setMetaMark(cfg.FWMark)...)
	e = append(e,
		&expr.Immediate{Register: 1, Data: to.Addr().AsSlice()},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(to.Port())},
		&expr.TProxy{Family: fa.nfproto, TableFamily: byte(nftables.TableFamilyINet), RegAddr: 1, RegPort: 2},
		accept(),
	)
	return e
}

// Transport header offsets of the TCP ports.
const (
	offSport = 0
	offDport = 2
)

// zoneRuleExprs puts the control connections ftpgate intercepts in
// Config.InterceptZone, before conntrack looks them up (priority raw):
//
//	raw_prerouting: meta nfproto X meta l4proto tcp
//	    tcp dport @intercept_ports fib daddr type != local ct zone set Z
//	raw_output:     meta nfproto X meta l4proto tcp
//	    tcp sport @intercept_ports fib saddr type != local ct zone set Z
//
// The prerouting rule matches exactly the packets the tproxy rule diverts
// (clients' packets to an intercept port of a foreign address); the output
// rule ftpgate's answers on them, which leave from that foreign address and
// port — an upstream also sends from a foreign address, but from a port the
// kernel picks in the ephemeral range.
// The fib test keeps a connection to the gateway's own address out of the
// zone, also when the host's DNAT forwards it to a server elsewhere (a port
// forward): that connection and its replies stay in zone 0. See
// Config.InterceptZone for why there is a zone at all.
func zoneRuleExprs(cfg Config, fa *family, ports *nftables.Set, hook *nftables.ChainHook) []expr.Any {
	portOff, fib := uint32(offDport), &expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true}
	if hook == nftables.ChainHookOutput {
		portOff, fib = offSport, &expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true}
	}
	e := matchFamilyTCP(fa)
	return append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: portOff, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: ports.Name, SetID: ports.ID},
		fib,
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nativeU32(unix.RTN_LOCAL)},
		// The zone is a 16-bit register value in host byte order.
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint16(cfg.InterceptZone)},
		&expr.Ct{Key: expr.CtKeyZONE, Register: 1, SourceRegister: true},
	)
}

// loadPinKey loads ip saddr . ip daddr . tcp dport into the key registers.
func loadPinKey(fa *family) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: fa.regSaddr, Base: expr.PayloadBaseNetworkHeader, Offset: fa.saddrOff, Len: fa.addrLen},
		&expr.Payload{DestRegister: fa.regDaddr, Base: expr.PayloadBaseNetworkHeader, Offset: fa.daddrOff, Len: fa.addrLen},
		&expr.Payload{DestRegister: fa.regDport, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// pinRuleExprs: ct state new meta nfproto X meta l4proto tcp
// ip saddr . ip daddr . tcp dport @pinN delete @pinN { ... } ct mark set ...
func pinRuleExprs(cfg Config, fa *family, set *nftables.Set) []expr.Any {
	e := consumePin(fa, set)
	return append(e, setCTMark(cfg.CTMark, cfg.CTMask)...)
}

// consumePin: ct state new meta nfproto X meta l4proto tcp
// tcp flags & (fin | syn | rst | ack) == syn
// ip saddr . ip daddr . tcp dport @set delete @set { ip saddr . ip daddr . tcp dport }
//
// Only a connection's opening SYN consumes the pinhole: conntrack also
// starts entries ("new") for mid-stream packets (nf_conntrack_tcp_loose), so
// a stray or spoofed ACK to the negotiated port would otherwise use up the
// one opening before the real client's SYN arrives.
func consumePin(fa *family, set *nftables.Set) []expr.Any {
	e := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeU32(expr.CtStateBitNEW), Xor: nativeU32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nativeU32(0)},
	}
	e = append(e, matchFamilyTCP(fa)...)
	e = append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagFIN | tcpFlagSYN | tcpFlagRST | tcpFlagACK}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpFlagSYN}},
	)
	e = append(e, loadPinKey(fa)...)
	return append(e,
		&expr.Lookup{SourceRegister: fa.regSaddr, SetName: set.Name, SetID: set.ID},
		// The lookup leaves the key registers intact.
		&expr.Dynset{SrcRegKey: fa.regSaddr, SetName: set.Name, SetID: set.ID, Operation: dynsetOpDelete},
	)
}

// dnatRuleExprs (chains nat_prerouting and nat_output), the NAT pinhole:
// consume the one-shot key, check that its DNAT data is there, mark the
// connection, DNAT it to the address and port in dnatN.
//
//	ct state new meta nfproto X meta l4proto tcp
//	ip saddr . ip daddr . tcp dport @natpinN delete @natpinN { ip saddr . ip daddr . tcp dport }
//	ip saddr . ip daddr . tcp dport @dnatN ct mark set ... dnat ip to ip saddr . ip daddr . tcp dport map @dnatN
//
// The mark comes after the check: a connection marked but not translated
// (its dnat element gone while the key is live — a bookkeeping error such
// as the janitor removing the data of the wrong pinhole, or a hand-edited
// map) would reach the gateway's own port through the host's ct mark
// accept rule. The mark cannot come after the dnat statement, which ends the
// rule. The key is reloaded before each lookup, exactly as nft compiles the
// text ("ct mark set" uses register 1).
func dnatRuleExprs(cfg Config, fa *family, pins, dnat *nftables.Set) []expr.Any {
	e := consumePin(fa, pins)
	e = append(e, loadPinKey(fa)...)
	e = append(e, &expr.Lookup{SourceRegister: fa.regSaddr, SetName: dnat.Name, SetID: dnat.ID})
	e = append(e, setCTMark(cfg.CTMark, cfg.CTMask)...)
	e = append(e, loadPinKey(fa)...)
	return append(e,
		&expr.Lookup{SourceRegister: fa.regSaddr, DestRegister: unix.NFT_REG_1, IsDestRegSet: true, SetName: dnat.Name, SetID: dnat.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(fa.nfproto), RegAddrMin: unix.NFT_REG_1, RegProtoMin: fa.regNATPort},
	)
}

// snatRuleExprs (chains nat_postrouting and nat_input): source NAT of
// connections DNAT'ed through a NAT pinhole that has an snatN element. The
// key is the connection's original tuple, the same as the pinhole's dnatN
// key.
//
//	meta nfproto X meta l4proto tcp ct status dnat
//	snat ip to ip saddr . ct original ip daddr . ct original proto-dst map @snatN
func snatRuleExprs(fa *family, snat *nftables.Set) []expr.Any {
	e := matchFamilyTCP(fa)
	return append(e,
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeU32(ctStatusDNAT), Xor: nativeU32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nativeU32(0)},
		&expr.Payload{DestRegister: fa.regSaddr, Base: expr.PayloadBaseNetworkHeader, Offset: fa.saddrOff, Len: fa.addrLen},
		&expr.Ct{Key: fa.ctDstIP, Register: fa.regDaddr, Direction: expr.CtDirOriginal},
		&expr.Ct{Key: expr.CtKeyPROTODST, Register: fa.regDport, Direction: expr.CtDirOriginal},
		&expr.Lookup{SourceRegister: fa.regSaddr, DestRegister: unix.NFT_REG_1, IsDestRegSet: true, SetName: snat.Name, SetID: snat.ID},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(fa.nfproto), RegAddrMin: unix.NFT_REG_1},
	)
}

// objects is everything New installs in the table, built for one batch.
type objects struct {
	table   *nftables.Table
	rawPre  *nftables.Chain // raw prerouting: conntrack zone of intercepted connections
	rawOut  *nftables.Chain // raw output: conntrack zone of ftpgate's answers on them
	chain   *nftables.Chain // filter prerouting: interception, plain pinholes
	natPre  *nftables.Chain // nat prerouting: NAT pinholes (DNAT)
	natPost *nftables.Chain // nat postrouting: their SNAT
	// An FTP server on the gateway itself (reverse mode with an upstream
	// address of the gateway): its data connections leave prerouting or
	// postrouting out. Active: the server's connection is generated
	// locally — output hook, never prerouting — and is DNAT'ed there.
	// Passive: the client's connection, DNAT'ed in prerouting, is delivered
	// locally — input hook, never postrouting — and is SNAT'ed there. A
	// connection's first packet passes either prerouting or output, so each
	// key is still consumed (and the connection marked) once; the nat
	// chains of prerouting do not run again for a locally generated
	// connection looping back through lo (its DNAT binding is set up in
	// output already).
	natOut  *nftables.Chain // nat output: NAT pinholes of locally generated connections (DNAT)
	natIn   *nftables.Chain // nat input: SNAT of locally delivered ones
	ports   *nftables.Set
	pins    map[*family]*nftables.Set
	natPins map[*family]*nftables.Set
	dnats   map[*family]*nftables.Set
	snats   map[*family]*nftables.Set
}

func newObjects(cfg Config, tableName string, flags nftables.TableFlags) *objects {
	t := &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet, Flags: flags}
	policy := nftables.ChainPolicyAccept
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &policy}
	}
	filter, nat := nftables.ChainTypeFilter, nftables.ChainTypeNAT
	o := &objects{
		table:   t,
		rawPre:  chain(chainRawPre, filter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw),
		rawOut:  chain(chainRawOut, filter, nftables.ChainHookOutput, nftables.ChainPriorityRaw),
		chain:   chain(chainPrerouting, filter, nftables.ChainHookPrerouting, nftables.ChainPriorityMangle),
		natPre:  chain(chainNATPre, nat, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		natPost: chain(chainNATPost, nat, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource),
		natOut:  chain(chainNATOut, nat, nftables.ChainHookOutput, nftables.ChainPriorityNATDest),
		natIn:   chain(chainNATIn, nat, nftables.ChainHookInput, nftables.ChainPriorityNATSource),
		ports:   &nftables.Set{Table: t, Name: setInterceptPort, KeyType: nftables.TypeInetService},
		pins:    map[*family]*nftables.Set{},
		natPins: map[*family]*nftables.Set{},
		dnats:   map[*family]*nftables.Set{},
		snats:   map[*family]*nftables.Set{},
	}
	for _, fa := range families {
		o.pins[fa] = &nftables.Set{
			Table: t, Name: fa.pinSet, KeyType: fa.keyType,
			HasTimeout: true, Dynamic: true, Size: pinSetSize,
		}
		o.natPins[fa] = &nftables.Set{
			Table: t, Name: fa.natSet, KeyType: fa.keyType,
			HasTimeout: true, Dynamic: true, Size: pinSetSize,
		}
		// Only ftpgate changes the maps: no "dynamic" flag.
		o.dnats[fa] = &nftables.Set{
			Table: t, Name: fa.dnatMap, KeyType: fa.keyType, IsMap: true, DataType: fa.dnatType,
			HasTimeout: true, Size: pinSetSize,
		}
		o.snats[fa] = &nftables.Set{
			Table: t, Name: fa.snatMap, KeyType: fa.keyType, IsMap: true, DataType: fa.addrType,
			HasTimeout: true, Size: pinSetSize,
		}
	}
	return o
}

// sets returns every set and map of the table in creation (and listing) order.
func (o *objects) sets() []*nftables.Set {
	s := []*nftables.Set{o.ports}
	for _, m := range []map[*family]*nftables.Set{o.pins, o.natPins, o.dnats, o.snats} {
		for _, fa := range families {
			s = append(s, m[fa])
		}
	}
	return s
}

// add queues the table, its sets, chains and rules on c (no Flush).
func (o *objects) add(c *nftables.Conn, cfg Config) error {
	c.AddTable(o.table)
	var ports []nftables.SetElement
	if cfg.Intercept {
		for _, p := range cfg.InterceptPorts {
			ports = append(ports, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)})
		}
	}
	for _, set := range o.sets() {
		var elems []nftables.SetElement
		if set == o.ports {
			elems = ports
		}
		if err := c.AddSet(set, elems); err != nil {
			return err
		}
	}
	for _, ch := range o.chains(cfg) {
		c.AddChain(ch)
		for _, r := range o.ruleExprs(cfg, ch) {
			c.AddRule(&nftables.Rule{Table: o.table, Chain: ch, Exprs: r})
		}
	}
	return nil
}

// chains returns the chains New creates for cfg, in creation (and listing)
// order: the raw chains only in transparent mode.
func (o *objects) chains(cfg Config) []*nftables.Chain {
	var chains []*nftables.Chain
	if cfg.Intercept {
		chains = append(chains, o.rawPre, o.rawOut)
	}
	return append(chains, o.chain, o.natPre, o.natPost, o.natOut, o.natIn)
}

// ruleExprs returns the rules of chain ch, in order.
func (o *objects) ruleExprs(cfg Config, ch *nftables.Chain) [][]expr.Any {
	var rules [][]expr.Any
	switch ch {
	case o.rawPre:
		for _, fa := range cfg.interceptedFamilies() {
			rules = append(rules, zoneRuleExprs(cfg, fa, o.ports, ch.Hooknum))
		}
	case o.rawOut:
		for _, fa := range cfg.interceptedFamilies() {
			rules = append(rules, zoneRuleExprs(cfg, fa, o.ports, ch.Hooknum))
		}
	case o.chain:
		if cfg.Intercept {
			rules = append(rules, returnRuleExprs(cfg))
			if cfg.interceptV4() {
				rules = append(rules, tproxyRuleExprs(cfg, &fam4, o.ports, cfg.TProxy4))
			}
			if cfg.interceptV6() {
				rules = append(rules, tproxyRuleExprs(cfg, &fam6, o.ports, cfg.TProxy6))
			}
		}
		for _, fa := range families {
			rules = append(rules, pinRuleExprs(cfg, fa, o.pins[fa]))
		}
	case o.natPre, o.natOut:
		for _, fa := range families {
			rules = append(rules, dnatRuleExprs(cfg, fa, o.natPins[fa], o.dnats[fa]))
		}
	case o.natPost, o.natIn:
		for _, fa := range families {
			rules = append(rules, snatRuleExprs(fa, o.snats[fa]))
		}
	}
	return rules
}
