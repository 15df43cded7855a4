package proxy

import (
	"net/netip"
	"strings"
	"testing"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

type addrCase struct {
	in   string
	want netip.AddrPort
	err  error
}

func checkAddrCases(t *testing.T, name string, parse func(string) (netip.AddrPort, error), tests []addrCase) {
	t.Helper()
	for _, tt := range tests {
		got, err := parse(tt.in)
		if err != tt.err || got != tt.want {
			t.Errorf("%s(%q) = %v, %v; want %v, %v", name, tt.in, got, err, tt.want, tt.err)
		}
		if err == nil && !got.Addr().Is4() && got.Addr().Is4In6() {
			t.Errorf("%s(%q) returned a mapped address %v", name, tt.in, got)
		}
	}
}

func TestParsePORT(t *testing.T) {
	checkAddrCases(t, "ParsePORT", ParsePORT, []addrCase{
		{"10,77,1,2,195,80", ap("10.77.1.2:50000"), nil},
		{"0,0,0,0,0,0", ap("0.0.0.0:0"), nil},
		{"255,255,255,255,255,255", ap("255.255.255.255:65535"), nil},
		{"1,2,3,4,0,21", ap("1.2.3.4:21"), nil},        // low port: policy is the caller's
		{"010,001,0,00,4,1", ap("10.1.0.0:1025"), nil}, // leading zeros are decimal
		{"  10,77,1,2,195,80  ", ap("10.77.1.2:50000"), nil},

		{"10,77,1,2,256,22", netip.AddrPort{}, ErrByteRange},
		{"256,1,2,3,4,5", netip.AddrPort{}, ErrByteRange},
		{"1,2,3,4,5,999", netip.AddrPort{}, ErrByteRange},
		{"1,2,3,4,5,1000", netip.AddrPort{}, ErrByteRange},
		{"1,2,3,4,5,99999999999999999999999", netip.AddrPort{}, ErrByteRange},
		{"1,2,3,4,5,4294967297", netip.AddrPort{}, ErrByteRange}, // would wrap to 1 in 32 bits
		{"1,2,3,4,5,0001", netip.AddrPort{}, ErrSyntax},

		{"", netip.AddrPort{}, ErrSyntax},
		{"   ", netip.AddrPort{}, ErrSyntax},
		{"1,2,3,4,5", netip.AddrPort{}, ErrSyntax},
		{"1,2,3,4,5,6,7", netip.AddrPort{}, ErrSyntax},
		{"256,2,3,4,5,6,7", netip.AddrPort{}, ErrSyntax}, // syntax wins over range
		{"1,2,3,4,5,6,", netip.AddrPort{}, ErrSyntax},
		{",1,2,3,4,5,6", netip.AddrPort{}, ErrSyntax},
		{"1,,3,4,5,6", netip.AddrPort{}, ErrSyntax},
		{"1,2,3,4,5,", netip.AddrPort{}, ErrSyntax},
		{"-1,2,3,4,5,6", netip.AddrPort{}, ErrSyntax},
		{"+1,2,3,4,5,6", netip.AddrPort{}, ErrSyntax},
		{"1, 2,3,4,5,6", netip.AddrPort{}, ErrSyntax},
		{"1 ,2,3,4,5,6", netip.AddrPort{}, ErrSyntax},
		{"\t1,2,3,4,5,6", netip.AddrPort{}, ErrSyntax},
		{"1,2,3,4,5,6\r", netip.AddrPort{}, ErrSyntax},
		{"1,2,3,4,5,6x", netip.AddrPort{}, ErrSyntax},
		{"(1,2,3,4,5,6)", netip.AddrPort{}, ErrSyntax},
		{"1.2.3.4,5,6", netip.AddrPort{}, ErrSyntax},
		{"0x1,2,3,4,5,6", netip.AddrPort{}, ErrSyntax},
		{"١,2,3,4,5,6", netip.AddrPort{}, ErrSyntax}, // Arabic-Indic digit one
		{"１,2,3,4,5,6", netip.AddrPort{}, ErrSyntax}, // full-width digit one
	})
}

func TestParseEPRT(t *testing.T) {
	checkAddrCases(t, "ParseEPRT", ParseEPRT, []addrCase{
		{"|1|132.235.1.2|6275|", ap("132.235.1.2:6275"), nil},
		{"|2|1080::8:800:200C:417A|5282|", ap("[1080::8:800:200c:417a]:5282"), nil},
		{"|2|fd77::2|50000|", ap("[fd77::2]:50000"), nil},
		{"|2|::1|1|", ap("[::1]:1"), nil},
		{"|1|10.0.0.1|65535|", ap("10.0.0.1:65535"), nil},
		{"|1|10.0.0.1|00021|", ap("10.0.0.1:21"), nil},
		{"!1!10.0.0.1!21!", ap("10.0.0.1:21"), nil},
		{"~2~::1~21~", ap("[::1]:21"), nil},
		{"(1(10.0.0.1(21(", ap("10.0.0.1:21"), nil},
		{" |1|10.0.0.1|21| ", ap("10.0.0.1:21"), nil},
		{"|2|::102:304|21|", ap("[::102:304]:21"), nil}, // IPv4-compatible, not mapped

		{"|3|10.0.0.1|21|", netip.AddrPort{}, ErrFamily},
		{"|0|10.0.0.1|21|", netip.AddrPort{}, ErrFamily},
		{"|01|10.0.0.1|21|", netip.AddrPort{}, ErrFamily},
		{"|1|::1|21|", netip.AddrPort{}, ErrFamily},
		{"|2|10.0.0.1|21|", netip.AddrPort{}, ErrFamily},
		{"|2|::ffff:10.0.0.1|21|", netip.AddrPort{}, ErrFamily},
		{"|2|fe80::1%eth0|21|", netip.AddrPort{}, ErrFamily},

		{"", netip.AddrPort{}, ErrSyntax},
		{"|", netip.AddrPort{}, ErrSyntax},
		{"||||", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1|21", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1|21||", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1|21|x", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1|21|\r", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1|0|", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1|65536|", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1|000021|", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1|-21|", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1|+21|", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1| 21|", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.1||", netip.AddrPort{}, ErrSyntax},
		{"|1||21|", netip.AddrPort{}, ErrSyntax},
		{"||10.0.0.1|21|", netip.AddrPort{}, ErrSyntax},
		{"|x|10.0.0.1|21|", netip.AddrPort{}, ErrSyntax},
		{"|1|010.0.0.1|21|", netip.AddrPort{}, ErrSyntax}, // octal-looking IPv4 refused
		{"|1|10.0.0|21|", netip.AddrPort{}, ErrSyntax},
		{"|1|10.0.0.256|21|", netip.AddrPort{}, ErrSyntax},
		{"|1|host.example|21|", netip.AddrPort{}, ErrSyntax},
		{"|2|[::1]|21|", netip.AddrPort{}, ErrSyntax},
		{"|2|" + strings.Repeat("0", 46) + "::1|21|", netip.AddrPort{}, ErrSyntax},
		{"1|1|10.0.0.1|21|", netip.AddrPort{}, ErrSyntax}, // digit delimiter
		{" 1 10.0.0.1 21 ", netip.AddrPort{}, ErrSyntax},  // space delimiter
		{"\x7f1\x7f10.0.0.1\x7f21\x7f", netip.AddrPort{}, ErrSyntax},
		{"é1é10.0.0.1é21é", netip.AddrPort{}, ErrSyntax},
		{":2:::1:21:", netip.AddrPort{}, ErrSyntax},        // ':' delimiter can't carry IPv6
		{".1.10.0.0.1.21.", netip.AddrPort{}, ErrSyntax},   // '.' delimiter can't carry IPv4
		{"|1|10.0.0.1|21|2|", netip.AddrPort{}, ErrSyntax}, // extra field
		{"|1|10.0.0.1|2١|", netip.AddrPort{}, ErrSyntax},
	})
}

func TestParse227(t *testing.T) {
	checkAddrCases(t, "Parse227", Parse227, []addrCase{
		{"Entering Passive Mode (10,77,2,2,195,80).", ap("10.77.2.2:50000"), nil},
		{"Entering Passive Mode (10,77,2,2,195,80)", ap("10.77.2.2:50000"), nil},
		{"=10,77,2,2,195,80", ap("10.77.2.2:50000"), nil},
		{"Entering Passive Mode 10,77,2,2,195,80", ap("10.77.2.2:50000"), nil},
		{"Entering Passive Mode 10,77,2,2,195,80.", ap("10.77.2.2:50000"), nil},
		{"10,77,2,2,195,80", ap("10.77.2.2:50000"), nil},
		{"Passive 1 2,3 (10,77,2,2,195,80)", ap("10.77.2.2:50000"), nil},
		{"(1,2,3,4,5,6,7) then (10,77,2,2,195,80)", ap("10.77.2.2:50000"), nil},
		{"(010,000,002,002,000,021)", ap("10.0.2.2:21"), nil},
		{"(0,0,0,0,0,0)", ap("0.0.0.0:0"), nil},
		{"(255,255,255,255,255,255)", ap("255.255.255.255:65535"), nil},
		{"Entering Passive Mode (10,0,0,1,4,5) (10,0,0,2,4,5)", ap("10.0.0.1:1029"), nil},

		{"Entering Passive Mode (10,77,2,2,256,80).", netip.AddrPort{}, ErrByteRange},
		{"Entering Passive Mode (10,77,2,2,1000,80).", netip.AddrPort{}, ErrByteRange},
		{"(10,77,2,2,4294967296,80)", netip.AddrPort{}, ErrByteRange},
		{"(999,1,1,1,1,1)", netip.AddrPort{}, ErrByteRange},
		{"(0010,77,2,2,1,1)", netip.AddrPort{}, ErrSyntax},

		{"", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (10,77,2,2,195)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (1,2,3,4,5,6,7)", netip.AddrPort{}, ErrSyntax},
		{"(1,2,3,4,5,6,)", netip.AddrPort{}, ErrSyntax},
		{"(,1,2,3,4,5,6)", netip.AddrPort{}, ErrSyntax},
		{"(1,,2,3,4,5,6)", netip.AddrPort{}, ErrSyntax},
		{"(-1,2,3,4,5,6)", netip.AddrPort{}, ErrSyntax},
		{"(+1,2,3,4,5,6)", netip.AddrPort{}, ErrSyntax},
		{"(1.5,2,3,4,5,6)", netip.AddrPort{}, ErrSyntax},
		{"(1,2,3,4,5,6.5)", netip.AddrPort{}, ErrSyntax},
		{"(0x1,2,3,4,5,6)", netip.AddrPort{}, ErrSyntax},
		{"(1,2,3,4,5,6x)", netip.AddrPort{}, ErrSyntax},
		{"(1, 2, 3, 4, 5, 6)", netip.AddrPort{}, ErrSyntax},
		{"(١,٢,٣,٤,٥,٦)", netip.AddrPort{}, ErrSyntax},
		{"(10,77,2,2,١٩٥,80)", netip.AddrPort{}, ErrSyntax},
	})
}

func TestParse229(t *testing.T) {
	tests := []struct {
		in   string
		want uint16
		err  error
	}{
		{"Entering Extended Passive Mode (|||6446|)", 6446, nil},
		{"Entering Extended Passive Mode (|||6446|).", 6446, nil},
		{"Entering Extended Passive Mode (|||6446|)  ", 6446, nil},
		{"(|||1|)", 1, nil},
		{"(|||65535|)", 65535, nil},
		{"(|||00021|)", 21, nil},
		{"Extended Passive mode OK (!!!50000!)", 50000, nil},
		{"((((50000()", 50000, nil},
		{"()))50000))", 50000, nil},
		{"EPSV (x) (|||6446|)", 6446, nil},

		{"", 0, ErrSyntax},
		{"Entering Extended Passive Mode", 0, ErrSyntax},
		{"(|||0|)", 0, ErrSyntax},
		{"(|||65536|)", 0, ErrSyntax},
		{"(|||000021|)", 0, ErrSyntax},
		{"(||||)", 0, ErrSyntax},
		{"(|||-1|)", 0, ErrSyntax},
		{"(|||+1|)", 0, ErrSyntax},
		{"(||| 1|)", 0, ErrSyntax},
		{"(|||1 |)", 0, ErrSyntax},
		{"(|||1|", 0, ErrSyntax},
		{"|||1|)", 0, ErrSyntax},
		{"(||1|)", 0, ErrSyntax},
		{"(|||1|) x", 0, ErrSyntax},
		{"(|||1|)..", 0, ErrSyntax},
		{"(|||1|)\r", 0, ErrSyntax},
		{"(|1|||1|)", 0, ErrSyntax},
		{"(|1|10.0.0.1|6446|)", 0, ErrSyntax},
		{"(|||6446!)", 0, ErrSyntax},
		{"(!||6446|)", 0, ErrSyntax},
		{"(   6446 )", 0, ErrSyntax},
		{"(1116441)", 0, ErrSyntax},
		{"(\x7f\x7f\x7f6446\x7f)", 0, ErrSyntax},
		{"(|||٦٤٤٦|)", 0, ErrSyntax},
		{"(|||6446|)(|||6446|)x", 0, ErrSyntax},
	}
	for _, tt := range tests {
		got, err := Parse229(tt.in)
		if got != tt.want || err != tt.err {
			t.Errorf("Parse229(%q) = %d, %v; want %d, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestParseFormat(t *testing.T) {
	v4 := ap("10.77.1.2:50000")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(v4.Addr().As16()), 50000)
	tests := []struct {
		name, got, want string
	}{
		{"FormatPORT", FormatPORT(v4), "10,77,1,2,195,80"},
		{"FormatPORT zero", FormatPORT(ap("0.0.0.0:0")), "0,0,0,0,0,0"},
		{"FormatPORT max", FormatPORT(ap("255.255.255.255:65535")), "255,255,255,255,255,255"},
		{"FormatPORT mapped", FormatPORT(mapped), "10,77,1,2,195,80"},
		{"FormatPORT ipv6", FormatPORT(ap("[fd77::2]:50000")), ""},
		{"FormatPORT invalid", FormatPORT(netip.AddrPort{}), ""},
		{"Format227", Format227(ap("10.77.2.2:50000")), "Entering Passive Mode (10,77,2,2,195,80)."},
		{"Format227 ipv6", Format227(ap("[fd77::2]:50000")), ""},
		{"FormatEPRT v4", FormatEPRT(v4), "|1|10.77.1.2|50000|"},
		{"FormatEPRT v6", FormatEPRT(ap("[fd77::2]:50000")), "|2|fd77::2|50000|"},
		{"FormatEPRT mapped", FormatEPRT(mapped), "|1|10.77.1.2|50000|"},
		{"FormatEPRT zone dropped", FormatEPRT(ap("[fe80::1%eth0]:21")), "|2|fe80::1|21|"},
		{"Format229", Format229(50000), "Entering Extended Passive Mode (|||50000|)"},
		{"Format229 one", Format229(1), "Entering Extended Passive Mode (|||1|)"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestParseRoundTrip(t *testing.T) {
	v4s := []netip.AddrPort{ap("10.77.1.2:50000"), ap("0.0.0.0:1"), ap("255.255.255.255:65535"), ap("192.0.2.1:256")}
	for _, a := range v4s {
		if got, err := ParsePORT(FormatPORT(a)); got != a || err != nil {
			t.Errorf("PORT round trip of %v: %v, %v", a, got, err)
		}
		if got, err := Parse227(Format227(a)); got != a || err != nil {
			t.Errorf("227 round trip of %v: %v, %v", a, got, err)
		}
		if got, err := ParseEPRT(FormatEPRT(a)); got != a || err != nil {
			t.Errorf("EPRT round trip of %v: %v, %v", a, got, err)
		}
	}
	for _, a := range []netip.AddrPort{ap("[fd77::2]:50000"), ap("[::]:1"), ap("[2001:db8::ffff:1.2.3.4]:21")} {
		if got, err := ParseEPRT(FormatEPRT(a)); got != a || err != nil {
			t.Errorf("EPRT round trip of %v: %v, %v", a, got, err)
		}
	}
	for _, p := range []uint16{1, 21, 1024, 50000, 65535} {
		if got, err := Parse229(Format229(p)); got != p || err != nil {
			t.Errorf("229 round trip of %d: %d, %v", p, got, err)
		}
	}
}

func TestParseNoAllocs(t *testing.T) {
	hostile := "(" + strings.Repeat("1,", 5000) + "1)" + strings.Repeat("9", 10000)
	cases := map[string]func(){
		"ParsePORT":        func() { ParsePORT("10,77,1,2,195,80") },
		"Parse227":         func() { Parse227("Entering Passive Mode (10,77,2,2,195,80).") },
		"Parse227 hostile": func() { Parse227(hostile) },
		"Parse229":         func() { Parse229("Entering Extended Passive Mode (|||6446|)") },
		"ParseEPRT v4":     func() { ParseEPRT("|1|132.235.1.2|6275|") },
		"ParseEPRT v6":     func() { ParseEPRT("|2|1080::8:800:200C:417A|5282|") },
	}
	for name, f := range cases {
		if allocs := testing.AllocsPerRun(100, f); allocs != 0 {
			t.Errorf("%s: %v allocations", name, allocs)
		}
	}
}

func BenchmarkParse227(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse227("Entering Passive Mode (10,77,2,2,195,80)."); err != nil {
			b.Fatal(err)
		}
	}
}
