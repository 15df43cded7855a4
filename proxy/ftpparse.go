package proxy

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
)

// Parse errors. They are returned unwrapped, so the session can both compare
// them and use them as bounded metric labels.
var (
	ErrSyntax    = errors.New("malformed address argument")
	ErrByteRange = errors.New("number out of range 0-255")
	ErrFamily    = errors.New("unsupported network protocol")
)

// maxAddrText is the longest textual IPv6 address (INET6_ADDRSTRLEN-1); a
// longer EPRT address field is refused before it reaches netip.
const maxAddrText = 45

// ParsePORT parses a PORT argument "h1,h2,h3,h4,p1,p2" (RFC 959): six decimal
// numbers of 1-3 ASCII digits, no signs, no inner spaces. Spaces around the
// whole argument are tolerated. A number above 255 is ErrByteRange. The port
// (p1*256+p2) is returned as is, 0 included: policy is the caller's.
func ParsePORT(arg string) (netip.AddrPort, error) {
	return parseHostPort(strings.Trim(arg, " "))
}

// Parse227 finds the address in the text of a 227 reply (the part after
// "227 "). Like the kernel helper and common clients it accepts the numbers
// anywhere: "(h1,h2,h3,h4,p1,p2)", "=h1,...", or bare. It takes the first
// comma-separated run of exactly six numbers that is not glued to a word or
// another number (not preceded by a letter, '.', '+', '-' or ',', not followed
// by a letter, ',' or '.'+digit), then checks it strictly: 1-3 digits each, at
// most 255. No such run is ErrSyntax.
func Parse227(text string) (netip.AddrPort, error) {
	for i := 0; i < len(text); {
		if !isDigit(text[i]) {
			i++
			continue
		}
		start, count := i, 1
		for i < len(text) {
			if isDigit(text[i]) {
				i++
			} else if text[i] == ',' && i+1 < len(text) && isDigit(text[i+1]) {
				count++
				i++
			} else {
				break
			}
		}
		if count == 6 && !gluedBefore(text, start) && !gluedAfter(text, i) {
			return parseHostPort(text[start:i])
		}
	}
	return netip.AddrPort{}, ErrSyntax
}

func gluedBefore(s string, start int) bool {
	if start == 0 {
		return false
	}
	b := s[start-1]
	return isLetter(b) || b == '.' || b == '+' || b == '-' || b == ','
}

func gluedAfter(s string, end int) bool {
	if end >= len(s) {
		return false
	}
	b := s[end]
	return isLetter(b) || b == ',' || (b == '.' && end+1 < len(s) && isDigit(s[end+1]))
}

func isLetter(b byte) bool { return 'a' <= b|0x20 && b|0x20 <= 'z' }

// parseHostPort parses exactly "d,d,d,d,d,d". Syntax is checked over the whole
// string before ranges, so "256,1,2" is a syntax error, not a range error.
// Values saturate, so a long digit run can never wrap into range.
func parseHostPort(s string) (netip.AddrPort, error) {
	var vals [6]int
	var long bool // some number has more than 3 digits
	i := 0
	for n := range vals {
		if n > 0 {
			if i >= len(s) || s[i] != ',' {
				return netip.AddrPort{}, ErrSyntax
			}
			i++
		}
		start, v := i, 0
		for i < len(s) && isDigit(s[i]) {
			v = min(v*10+int(s[i]-'0'), 1000)
			i++
		}
		switch {
		case i == start:
			return netip.AddrPort{}, ErrSyntax
		case i-start > 3:
			long = true
		}
		vals[n] = v
	}
	if i != len(s) {
		return netip.AddrPort{}, ErrSyntax
	}
	for _, v := range vals {
		if v > 255 {
			return netip.AddrPort{}, ErrByteRange
		}
	}
	if long { // "0001": in range but not a 1-3 digit number
		return netip.AddrPort{}, ErrSyntax
	}
	addr := netip.AddrFrom4([4]byte{byte(vals[0]), byte(vals[1]), byte(vals[2]), byte(vals[3])})
	return netip.AddrPortFrom(addr, uint16(vals[4]<<8|vals[5])), nil
}

// ParseEPRT parses an EPRT argument "<d>proto<d>addr<d>port<d>" (RFC 2428),
// e.g. "|1|132.235.1.2|6275|" or "|2|1080::8:800:200C:417A|5282|". The
// delimiter is the first byte, printable ASCII 33-126 other than a digit.
// Proto 1 needs an IPv4 literal and 2 an IPv6 literal; another numeric proto,
// an address of the other family, a zone, or an IPv4-mapped IPv6 address is
// ErrFamily. The port is 1-65535 in 1-5 digits. Anything after the final
// delimiter is ErrSyntax, but spaces around the whole argument are tolerated
// as for PORT.
func ParseEPRT(arg string) (netip.AddrPort, error) {
	s := strings.Trim(arg, " ")
	if len(s) == 0 || !isDelimiter(s[0]) {
		return netip.AddrPort{}, ErrSyntax
	}
	d := s[0]
	var fields [3]string
	rest := s[1:]
	for n := range fields {
		end := strings.IndexByte(rest, d)
		if end < 0 {
			return netip.AddrPort{}, ErrSyntax
		}
		fields[n], rest = rest[:end], rest[end+1:]
	}
	if rest != "" {
		return netip.AddrPort{}, ErrSyntax
	}
	proto, addrText, portText := fields[0], fields[1], fields[2]
	if proto == "" || !allDigits(proto) {
		return netip.AddrPort{}, ErrSyntax
	}
	if len(addrText) == 0 || len(addrText) > maxAddrText {
		return netip.AddrPort{}, ErrSyntax
	}
	addr, err := netip.ParseAddr(addrText)
	if err != nil {
		return netip.AddrPort{}, ErrSyntax
	}
	port, ok := parsePort(portText)
	if !ok {
		return netip.AddrPort{}, ErrSyntax
	}
	switch {
	case proto == "1" && addr.Is4():
	case proto == "2" && addr.Is6() && !addr.Is4In6() && addr.Zone() == "":
	default:
		return netip.AddrPort{}, ErrFamily
	}
	return netip.AddrPortFrom(addr, port), nil
}

// Parse229 parses the port from the text of a 229 reply, e.g. "Entering
// Extended Passive Mode (|||6446|)". The parenthesised part must end the text
// (a trailing '.' and spaces are tolerated) and be "(<d><d><d>port<d>)" with
// one delimiter d repeated, printable ASCII 33-126 other than a digit. It is
// parsed from the end, so any delimiter, even '(' or ')', works. Port 1-65535.
func Parse229(text string) (uint16, error) {
	s := strings.TrimRight(text, " ")
	s = strings.TrimSuffix(s, ".")
	if len(s) < len("(|||1|)") || s[len(s)-1] != ')' {
		return 0, ErrSyntax
	}
	s = s[:len(s)-1]
	d := s[len(s)-1]
	if !isDelimiter(d) {
		return 0, ErrSyntax
	}
	s = s[:len(s)-1]
	digits := len(s)
	for digits > 0 && isDigit(s[digits-1]) {
		digits--
	}
	port, ok := parsePort(s[digits:])
	s = s[:digits]
	if !ok {
		return 0, ErrSyntax
	}
	if len(s) < 4 || s[len(s)-4] != '(' || s[len(s)-3] != d || s[len(s)-2] != d || s[len(s)-1] != d {
		return 0, ErrSyntax
	}
	return port, nil
}

func isDelimiter(b byte) bool { return 33 <= b && b <= 126 && !isDigit(b) }

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}

// parsePort parses a TCP port of 1-5 ASCII digits, 1-65535.
func parsePort(s string) (uint16, bool) {
	if len(s) == 0 || len(s) > 5 {
		return 0, false
	}
	v := 0
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
		v = v*10 + int(s[i]-'0')
	}
	if v < 1 || v > 65535 {
		return 0, false
	}
	return uint16(v), true
}

// FormatPORT returns the PORT argument for ap, e.g. "10,77,1,2,195,80".
// ap must be IPv4 (an IPv4-mapped address is unmapped); otherwise the result
// is "" rather than a wrong address.
func FormatPORT(ap netip.AddrPort) string {
	var buf [32]byte
	b, ok := appendHostPort(buf[:0], ap)
	if !ok {
		return ""
	}
	return string(b)
}

// Format227 returns the text of a 227 reply for ap, e.g.
// "Entering Passive Mode (10,77,2,2,195,80).". Like FormatPORT it returns ""
// for a non-IPv4 address.
func Format227(ap netip.AddrPort) string {
	var buf [64]byte
	b := append(buf[:0], "Entering Passive Mode ("...)
	b, ok := appendHostPort(b, ap)
	if !ok {
		return ""
	}
	return string(append(b, ")."...))
}

func appendHostPort(b []byte, ap netip.AddrPort) ([]byte, bool) {
	addr := ap.Addr().Unmap()
	if !addr.Is4() {
		return b, false
	}
	a := addr.As4()
	port := ap.Port()
	for _, v := range [6]byte{a[0], a[1], a[2], a[3], byte(port >> 8), byte(port)} {
		b = strconv.AppendUint(b, uint64(v), 10)
		b = append(b, ',')
	}
	return b[:len(b)-1], true
}

// FormatEPRT returns the EPRT argument for ap: "|1|10.77.1.2|50000|" or
// "|2|fd77::2|50000|". IPv4-mapped addresses are written as IPv4 and zones
// are dropped, so the result always parses with ParseEPRT.
func FormatEPRT(ap netip.AddrPort) string {
	addr := ap.Addr().Unmap().WithZone("")
	var buf [64]byte
	b := append(buf[:0], "|2|"...)
	if addr.Is4() {
		b[1] = '1'
	}
	b = addr.AppendTo(b)
	b = append(b, '|')
	b = strconv.AppendUint(b, uint64(ap.Port()), 10)
	return string(append(b, '|'))
}

// Format229 returns the text of a 229 reply for port, e.g.
// "Entering Extended Passive Mode (|||50000|)".
func Format229(port uint16) string {
	var buf [64]byte
	b := append(buf[:0], "Entering Extended Passive Mode (|||"...)
	b = strconv.AppendUint(b, uint64(port), 10)
	return string(append(b, "|)"...))
}
