package nft

import (
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

func TestAcceptsMark(t *testing.T) {
	cfg, _ := Config{}.withDefaults() // 0x100/0x100
	ctMark := &expr.Ct{Key: expr.CtKeyMARK, Register: 1}
	and := func(m uint32) expr.Any {
		return &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeU32(m), Xor: nativeU32(0)}
	}
	cmp := func(op expr.CmpOp, d uint32) expr.Any { return &expr.Cmp{Op: op, Register: 1, Data: nativeU32(d)} }
	acc := &expr.Verdict{Kind: expr.VerdictAccept}
	connmark := func(mark, mask uint32, invert byte) expr.Any {
		info := xt.Unknown(append(append(binaryutil.NativeEndian.PutUint32(mark), binaryutil.NativeEndian.PutUint32(mask)...), invert, 0, 0, 0))
		return &expr.Match{Name: "connmark", Rev: 1, Info: &info}
	}
	for _, c := range []struct {
		name  string
		exprs []expr.Any
		want  bool
	}{
		{"ct mark & 0x100 == 0x100 accept", []expr.Any{ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100), acc}, true},
		{"ct mark & 0x100 != 0 accept", []expr.Any{ctMark, and(0x100), cmp(expr.CmpOpNeq, 0), acc}, true},
		{"ct mark 0x100 accept", []expr.Any{ctMark, cmp(expr.CmpOpEq, 0x100), acc}, true},
		{"ct mark & 0x100 == 0x100 drop", []expr.Any{ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100), &expr.Verdict{Kind: expr.VerdictDrop}}, false},
		{"ct mark & 0x200 == 0x200 accept", []expr.Any{ctMark, and(0x200), cmp(expr.CmpOpEq, 0x200), acc}, false},
		{"ct mark & 0x100 == 0 accept", []expr.Any{ctMark, and(0x100), cmp(expr.CmpOpEq, 0), acc}, false},
		// Equality over more bits than ftpgate owns: tolerated, other bits are normally clear.
		{"ct mark & 0xffff == 0x100 accept", []expr.Any{ctMark, and(0xffff), cmp(expr.CmpOpEq, 0x100), acc}, true},
		{"ct mark & 0xffff == 0x300 accept", []expr.Any{ctMark, and(0xffff), cmp(expr.CmpOpEq, 0x300), acc}, false},
		{"ct mark overwritten by meta mark", []expr.Any{ctMark, &expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, cmp(expr.CmpOpEq, 0x100), acc}, false},
		{"ct state accept", []expr.Any{&expr.Ct{Key: expr.CtKeySTATE, Register: 1}, and(0x100), cmp(expr.CmpOpEq, 0x100), acc}, false},
		{"-m connmark --mark 0x100/0x100 -j ACCEPT", []expr.Any{connmark(0x100, 0x100, 0), acc}, true},
		{"-m connmark ! --mark 0x100/0x100 -j ACCEPT", []expr.Any{connmark(0x100, 0x100, 1), acc}, false},
		{"-m connmark --mark 0x200/0x200 -j ACCEPT", []expr.Any{connmark(0x200, 0x200, 0), acc}, false},
		// Side effects do not narrow the rule.
		{"counter ct mark & 0x100 == 0x100 counter log accept", []expr.Any{&expr.Counter{}, ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100), &expr.Counter{}, &expr.Log{}, acc}, true},
		{"ct mark & 0x100 == 0x100 meta mark set 0x1 accept", []expr.Any{ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100),
			&expr.Immediate{Register: 1, Data: nativeU32(1)}, &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}, acc}, true},
		{"-m connmark --mark 0x100/0x100 -j ACCEPT with a counter", []expr.Any{connmark(0x100, 0x100, 0), &expr.Counter{}, acc}, true},
		// Other conditions do.
		{`iifname "wan0" ct mark & 0x100 == 0x100 accept`, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte("wan0\x00")},
			ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100), acc}, false},
		{"ct mark & 0x100 == 0x100 tcp dport 22 accept", []expr.Any{ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 22}}, acc}, false},
		{"ct mark & 0x100 == 0x100 ct mark & 0x200 == 0x200 accept", []expr.Any{ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100), ctMark, and(0x200), cmp(expr.CmpOpEq, 0x200), acc}, false},
		{"ct mark & 0x100 == 0x100 ct state established accept", []expr.Any{ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100),
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1}, and(expr.CtStateBitESTABLISHED), cmp(expr.CmpOpNeq, 0), acc}, false},
		{"ct mark & 0x100 == 0x100 limit rate 10/second accept", []expr.Any{ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100), &expr.Limit{Type: expr.LimitTypePkts, Rate: 10, Unit: expr.LimitTimeSecond}, acc}, false},
		{"ip saddr @allowed ct mark & 0x100 == 0x100 accept", []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, &expr.Lookup{SourceRegister: 1, SetName: "allowed"},
			ctMark, and(0x100), cmp(expr.CmpOpEq, 0x100), acc}, false},
		{"-i wan0 -m connmark --mark 0x100/0x100 -j ACCEPT", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte("wan0\x00")},
			connmark(0x100, 0x100, 0), acc}, false},
		{"-m connmark --mark 0x100/0x100 -m tcp --dport 22 -j ACCEPT", []expr.Any{connmark(0x100, 0x100, 0), &expr.Match{Name: "tcp", Info: &xt.Tcp{}}, acc}, false},
		{"counter accept", []expr.Any{&expr.Counter{}, acc}, false},
	} {
		if got := acceptsMark(&nftables.Rule{Exprs: c.exprs}, cfg); got != c.want {
			t.Errorf("%s: acceptsMark = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestIsDropRule(t *testing.T) {
	for _, c := range []struct {
		exprs []expr.Any
		want  bool
	}{
		{[]expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}, true},
		{[]expr.Any{&expr.Reject{}}, true},
		{[]expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}, true},
		{[]expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}, false},
		{nil, false},
	} {
		if got := isDropRule(&nftables.Rule{Exprs: c.exprs}); got != c.want {
			t.Errorf("isDropRule(%v) = %v, want %v", c.exprs, got, c.want)
		}
	}
}
