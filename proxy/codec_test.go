package proxy

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// lineResult is one ReadLine outcome.
type lineResult struct {
	line string
	err  error
}

// readAllLines calls ReadLine until it returns an error other than
// ErrLineTooLong, and returns every outcome including that last one.
func readAllLines(t testing.TB, lr *LineReader) []lineResult {
	t.Helper()
	var out []lineResult
	for range 10000 {
		line, err := lr.ReadLine()
		if err == ErrLineTooLong {
			line = "" // its head is checked by TestLineTooLongKeepsHead
		}
		out = append(out, lineResult{line, err})
		if err != nil && err != ErrLineTooLong {
			return out
		}
	}
	t.Fatal("ReadLine made no progress")
	return nil
}

func (r lineResult) String() string { return fmt.Sprintf("{%q %v}", r.line, r.err) }

func lines(ls ...string) []lineResult {
	out := make([]lineResult, len(ls))
	for i, l := range ls {
		out[i] = lineResult{line: l}
	}
	return out
}

var (
	resEOF        = lineResult{err: io.EOF}
	resUnexpected = lineResult{err: io.ErrUnexpectedEOF}
	resTooLong    = lineResult{err: ErrLineTooLong}
)

func then(rs []lineResult, more ...lineResult) []lineResult { return append(rs, more...) }

// readerWrappers deliver the same bytes in different read sizes; the result
// must never depend on how the stream was segmented.
var readerWrappers = map[string]func(io.Reader) io.Reader{
	"whole":   func(r io.Reader) io.Reader { return r },
	"onebyte": iotest.OneByteReader,
	"half":    iotest.HalfReader,
	"dataerr": iotest.DataErrReader,
}

func TestLineReaderTable(t *testing.T) {
	tests := []struct {
		name string
		in   string
		max  int
		want []lineResult
	}{
		{"empty stream", "", 0, []lineResult{resEOF}},
		{"crlf", "USER a\r\nPASS b\r\n", 0, then(lines("USER a", "PASS b"), resEOF)},
		{"bare lf", "USER a\nPASS b\n", 0, then(lines("USER a", "PASS b"), resEOF)},
		{"mixed terminators", "A\r\nB\nC\r\n", 0, then(lines("A", "B", "C"), resEOF)},
		{"empty lines", "\r\n\n\r\n", 0, then(lines("", "", ""), resEOF)},
		{"lone cr is data", "A\rB\r\n", 0, then(lines("A\rB"), resEOF)},
		{"cr cr lf keeps one cr", "A\r\r\n", 0, then(lines("A\r"), resEOF)},
		{"leading cr", "\rA\n", 0, then(lines("\rA"), resEOF)},
		{"nul kept", "A\x00B\r\n", 0, then(lines("A\x00B"), resEOF)},
		{"utf-8 passes through", "CWD été\r\n", 0, then(lines("CWD été"), resEOF)},
		{"high bytes pass through", "X\x80\xfe\r\n", 0, then(lines("X\x80\xfe"), resEOF)},

		{"iac iac is 0xff", "A\xff\xffB\r\n", 0, then(lines("A\xffB"), resEOF)},
		{"iac iac iac iac", "\xff\xff\xff\xff\n", 0, then(lines("\xff\xff"), resEOF)},
		{"iac will", "A\xff\xfb\x01B\r\n", 0, then(lines("AB"), resEOF)},
		{"iac wont", "A\xff\xfc\x01B\r\n", 0, then(lines("AB"), resEOF)},
		{"iac do", "A\xff\xfd\x03B\r\n", 0, then(lines("AB"), resEOF)},
		{"iac dont", "A\xff\xfe\x22B\r\n", 0, then(lines("AB"), resEOF)},
		{"option byte 0xff consumed", "\xff\xfd\xffA\n", 0, then(lines("A"), resEOF)},
		{"option byte cr consumed", "A\xff\xfd\rB\n", 0, then(lines("AB"), resEOF)},
		{"iac ip iac dm abor", "\xff\xf4\xff\xf2ABOR\r\n", 0, then(lines("ABOR"), resEOF)},
		{"iac ayt", "NO\xff\xf6OP\r\n", 0, then(lines("NOOP"), resEOF)},
		{"iac nop", "\xff\xf1NOOP\r\n", 0, then(lines("NOOP"), resEOF)},
		{"iac sb se are two-byte", "A\xff\xfaB\xff\xf0C\n", 0, then(lines("ABC"), resEOF)},
		{"iac non-command byte dropped", "\xffAB\n", 0, then(lines("B"), resEOF)},
		{"iac cut by lf", "A\xff\nB\n", 0, then(lines("A", "B"), resEOF)},
		{"iac do cut by lf", "A\xff\xfd\nB\n", 0, then(lines("A", "B"), resEOF)},
		{"iac between cr and lf", "A\r\xff\xf1\n", 0, then(lines("A"), resEOF)},
		{"iac iac after cr makes cr data", "A\r\xff\xff\n", 0, then(lines("A\r\xff"), resEOF)},
		{"iac iac before crlf", "A\xff\xff\r\n", 0, then(lines("A\xff"), resEOF)},
		{"only iac commands", "\xff\xf4\xff\xf2\r\n", 0, then(lines(""), resEOF)},

		{"eof inside line", "NOOP", 0, []lineResult{resUnexpected}},
		{"eof after cr", "NOOP\r", 0, []lineResult{resUnexpected}},
		{"eof after line then partial", "NOOP\r\nPW", 0, then(lines("NOOP"), resUnexpected)},
		{"iac at end of stream", "NOOP\r\n\xff", 0, then(lines("NOOP"), resUnexpected)},
		{"iac will at end of stream", "NOOP\r\n\xff\xfb", 0, then(lines("NOOP"), resUnexpected)},
		{"iac iac at end of stream", "NOOP\r\n\xff\xff", 0, then(lines("NOOP"), resUnexpected)},
		{"iac command at end of stream", "NOOP\r\n\xff\xf1", 0, then(lines("NOOP"), resUnexpected)},

		{"exactly max", "ABCD\r\nE\r\n", 4, then(lines("ABCD", "E"), resEOF)},
		{"exactly max bare lf", "ABCD\nE\n", 4, then(lines("ABCD", "E"), resEOF)},
		{"max plus one", "ABCDE\r\nNOOP\r\n", 4, then([]lineResult{resTooLong}, then(lines("NOOP"), resEOF)...)},
		{"max with lone cr is too long", "ABCD\rX\nE\n", 4, then([]lineResult{resTooLong}, then(lines("E"), resEOF)...)},
		{"max then cr cr lf is too long", "ABCD\r\r\nE\n", 4, then([]lineResult{resTooLong}, then(lines("E"), resEOF)...)},
		{"cap counts decoded bytes", "AB\xff\xffC\xff\xf1\n\xff\xfb\x01ABCD\n", 4, then(lines("AB\xffC", "ABCD"), resEOF)},
		{"two long lines in a row", "ABCDEFGH\nIJKLMNOP\r\nQ\r\n", 4, then([]lineResult{resTooLong, resTooLong}, then(lines("Q"), resEOF)...)},
		{"long line then eof", "ABCDEFG", 4, []lineResult{resUnexpected}},
		{"long line ending in iac", "ABCDE\xff\nQ\n", 4, then([]lineResult{resTooLong}, then(lines("Q"), resEOF)...)},
		{"max one", "A\nAB\nB\n", 1, then(lines("A"), then([]lineResult{resTooLong}, then(lines("B"), resEOF)...)...)},
	}
	for _, tt := range tests {
		for wname, wrap := range readerWrappers {
			t.Run(tt.name+"/"+wname, func(t *testing.T) {
				lr := NewLineReader(wrap(strings.NewReader(tt.in)), tt.max)
				got := readAllLines(t, lr)
				if !equalResults(got, tt.want) {
					t.Errorf("input %q max %d:\n got %v\nwant %v", tt.in, tt.max, got, tt.want)
				}
				// End-of-stream errors are sticky.
				if _, err := lr.ReadLine(); err != got[len(got)-1].err {
					t.Errorf("second read after end: %v, want %v", err, got[len(got)-1].err)
				}
			})
		}
	}
}

func equalResults(a, b []lineResult) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].line != b[i].line || a[i].err != b[i].err {
			return false
		}
	}
	return true
}

func TestLineReaderDefaultMax(t *testing.T) {
	ok := strings.Repeat("a", MaxLine)
	in := ok + "\r\n" + ok + "b\r\nNOOP\r\n"
	for _, max := range []int{0, -1} {
		got := readAllLines(t, NewLineReader(strings.NewReader(in), max))
		want := []lineResult{{line: ok}, resTooLong, {line: "NOOP"}, resEOF}
		if !equalResults(got, want) {
			t.Errorf("max %d: got %d results %v", max, len(got), errsOf(got))
		}
	}
}

func errsOf(rs []lineResult) []error {
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.err)
	}
	return errs
}

// TestLineReaderChunkBoundaries puts Telnet sequences and CRLF across the
// internal read buffer's boundary, where a line is decoded in two chunks.
func TestLineReaderChunkBoundaries(t *testing.T) {
	const max = 3 * readBufferSize
	tails := []struct {
		in, want string
	}{
		{"\xff\xffZ\r\n", "\xffZ"},
		{"\xff\xfb\x01Z\r\n", "Z"},
		{"\xff\xf4\xff\xf2Z\r\n", "Z"},
		{"\r\r\n", "\r"},
		{"\r\xff\xf1\n", ""},
		{"\rZ\n", "\rZ"},
		{"\r\n", ""},
	}
	for _, tail := range tails {
		for off := range 6 {
			prefix := strings.Repeat("x", readBufferSize-off)
			in := prefix + tail.in + "NEXT\r\n"
			for wname, wrap := range readerWrappers {
				got := readAllLines(t, NewLineReader(wrap(strings.NewReader(in)), max))
				want := then(lines(prefix+tail.want, "NEXT"), resEOF)
				if !equalResults(got, want) {
					t.Errorf("tail %q offset %d %s: got %d results %v", tail.in, off, wname, len(got), errsOf(got))
				}
			}
		}
	}
}

// TestLineReaderTooLongAcrossChunks discards an over-long line whose LF lies
// at every position around the read buffer boundary.
func TestLineReaderTooLongAcrossChunks(t *testing.T) {
	for n := readBufferSize - 3; n <= readBufferSize+3; n++ {
		in := strings.Repeat("y", n) + "\r\nNOOP\r\n"
		got := readAllLines(t, NewLineReader(strings.NewReader(in), 100))
		want := then([]lineResult{resTooLong}, then(lines("NOOP"), resEOF)...)
		if !equalResults(got, want) {
			t.Errorf("length %d: got %v", n, errsOf(got))
		}
	}
}

// repeatReader yields n copies of fill, then tail, without holding the whole
// stream in memory.
type repeatReader struct {
	fill byte
	n    int
	tail string
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n > 0 {
		k := min(len(p), r.n)
		for i := range k {
			p[i] = r.fill
		}
		r.n -= k
		return k, nil
	}
	if r.tail == "" {
		return 0, io.EOF
	}
	k := copy(p, r.tail)
	r.tail = r.tail[k:]
	return k, nil
}

func TestLineReaderHugeLineStaysSmall(t *testing.T) {
	const huge = 1 << 20
	for _, fill := range []byte{'A', '\r', telnetIAC} {
		lr := NewLineReader(&repeatReader{fill: fill, n: huge, tail: "B\r\nNOOP\r\n"}, MaxLine)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err1 := lr.ReadLine()
		line, err2 := lr.ReadLine()
		runtime.ReadMemStats(&after)

		// A run of IAC IAC decodes to 0xFF data, so all three fills overflow.
		if err1 != ErrLineTooLong || line != "NOOP" || err2 != nil {
			t.Errorf("fill %q: got %v, %q, %v", fill, err1, line, err2)
		}
		if c := cap(lr.line); c > MaxLine {
			t.Errorf("fill %q: line buffer grew to %d bytes", fill, c)
		}
		if lr.br.Size() != readBufferSize {
			t.Errorf("fill %q: read buffer is %d bytes", fill, lr.br.Size())
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<10 {
			t.Errorf("fill %q: reading a 1 MiB line allocated %d bytes", fill, alloc)
		}
	}
}

// cycleReader yields data over and over, forever.
type cycleReader struct {
	data []byte
	off  int
}

func (r *cycleReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.data[r.off:])
		n += k
		r.off = (r.off + k) % len(r.data)
	}
	return n, nil
}

func TestLineReaderOneAllocPerLine(t *testing.T) {
	lr := NewLineReader(&cycleReader{data: []byte("PORT 10,77,1,2,195,80\r\nNOOP\nRETR f\xff\xff\r\n")}, MaxLine)
	lr.ReadLine() // the first line allocates the line buffer
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := lr.ReadLine(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("ReadLine: %v allocations per line, want 1", allocs)
	}
}

func TestLineReaderBuffered(t *testing.T) {
	lr := NewLineReader(strings.NewReader("USER a\r\nPASS b\r\n"), 0)
	if got := lr.Buffered(); got != 0 {
		t.Errorf("Buffered before reading: %d", got)
	}
	if line, _ := lr.ReadLine(); line != "USER a" {
		t.Fatalf("got %q", line)
	}
	if got := lr.Buffered(); got != len("PASS b\r\n") {
		t.Errorf("Buffered with a pipelined line: %d, want %d", got, len("PASS b\r\n"))
	}
	lr.ReadLine()
	if got := lr.Buffered(); got != 0 {
		t.Errorf("Buffered after the last line: %d", got)
	}
}

// scriptedReader returns its steps one per Read call.
type scriptedReader struct {
	steps []scriptStep
}

type scriptStep struct {
	data string
	err  error
}

func (r *scriptedReader) Read(p []byte) (int, error) {
	if len(r.steps) == 0 {
		return 0, io.EOF
	}
	s := r.steps[0]
	n := copy(p, s.data)
	if n < len(s.data) {
		r.steps[0].data = s.data[n:]
		return n, nil
	}
	r.steps = r.steps[1:]
	return n, s.err
}

func TestLineReaderResumesAfterTemporaryError(t *testing.T) {
	lr := NewLineReader(&scriptedReader{steps: []scriptStep{
		{data: "RE\xff", err: os.ErrDeadlineExceeded},
		{data: "\xffTR \r"},
		{data: "", err: os.ErrDeadlineExceeded},
		{data: "\nNOOP\r\n"},
	}}, 0)
	want := []lineResult{
		{err: os.ErrDeadlineExceeded},
		{err: os.ErrDeadlineExceeded},
		{line: "RE\xffTR "},
		{line: "NOOP"},
		resEOF,
	}
	var got []lineResult
	for range want {
		line, err := lr.ReadLine()
		got = append(got, lineResult{line, err})
	}
	if !equalResults(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestLineReaderOtherErrorReturned(t *testing.T) {
	boom := errors.New("boom")
	lr := NewLineReader(iotest.ErrReader(boom), 0)
	if _, err := lr.ReadLine(); err != boom {
		t.Errorf("got %v, want %v", err, boom)
	}
}

func TestCodecHasControl(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"", false},
		{"NOOP", false},
		{"RETR \xff\x80é", false},
		{"A\x00B", true},
		{"A\rB", true},
		{"A\n", true},
		{"\r", true},
		{"TAB\tOK", false},
		{"\x01\x7f", false},
	}
	for _, tt := range tests {
		if got := HasControl(tt.in); got != tt.want {
			t.Errorf("HasControl(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestLineReaderNULThenHasControl(t *testing.T) {
	line, err := NewLineReader(strings.NewReader("RETR a\x00b\r\n"), 0).ReadLine()
	if err != nil || line != "RETR a\x00b" || !HasControl(line) {
		t.Errorf("got %q, %v; HasControl %v", line, err, HasControl(line))
	}
}

func TestParseCommand(t *testing.T) {
	tests := []struct {
		line, verb, arg string
	}{
		{"port 1,2,3,4,5,6", "PORT", "1,2,3,4,5,6"},
		{"PORT 1,2,3,4,5,6", "PORT", "1,2,3,4,5,6"},
		{"NOOP", "NOOP", ""},
		{"noop ", "NOOP", ""},
		{"PORT  1,2", "PORT", " 1,2"},
		{"StOr a b  ", "STOR", "a b  "},
		{"EPSV ALL", "EPSV", "ALL"},
		{"eprt |1|1.2.3.4|5|", "EPRT", "|1|1.2.3.4|5|"},
		{"", "", ""},
		{" x", "", "x"},
		{"\tnoop", "\tNOOP", ""},
		{"ſtor x", "ſTOR", "x"}, // no Unicode case mapping
		{"ıd x", "ıD", "x"},
		{"x\xffy z", "X\xffY", "z"},
	}
	for _, tt := range tests {
		verb, arg := ParseCommand(tt.line)
		if verb != tt.verb || arg != tt.arg {
			t.Errorf("ParseCommand(%q) = %q, %q; want %q, %q", tt.line, verb, arg, tt.verb, tt.arg)
		}
	}
}

func TestParseCommandNoAllocUpperCase(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() { ParseCommand("RETR some/file") })
	if allocs != 0 {
		t.Errorf("ParseCommand of an upper-case verb: %v allocations", allocs)
	}
}

func TestParseReplyLine(t *testing.T) {
	tests := []struct {
		line string
		code int
		more bool
		ok   bool
	}{
		{"227 Entering Passive Mode (1,2,3,4,5,6).", 227, false, true},
		{"227-first line", 227, true, true},
		{"227", 227, false, true},
		{"227 ", 227, false, true},
		{"227-", 227, true, true},
		{"100 x", 100, false, true},
		{"599-x", 599, true, true},
		{"150 ", 150, false, true},
		{"227x", 0, false, false},
		{"227\t", 0, false, false},
		{"2270 ", 0, false, false},
		{"22", 0, false, false},
		{"", 0, false, false},
		{" 227 ", 0, false, false},
		{"027 x", 0, false, false},
		{"627 x", 0, false, false},
		{"5a0 x", 0, false, false},
		{"+27 x", 0, false, false},
		{"２２７ x", 0, false, false}, // full-width digits
		{"continuation text", 0, false, false},
	}
	for _, tt := range tests {
		code, more, ok := ParseReplyLine(tt.line)
		if code != tt.code || more != tt.more || ok != tt.ok {
			t.Errorf("ParseReplyLine(%q) = %d, %v, %v; want %d, %v, %v", tt.line, code, more, ok, tt.code, tt.more, tt.ok)
		}
	}
}

func BenchmarkReadLine(b *testing.B) {
	r := &cycleReader{data: []byte("TYPE I\r\nPASV\r\nRETR file.txt\r\nCWD /pub/x\r\nPORT 10,0,0,1,4,5\r\n")}
	lr := NewLineReader(r, MaxLine)
	b.ReportAllocs()
	b.SetBytes(int64(len(r.data) / 5))
	for b.Loop() {
		if _, err := lr.ReadLine(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLineTooLongKeepsHead(t *testing.T) {
	long := strings.Repeat("x", 100)
	for _, tc := range []struct {
		in   string
		max  int
		head string
	}{
		{"227-" + long + "\r\n", 50, "227-"},
		{"220 " + long + "\r\n", 50, "220 "},
		{"PORT" + long + "\r\n", 50, "PORT"},
		{"22" + long + "\r\n", 2, "22"},
	} {
		lr := NewLineReader(strings.NewReader(tc.in), tc.max)
		if head, err := lr.ReadLine(); err != ErrLineTooLong || head != tc.head {
			t.Errorf("ReadLine(%.10q…, max %d) = %q, %v; want %q, ErrLineTooLong", tc.in, tc.max, head, err, tc.head)
		}
	}
}
