package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// MaxLine is the default cap on a control-channel line, in bytes, excluding CRLF.
const MaxLine = 4096

// tooLongHead is how much of an over-long line ReadLine returns.
const tooLongHead = 4

// ErrLineTooLong is returned by ReadLine for a line longer than the reader's cap.
// It is not fatal: the rest of that line has been discarded and the next ReadLine
// reads the following line.
var ErrLineTooLong = errors.New("line too long")

// readBufferSize is the fixed size of the bufio buffer under a LineReader. Long
// lines are consumed through it in chunks, so it never grows.
// 1 KiB holds any usual command or reply line and keeps idle sessions small.
const readBufferSize = 1024

// Telnet command bytes (RFC 854) that matter for decoding.
const (
	telnetIAC  = 0xFF
	telnetIP   = 0xF4 // Interrupt Process
	telnetDM   = 0xF2 // Data Mark, the end of a Synch
	telnetDONT = 0xFE
	telnetDO   = 0xFD
	telnetWONT = 0xFC
	telnetWILL = 0xFB
)

type telnetState uint8

const (
	stateData    telnetState = iota
	stateCommand             // after IAC
	stateOption              // after IAC WILL/WONT/DO/DONT, expecting the option byte
)

// LineReader reads FTP control-channel lines (RFC 959 over a Telnet NVT).
//
// Framing: every LF ends a line, whatever precedes it, so ftpgate splits the
// stream exactly where servers and the kernel helper do (none of them let a
// Telnet option byte swallow an LF). A CR directly before the LF is dropped;
// any other CR is kept as data, and so is NUL: the session refuses lines for
// which HasControl is true.
//
// Telnet: IAC IAC decodes to one 0xFF byte; IAC WILL/WONT/DO/DONT <opt> and
// IAC <other> (IP, DM, AYT, ...) are removed. An IAC sequence cut short by an
// LF is dropped. A CR followed by removed Telnet commands and then LF still
// counts as CRLF.
//
// The length cap applies to the decoded line. Memory is bounded by the cap plus
// a fixed read buffer whatever the input.
type LineReader struct {
	br        *bufio.Reader
	max       int
	line      []byte // decoded bytes of the current line
	state     telnetState
	pendingCR bool  // a CR was seen; it is data unless an LF follows
	tooLong   bool  // the current line exceeded max; its bytes are being discarded
	partial   bool  // bytes of the current line have been consumed
	synch     bool  // the current line carried Telnet IP or DM
	lastSynch bool  // the same, for the line ReadLine returned last
	err       error // sticky end-of-stream error
}

// NewLineReader returns a LineReader over r with a cap of max decoded bytes per
// line; max <= 0 means MaxLine.
func NewLineReader(r io.Reader, max int) *LineReader {
	return newLineReaderSize(r, max, readBufferSize)
}

// newLineReaderSize lets tests use a tiny read buffer (bufio's minimum is 16)
// so that short inputs cross chunk boundaries.
func newLineReaderSize(r io.Reader, max, bufSize int) *LineReader {
	if max <= 0 {
		max = MaxLine
	}
	return &LineReader{br: bufio.NewReaderSize(r, bufSize), max: max}
}

// ReadLine returns the next line without its terminator. The string is freshly
// allocated; it is the only per-line allocation.
//
// Errors: ErrLineTooLong for an over-long line (the reader is then positioned
// at the next line), returned with the line's first bytes (up to 4, fewer
// only if the cap is that small): a reply's code and whether more lines
// follow; io.EOF at a clean end of stream; io.ErrUnexpectedEOF when
// the stream ends inside a line (the partial line is not returned). Both EOF
// errors are sticky. Any other error from the underlying reader is returned as
// is and the partial line is kept, so a read after a temporary error such as a
// deadline continues the same line.
func (r *LineReader) ReadLine() (string, error) {
	if r.err != nil {
		return "", r.err
	}
	for {
		// ReadSlice never grows the buffer: a long line arrives as several
		// ErrBufferFull chunks, and an LF is always the last byte of a chunk.
		chunk, err := r.br.ReadSlice('\n')
		if len(chunk) > 0 {
			r.partial = true
			if r.decode(chunk) {
				return r.finishLine()
			}
		}
		switch err {
		case nil, bufio.ErrBufferFull:
			continue
		case io.EOF:
			r.err = io.EOF
			if r.partial {
				r.err = io.ErrUnexpectedEOF
			}
			r.resetLine()
			return "", r.err
		default:
			return "", err
		}
	}
}

// Buffered reports how many bytes have been read from the underlying reader
// but not yet consumed by ReadLine. Non-zero right after a command means the
// peer pipelined more input behind it.
func (r *LineReader) Buffered() int { return r.br.Buffered() }

// HasLine reports whether the bytes already read hold the end of a line, so
// that ReadLine can return without waiting for more input (as far as line
// ends go: Telnet sequences are not decoded ahead).
func (r *LineReader) HasLine() bool {
	b, _ := r.br.Peek(r.br.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
}

// decode feeds one chunk (ending in LF or not) into the line and reports
// whether the chunk completed it.
func (r *LineReader) decode(chunk []byte) (eol bool) {
	if chunk[len(chunk)-1] == '\n' {
		eol = true
		chunk = chunk[:len(chunk)-1]
	}
	for i := 0; i < len(chunk); i++ {
		b := chunk[i]
		switch r.state {
		case stateCommand:
			r.state = stateData
			switch b {
			case telnetIAC:
				r.appendData(chunk[i : i+1])
			case telnetIP, telnetDM:
				r.synch = true
			case telnetWILL, telnetWONT, telnetDO, telnetDONT:
				r.state = stateOption
			}
			// Any other byte completes a two-byte command, dropped.
		case stateOption:
			r.state = stateData
		default:
			switch b {
			case telnetIAC:
				r.state = stateCommand
			case '\r':
				r.flushCR() // an earlier CR not followed by LF was data
				r.pendingCR = true
			default:
				// Copy the whole run of ordinary bytes at once.
				j := i + 1
				for j < len(chunk) && chunk[j] != telnetIAC && chunk[j] != '\r' {
					j++
				}
				r.appendData(chunk[i:j])
				i = j - 1
			}
		}
	}
	return eol
}

// appendData adds decoded bytes to the line, after any CR held back because
// it might have been the start of CRLF.
func (r *LineReader) appendData(p []byte) {
	r.flushCR()
	r.put(p)
}

func (r *LineReader) flushCR() {
	if r.pendingCR {
		r.pendingCR = false
		r.put(crByte[:])
	}
}

// put appends to the line; past the cap it records tooLong and keeps at
// most the line's head.
func (r *LineReader) put(p []byte) {
	if r.tooLong {
		return
	}
	room := r.max - len(r.line)
	if len(p) > room {
		r.tooLong = true
		// Keep the head ReadLine returns with ErrLineTooLong.
		if n := min(room, tooLongHead-len(r.line)); n > 0 {
			r.line = append(r.line, p[:n]...)
		}
		return
	}
	if len(r.line)+len(p) > cap(r.line) {
		r.grow(len(r.line) + len(p))
	}
	r.line = append(r.line, p...)
}

var crByte = [1]byte{'\r'}

// grow makes room for need bytes without ever exceeding the cap (append's own
// growth could overshoot it by up to 2x).
func (r *LineReader) grow(need int) {
	n := max(2*cap(r.line), need, 64)
	n = min(n, r.max)
	line := make([]byte, len(r.line), n)
	copy(line, r.line)
	r.line = line
}

func (r *LineReader) finishLine() (string, error) {
	r.lastSynch = r.synch
	if r.tooLong {
		// The start survives: enough for a reply's "ddd-" (see ReadLine).
		head := string(r.line[:min(len(r.line), tooLongHead)])
		r.resetLine()
		return head, ErrLineTooLong
	}
	s := string(r.line)
	r.resetLine()
	return s, nil
}

func (r *LineReader) resetLine() {
	r.line = r.line[:0]
	r.state = stateData
	r.pendingCR = false
	r.tooLong = false
	r.synch = false
	r.partial = false
}

// HasControl reports whether s contains a NUL, CR or LF byte. Lines from a
// LineReader never contain LF; CR and NUL reach the session as data and it
// must refuse them (a server could read them as line ends).
func HasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case 0, '\r', '\n':
			return true
		}
	}
	return false
}

// ParseCommand splits a command line into its verb, upper-cased, and its
// argument: everything after the first space, kept as is ("PORT  x" has the
// argument " x"). Only ASCII letters are upper-cased: Unicode case mapping
// would turn e.g. "ſtor" into "STOR", a verb the server does not see.
// The verb is a substring of line unless it needed upper-casing.
func ParseCommand(line string) (verb, arg string) {
	verb = line
	for i := 0; i < len(line); i++ {
		if line[i] == ' ' {
			verb, arg = line[:i], line[i+1:]
			break
		}
	}
	return asciiUpper(verb), arg
}

// ValidVerb reports whether line starts with a verb — an ASCII letter, then
// 2 to 7 letters or digits: RFC 959's 3-4 letters and extensions such as
// XMD5 or XSHA256 — followed by a space or the end of the line.
// ParseCommand splits at the first space only, while some servers split at
// any white space: "PORT\t…" must not pass unchecked.
func ValidVerb(line string) bool {
	if line == "" || !isLetter(line[0]) {
		return false
	}
	n := 1
	for n < len(line) && n <= maxVerb && (isLetter(line[n]) || isDigit(line[n])) {
		n++
	}
	return n >= 3 && n <= maxVerb && (n == len(line) || line[n] == ' ')
}

// maxVerb is the longest verb ValidVerb accepts (XSHA256, XSHA512).
const maxVerb = 8

func asciiUpper(s string) string {
	lower := -1
	for i := 0; i < len(s); i++ {
		if 'a' <= s[i] && s[i] <= 'z' {
			lower = i
			break
		}
	}
	if lower < 0 {
		return s
	}
	b := []byte(s)
	for i := lower; i < len(b); i++ {
		if 'a' <= b[i] && b[i] <= 'z' {
			b[i] -= 'a' - 'A'
		}
	}
	return string(b)
}

// ParseReplyLine reads the start of a reply line (RFC 959 section 4.2).
// "ddd-" starts or continues a multi-line reply (more=true); "ddd " or exactly
// "ddd" is a final line (more=false). ok is false for anything else, e.g. a
// text line inside a multi-line reply. The first digit must be 1-5.
func ParseReplyLine(line string) (code int, more bool, ok bool) {
	if len(line) < 3 || line[0] < '1' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) {
		return 0, false, false
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if len(line) == 3 {
		return code, false, true
	}
	switch line[3] {
	case ' ':
		return code, false, true
	case '-':
		return code, true, true
	}
	return 0, false, false
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// Synch reports whether the line ReadLine returned last carried Telnet
// Interrupt Process or Data Mark: the client sent its ABOR with the Telnet
// Synch of RFC 959 4.1.3 (the bytes themselves are not part of the line).
func (r *LineReader) Synch() bool { return r.lastSynch }

// Raw returns the bytes received but not yet consumed, followed by the rest of
// the stream, for a session that stops reading lines (TLS passthrough). Call it
// only at a line boundary.
func (r *LineReader) Raw() io.Reader { return r.br }
