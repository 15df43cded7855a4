package proxy

import (
	"bytes"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// referenceLines is a deliberately naive model of LineReader: split the whole
// input at every LF first, then decode each piece on its own. LineReader must
// agree with it however the input is segmented.
func referenceLines(data []byte, max int) []lineResult {
	var out []lineResult
	pieces := bytes.Split(data, []byte("\n"))
	for i, piece := range pieces {
		if i == len(pieces)-1 {
			if len(piece) > 0 {
				return append(out, lineResult{err: io.ErrUnexpectedEOF})
			}
			return append(out, lineResult{err: io.EOF})
		}
		var line []byte
		for j := 0; j < len(piece); j++ {
			if piece[j] != telnetIAC {
				line = append(line, piece[j])
				continue
			}
			j++ // the command byte
			switch {
			case j >= len(piece):
			case piece[j] == telnetIAC:
				line = append(line, telnetIAC)
			case piece[j] >= telnetWILL && piece[j] <= telnetDONT:
				j++ // the option byte
			}
		}
		// Only the CR right before the LF is part of the terminator; a CR
		// followed by removed Telnet commands still is.
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > max {
			out = append(out, lineResult{err: ErrLineTooLong})
		} else {
			out = append(out, lineResult{line: string(line)})
		}
	}
	panic("unreachable")
}

// FuzzLineReader checks LineReader against referenceLines. Properties: no
// panic, every line at most max bytes, no LF in a line, the same lines
// whatever the read sizes. A CR can be in a line (a lone CR is data);
// HasControl is what catches it, and the session refuses such lines.
func FuzzLineReader(f *testing.F) {
	seeds := []string{
		"USER anonymous\r\nPASS x\r\n",
		"A\nB\r\nC",
		"\xff\xff\xff\xfb\x01\xff\xf4\xff\xf2ABOR\r\n",
		"A\r\r\nB\rC\n",
		"A\xff\nB\xff\xfd\n",
		"A\r\xff\xf1\n\x00\n",
		"ABCDEFGHIJ\r\nK\r\n",
		"NOOP\r\n\xff",
	}
	for i, s := range seeds {
		f.Add([]byte(s), byte(i))
	}
	f.Fuzz(func(t *testing.T, data []byte, maxSeed byte) {
		// A small cap, so it is hit often, and a tiny read buffer, so short
		// inputs cross chunk boundaries (at 16..40 bytes) anywhere.
		max := int(maxSeed)%64 + 1
		bufSize := 16 + int(maxSeed>>6)*8
		want := referenceLines(data, max)
		for name, wrap := range readerWrappers {
			got := readAllLines(t, newLineReaderSize(wrap(bytes.NewReader(data)), max, bufSize))
			for _, r := range got {
				if len(r.line) > max || strings.IndexByte(r.line, '\n') >= 0 {
					t.Fatalf("%s: bad line %q (max %d)", name, r.line, max)
				}
				if strings.IndexByte(r.line, '\r') >= 0 && !HasControl(r.line) {
					t.Fatalf("%s: HasControl misses CR in %q", name, r.line)
				}
			}
			if !equalResults(got, want) {
				t.Fatalf("%s, max %d, input %q:\n got %v\nwant %v", name, max, data, got, want)
			}
		}
	})
}

// referencePORT is an obviously-correct, allocating model of ParsePORT.
func referencePORT(arg string) (netip.AddrPort, error) {
	fields := strings.Split(strings.Trim(arg, " "), ",")
	if len(fields) != 6 {
		return netip.AddrPort{}, ErrSyntax
	}
	var b [6]byte
	var rangeErr, longErr bool
	for i, f := range fields {
		if f == "" || strings.Trim(f, "0123456789") != "" {
			return netip.AddrPort{}, ErrSyntax
		}
		n, err := strconv.ParseUint(f, 10, 64)
		switch {
		case err != nil || n > 255:
			rangeErr = true
		case len(f) > 3:
			longErr = true
		}
		b[i] = byte(n)
	}
	switch {
	case rangeErr:
		return netip.AddrPort{}, ErrByteRange
	case longErr:
		return netip.AddrPort{}, ErrSyntax
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(b[4])<<8|uint16(b[5])), nil
}

func FuzzParsePORT(f *testing.F) {
	for _, s := range []string{
		"10,77,1,2,195,80", "10,77,1,2,256,22", "1,2,3,4,5,6,7", "010,0,0,1,0,21",
		" 1,2,3,4,5,6 ", "1,2,3,4,5,0001", "1,2,3,4,5,99999999999999999999", "-1,2,3,4,5,6", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		got, err := ParsePORT(arg)
		want, wantErr := referencePORT(arg)
		if got != want || err != wantErr {
			t.Fatalf("ParsePORT(%q) = %v, %v; reference %v, %v", arg, got, err, want, wantErr)
		}
		if err != nil {
			return
		}
		if !got.Addr().Is4() {
			t.Fatalf("ParsePORT(%q) = %v, not IPv4", arg, got)
		}
		if again, err := ParsePORT(FormatPORT(got)); again != got || err != nil {
			t.Fatalf("round trip of %v via %q: %v, %v", got, FormatPORT(got), again, err)
		}
	})
}

func FuzzParseEPRT(f *testing.F) {
	for _, s := range []string{
		"|1|132.235.1.2|6275|", "|2|1080::8:800:200C:417A|5282|", "!1!10.0.0.1!21!",
		"|2|::ffff:10.0.0.1|21|", "|2|fe80::1%eth0|21|", "|1|10.0.0.1|0|", "|1|10.0.0.1|65536|",
		"|3|10.0.0.1|21|", "|1|10.0.0.1|21|x", "((((", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		got, err := ParseEPRT(arg)
		if err != nil {
			if got.IsValid() {
				t.Fatalf("ParseEPRT(%q) failed with %v but returned %v", arg, err, got)
			}
			return
		}
		a := got.Addr()
		if got.Port() == 0 || a.Zone() != "" || a.Is4In6() || !(a.Is4() || a.Is6()) {
			t.Fatalf("ParseEPRT(%q) = %v", arg, got)
		}
		s := strings.Trim(arg, " ")
		if d := s[0]; s[len(s)-1] != d || strings.Count(s, string(d)) != 4 || !isDelimiter(d) {
			t.Fatalf("ParseEPRT(%q) accepted a bad delimiter", arg)
		}
		if again, err := ParseEPRT(FormatEPRT(got)); again != got || err != nil {
			t.Fatalf("round trip of %v via %q: %v, %v", got, FormatEPRT(got), again, err)
		}
	})
}

func FuzzParse227(f *testing.F) {
	for _, s := range []string{
		"Entering Passive Mode (10,77,2,2,195,80).", "=10,77,2,2,195,80", "10,77,2,2,195,80",
		"Entering Passive Mode (10,77,2,2,256,80).", "(1,2,3,4,5,6,7)", "(1,2,3,4,5,6.5)",
		"(0010,1,1,1,1,1)", "(10,77,2,2,4294967296,80)", "(-1,2,3,4,5,6)", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		got, err := Parse227(text)
		if err != nil {
			if got.IsValid() {
				t.Fatalf("Parse227(%q) failed with %v but returned %v", text, err, got)
			}
			return
		}
		if !got.Addr().Is4() {
			t.Fatalf("Parse227(%q) = %v, not IPv4", text, got)
		}
		// The numbers must really be in the text, as one comma-separated run.
		a := got.Addr().As4()
		if !containsNumbers(text, a[0], a[1], a[2], a[3], byte(got.Port()>>8), byte(got.Port())) {
			t.Fatalf("Parse227(%q) = %v, not found in the text", text, got)
		}
		if again, err := Parse227(Format227(got)); again != got || err != nil {
			t.Fatalf("round trip of %v via %q: %v, %v", got, Format227(got), again, err)
		}
	})
}

// containsNumbers reports whether text has the run "n1,n2,...", each number
// possibly written with leading zeros.
func containsNumbers(text string, nums ...byte) bool {
	for _, run := range strings.FieldsFunc(text, func(r rune) bool { return r != ',' && (r < '0' || r > '9') }) {
		fields := strings.Split(run, ",")
		for start := 0; start+len(nums) <= len(fields); start++ {
			match := true
			for i, n := range nums {
				v, err := strconv.Atoi(fields[start+i])
				if err != nil || v != int(n) {
					match = false
					break
				}
			}
			if match {
				return true
			}
		}
	}
	return false
}

func FuzzParse229(f *testing.F) {
	for _, s := range []string{
		"Entering Extended Passive Mode (|||6446|)", "Entering Extended Passive Mode (|||6446|).",
		"((((50000()", "(|||0|)", "(|||65536|)", "(|1|10.0.0.1|6446|)", "(|||6446|) x", "(||||)", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		port, err := Parse229(text)
		if err != nil {
			if port != 0 {
				t.Fatalf("Parse229(%q) failed with %v but returned %d", text, err, port)
			}
			return
		}
		if port == 0 || !strings.Contains(text, strconv.Itoa(int(port))) {
			t.Fatalf("Parse229(%q) = %d", text, port)
		}
		if again, err := Parse229(Format229(port)); again != port || err != nil {
			t.Fatalf("round trip of %d via %q: %d, %v", port, Format229(port), again, err)
		}
	})
}

func FuzzParseReplyLine(f *testing.F) {
	for _, s := range []string{"227 Entering Passive Mode", "227-", "227", "2270", "627 x", "027 x", " 227", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		code, more, ok := ParseReplyLine(line)
		wantOK := len(line) >= 3 && strings.IndexByte("12345", line[0]) >= 0 &&
			isDigit(line[1]) && isDigit(line[2]) && (len(line) == 3 || line[3] == ' ' || line[3] == '-')
		if ok != wantOK {
			t.Fatalf("ParseReplyLine(%q) ok = %v, want %v", line, ok, wantOK)
		}
		if !ok {
			if code != 0 || more {
				t.Fatalf("ParseReplyLine(%q) = %d, %v, false", line, code, more)
			}
			return
		}
		if strconv.Itoa(code) != line[:3] || more != (len(line) > 3 && line[3] == '-') {
			t.Fatalf("ParseReplyLine(%q) = %d, %v, true", line, code, more)
		}
	})
}

// TestFuzzReferenceAgrees makes sure the reference model itself matches the
// hand-written LineReader table, so the fuzzer compares against something right.
func TestFuzzReferenceAgrees(t *testing.T) {
	in := "USER a\r\nB\rC\r\r\nA\xff\xff\xff\xfb\x01Z\r\xff\xf1\nABCDEFGHIJKLMNOP\nQ"
	want := then(lines("USER a", "B\rC\r", "A\xffZ"), resTooLong, resUnexpected)
	if got := referenceLines([]byte(in), 10); !equalResults(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	got := readAllLines(t, NewLineReader(iotest.OneByteReader(strings.NewReader(in)), 10))
	if !equalResults(got, want) {
		t.Errorf("LineReader: got %v\nwant %v", got, want)
	}
}

func FuzzParsePortRange(f *testing.F) {
	for _, s := range []string{"50000-50099", "21", " 1-65535 ", "0-10", "10-9", "65536", "-", "1--2", "+1-2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParsePortRange(s)
		if err != nil {
			if !r.IsZero() {
				t.Fatalf("ParsePortRange(%q) failed with %v but returned %v", s, err, r)
			}
			return
		}
		if r.Lo == 0 || r.Lo > r.Hi || !r.Contains(r.Lo) || !r.Contains(r.Hi) {
			t.Fatalf("ParsePortRange(%q) = %v", s, r)
		}
		if again, err := ParsePortRange(r.String()); again != r || err != nil {
			t.Fatalf("round trip of %v via %q: %v, %v", r, r.String(), again, err)
		}
	})
}

// FuzzParseCommand checks that the verb is the text before the first space,
// ASCII upper-cased and otherwise unchanged, and that nothing is lost.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"PORT 10,77,1,2,195,80", "port  x", "ſtor a", "NOOP", " x", "", "eprt |2|fd77::1|5000|", "PORT\t1", "ABORT"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		verb, arg := ParseCommand(line)
		if strings.IndexByte(verb, ' ') >= 0 {
			t.Fatalf("ParseCommand(%q): verb %q has a space", line, verb)
		}
		raw, rest, found := strings.Cut(line, " ")
		if len(verb) != len(raw) || !strings.EqualFold(verb, raw) || arg != rest || (!found && arg != "") {
			t.Fatalf("ParseCommand(%q) = %q, %q", line, verb, arg)
		}
		for i := 0; i < len(verb); i++ {
			if 'a' <= verb[i] && verb[i] <= 'z' {
				t.Fatalf("ParseCommand(%q): verb %q not upper-cased", line, verb)
			}
			if verb[i] != raw[i] && verb[i] != raw[i]-('a'-'A') {
				t.Fatalf("ParseCommand(%q): verb %q changed a byte other than a-z", line, verb)
			}
		}
		// A valid verb is exactly what the server will split off: a letter
		// then letters or digits, and no other white space a server might
		// split at.
		if ValidVerb(line) {
			if len(verb) < 3 || len(verb) > maxVerb || verb[0] < 'A' || verb[0] > 'Z' ||
				strings.IndexFunc(verb, func(r rune) bool { return (r < 'A' || r > 'Z') && (r < '0' || r > '9') }) >= 0 {
				t.Fatalf("ValidVerb(%q) with verb %q", line, verb)
			}
		} else if found && len(raw) >= 3 && len(raw) <= 4 && strings.IndexFunc(raw, func(r rune) bool { return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') }) < 0 {
			t.Fatalf("ValidVerb(%q) refused the verb %q", line, raw)
		}
	})
}
