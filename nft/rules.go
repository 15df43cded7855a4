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
	setInterceptPort = "intercept_ports"
	setPin4          = "pin4"
	setPin6          = "pin6"
)

// dynsetOpDelete is the kernel's NFT_DYNSET_OP_DELETE; google/nftables has no
// constant for it.
const dynsetOpDelete = 2

// family describes how one address family is matched in the inet table.
type family struct {
	name     string // "ipv4" / "ipv6", as in "meta nfproto"
	nfproto  byte
	pinSet   string
	addrLen  uint32
	saddrOff uint32 // offset of the source address in the network header
	daddrOff uint32
	// registers for the concatenated key saddr . daddr . dport; each part
	// is padded to a multiple of 4 bytes, so the parts sit in consecutive
	// 32-bit registers starting at NFT_REG_1.
	regSaddr, regDaddr, regDport uint32
	keyType                      nftables.SetDatatype
}

var (
	fam4 = family{
		name: "ipv4", nfproto: unix.NFPROTO_IPV4, pinSet: setPin4,
		addrLen: 4, saddrOff: 12, daddrOff: 16,
		regSaddr: unix.NFT_REG_1, regDaddr: unix.NFT_REG32_01, regDport: unix.NFT_REG32_02,
		keyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr, nftables.TypeInetService),
	}
	fam6 = family{
		name: "ipv6", nfproto: unix.NFPROTO_IPV6, pinSet: setPin6,
		addrLen: 16, saddrOff: 8, daddrOff: 24,
		regSaddr: unix.NFT_REG_1, regDaddr: unix.NFT_REG_2, regDport: unix.NFT_REG_3,
		keyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr, nftables.TypeInetService),
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

// returnRuleExprs: meta l4proto tcp socket transparent 1 meta mark set FWMark accept
func returnRuleExprs(cfg Config) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
	}
	e = append(e, setMetaMark(cfg.FWMark)...)
	return append(e, accept())
}

// tproxyRuleExprs: meta nfproto X meta l4proto tcp tcp dport @intercept_ports
// ct mark set ... meta mark set FWMark tproxy ip(6) to ADDR:PORT accept
func tproxyRuleExprs(cfg Config, fa *family, ports *nftables.Set, to netip.AddrPort) []expr.Any {
	e := matchFamilyTCP(fa)
	e = append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: ports.Name, SetID: ports.ID},
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
	e := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeU32(expr.CtStateBitNEW), Xor: nativeU32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nativeU32(0)},
	}
	e = append(e, matchFamilyTCP(fa)...)
	e = append(e, loadPinKey(fa)...)
	e = append(e,
		&expr.Lookup{SourceRegister: fa.regSaddr, SetName: set.Name, SetID: set.ID},
		// The lookup leaves the key registers intact.
		&expr.Dynset{SrcRegKey: fa.regSaddr, SetName: set.Name, SetID: set.ID, Operation: dynsetOpDelete},
	)
	return append(e, setCTMark(cfg.CTMark, cfg.CTMask)...)
}

// objects is everything New installs in the table, built for one batch.
type objects struct {
	table *nftables.Table
	chain *nftables.Chain
	ports *nftables.Set
	pins  map[*family]*nftables.Set
}

func newObjects(cfg Config, tableName string, flags nftables.TableFlags) *objects {
	t := &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet, Flags: flags}
	policy := nftables.ChainPolicyAccept
	o := &objects{
		table: t,
		chain: &nftables.Chain{
			Name: chainPrerouting, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
			Policy: &policy,
		},
		ports: &nftables.Set{Table: t, Name: setInterceptPort, KeyType: nftables.TypeInetService},
		pins:  map[*family]*nftables.Set{},
	}
	for _, fa := range families {
		o.pins[fa] = &nftables.Set{
			Table: t, Name: fa.pinSet, KeyType: fa.keyType,
			HasTimeout: true, Dynamic: true, Size: pinSetSize,
		}
	}
	return o
}

// add queues the table, its sets, chain and rules on c (no Flush).
func (o *objects) add(c *nftables.Conn, cfg Config) error {
	c.AddTable(o.table)
	var ports []nftables.SetElement
	if cfg.Intercept {
		for _, p := range cfg.InterceptPorts {
			ports = append(ports, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)})
		}
	}
	if err := c.AddSet(o.ports, ports); err != nil {
		return err
	}
	for _, fa := range families {
		if err := c.AddSet(o.pins[fa], nil); err != nil {
			return err
		}
	}
	c.AddChain(o.chain)
	for _, r := range o.ruleExprs(cfg) {
		c.AddRule(&nftables.Rule{Table: o.table, Chain: o.chain, Exprs: r})
	}
	return nil
}

// ruleExprs returns the rules of the prerouting chain, in order.
func (o *objects) ruleExprs(cfg Config) [][]expr.Any {
	var rules [][]expr.Any
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
	return rules
}
