package e2e

// FTP client drivers. Each runs in a namespace (normally the lab's client ns),
// logs in anonymously, and downloads (or uploads) one file with a given
// data-connection mode. Each driver checks from its own transcript that the
// intended command (PASV, EPSV, PORT or EPRT) was used and no other data-
// connection command, so "mode X works" is never a silent fallback.
//
// Timeouts: connecting, accepting and every read/write time out after
// clientNetTimeout (5 s), so a blocked data connection fails within ~5-9 s
// instead of hanging (lftp: ~8-9 s, it reconnects once). A whole operation is
// bounded by clientMaxTime (20 s): generous, because a successful transfer on
// a loaded 2-core CI machine can be slow, and it is never what makes a blocked
// transfer fail.
//
// What each client can drive (IPv6 has no PASV/PORT: RFC 2428 replaces them by
// EPSV/EPRT, and every client either refuses or silently switches):
//
//	client  IPv4                   IPv6
//	curl    pasv epsv port eprt    epsv eprt
//	goftp   pasv epsv              epsv          (jlaffaye/ftp has no active mode)
//	python  pasv epsv port eprt    epsv eprt     (ftplib; IPv4 EPSV/EPRT done by the script)
//	lftp    pasv epsv port         epsv eprt     (lftp picks PORT on IPv4, EPRT on IPv6)

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
)

// Mode is how the data connection is negotiated.
type Mode string

const (
	ModePASV Mode = "pasv" // client connects; 227 (IPv4 only)
	ModeEPSV Mode = "epsv" // client connects; 229
	ModePORT Mode = "port" // server connects; PORT (IPv4 only)
	ModeEPRT Mode = "eprt" // server connects; EPRT
)

// Modes lists all modes in a stable order.
var Modes = []Mode{ModePASV, ModeEPSV, ModePORT, ModeEPRT}

// Verb is the FTP command that negotiates the mode.
func (m Mode) Verb() string { return strings.ToUpper(string(m)) }

// Active reports whether the server opens the data connection.
func (m Mode) Active() bool { return m == ModePORT || m == ModeEPRT }

var errUnsupported = errors.New("combination not supported by this client")

// errClientBound marks a client run ended by its overall bound (clientMaxTime,
// or the caller's context) rather than by one of its network timeouts: the
// client hung.
var errClientBound = errors.New("client ended by its overall time bound")

// IsHung reports whether err means the client was still running when its
// overall bound ended it.
func IsHung(err error) bool { return errors.Is(err, errClientBound) }

// boundErr wraps err with errClientBound when ctx, the client's whole-run
// context, has ended, or its deadline has passed (the Go client's reads are
// capped by that deadline, so a read that ran into it returns at or after it).
func boundErr(ctx context.Context, err error) error {
	if err == nil || errors.Is(err, errUnsupported) {
		return err
	}
	deadline, ok := ctx.Deadline()
	if ctx.Err() != nil || (ok && !time.Now().Before(deadline)) {
		return fmt.Errorf("%w: %w", errClientBound, err)
	}
	return err
}

// IsUnsupported reports whether err means the client cannot drive that mode/family.
func IsUnsupported(err error) bool { return errors.Is(err, errUnsupported) }

const (
	clientNetTimeout = 5 * time.Second
	clientMaxTime    = 20 * time.Second
)

// Client is a download driver.
type Client struct {
	Name string
	Get  func(ctx context.Context, ns *NS, server netip.Addr, file string, mode Mode) ([]byte, error)
}

// Clients lists all download drivers.
var Clients = []Client{
	{"curl", CurlGet},
	{"goftp", GoFTPGet},
	{"python", PythonGet},
	{"lftp", LftpGet},
}

// Families lists the address families (4, 6).
var Families = []int{4, 6}

func family(a netip.Addr) int {
	if a.Is4() || a.Is4In6() {
		return 4
	}
	return 6
}

// v6OnlyV4Mode rejects PASV/PORT on IPv6: they cannot carry an IPv6 address.
func v6OnlyV4Mode(server netip.Addr, mode Mode) error {
	if family(server) == 6 && (mode == ModePASV || mode == ModePORT) {
		return fmt.Errorf("%w: %s over IPv6", errUnsupported, mode.Verb())
	}
	switch mode {
	case ModePASV, ModeEPSV, ModePORT, ModeEPRT:
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// checkVerbs verifies that the transcript's data-connection commands are
// exactly the one of mode (at least once, no other one).
func checkVerbs(mode Mode, sent []string) error {
	want := mode.Verb()
	seen := false
	for _, v := range sent {
		switch v {
		case want:
			seen = true
		case "PASV", "EPSV", "PORT", "EPRT", "LPRT", "LPSV":
			return fmt.Errorf("mode %s: client also sent %s (commands: %v)", mode, v, sent)
		}
	}
	if !seen {
		return fmt.Errorf("mode %s: client never sent %s (commands: %v)", mode, want, sent)
	}
	return nil
}

func ftpURL(server netip.Addr, path string) string {
	return "ftp://" + netip.AddrPortFrom(server, 21).String() + "/" + path
}

func tail(b []byte, n int) string {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// ---------------------------------------------------------------- matrix

// Case is one client x mode x family combination.
type Case struct {
	Client Client
	Mode   Mode
	Family int
}

func (c Case) String() string { return fmt.Sprintf("%s/%s/ipv%d", c.Client.Name, c.Mode, c.Family) }

// AllCases is the full matrix (including combinations a client cannot drive;
// those return an IsUnsupported error and are skipped).
func AllCases() []Case {
	var cs []Case
	for _, f := range Families {
		for _, m := range Modes {
			for _, c := range Clients {
				cs = append(cs, Case{c, m, f})
			}
		}
	}
	return cs
}

// Result is the outcome of one Case.
type Result struct {
	Data    []byte
	Err     error
	Elapsed time.Duration
}

// RunMatrix runs get for every case concurrently (at most parallel at once,
// independent of -test.parallel: the cases mostly wait on the network), then
// reports each in its own subtest via check. Unsupported combinations skip.
func RunMatrix(t *testing.T, cases []Case, parallel int, get func(ctx context.Context, c Case) ([]byte, error), check func(t *testing.T, c Case, r Result)) {
	t.Helper()
	results := make([]Result, len(cases))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, c := range cases {
		if !runSelects(t.Name() + "/" + c.String()) {
			continue // filtered out by -run: don't do the work
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), clientMaxTime+10*time.Second)
			defer cancel()
			start := time.Now()
			defer func() {
				// A panic here would kill the binary before any t.Cleanup.
				if p := recover(); p != nil {
					results[i] = Result{nil, fmt.Errorf("panic: %v", p), time.Since(start)}
				}
			}()
			data, err := get(ctx, c)
			results[i] = Result{data, err, time.Since(start)}
		}()
	}
	wg.Wait()
	for i, c := range cases {
		t.Run(c.String(), func(t *testing.T) {
			r := results[i]
			if IsUnsupported(r.Err) {
				t.Skip(r.Err)
			}
			check(t, c, r)
		})
	}
}

// runSelects reports whether -test.run could select the (sub)test called
// fullName, following the testing package's rules: the pattern is split at
// '/' outside brackets and parentheses, and element i must match (unanchored)
// name level i. When unsure it says yes.
func runSelects(fullName string) bool {
	f := flag.Lookup("test.run")
	if f == nil || f.Value.String() == "" {
		return true
	}
	elems := splitRunPattern(f.Value.String())
	names := strings.Split(fullName, "/")
	for i, e := range elems {
		if i >= len(names) {
			break
		}
		re, err := regexp.Compile(e)
		if err != nil {
			return true
		}
		if !re.MatchString(names[i]) {
			return false
		}
	}
	return true
}

func splitRunPattern(p string) []string {
	var elems []string
	depthParen, depthBracket, start := 0, 0, 0
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '[':
			depthBracket++
		case ']':
			if depthBracket > 0 {
				depthBracket--
			}
		case '(':
			if depthBracket == 0 {
				depthParen++
			}
		case ')':
			if depthBracket == 0 && depthParen > 0 {
				depthParen--
			}
		case '\\':
			i++
		case '/':
			if depthParen == 0 && depthBracket == 0 {
				elems = append(elems, p[start:i])
				start = i + 1
			}
		}
	}
	return append(elems, p[start:])
}

// ---------------------------------------------------------------- curl

func curlModeArgs(server netip.Addr, mode Mode) ([]string, error) {
	if err := v6OnlyV4Mode(server, mode); err != nil {
		return nil, err
	}
	switch mode {
	case ModePASV:
		return []string{"--ftp-pasv", "--disable-epsv"}, nil
	case ModeEPSV:
		return []string{"--ftp-pasv"}, nil
	case ModePORT:
		// "-": the address of the control connection's local end (the client's).
		return []string{"--ftp-port", "-", "--disable-eprt"}, nil
	default: // EPRT
		return []string{"--ftp-port", "-"}, nil
	}
}

// curlVerbs extracts the commands curl sent from its -v output ("> EPSV").
func curlVerbs(stderr []byte) []string {
	var verbs []string
	sc := bufio.NewScanner(bytes.NewReader(stderr))
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "> "); ok {
			if f := strings.Fields(line); len(f) > 0 {
				verbs = append(verbs, strings.ToUpper(f[0]))
			}
		}
	}
	return verbs
}

func runCurl(ctx context.Context, ns *NS, server netip.Addr, mode Mode, stdin []byte, args ...string) ([]byte, error) {
	modeArgs, err := curlModeArgs(server, mode)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, clientMaxTime+3*time.Second)
	defer cancel()
	full := append([]string{"-q", // first: ignore ~/.curlrc
		"-sS", "-v",
		"--connect-timeout", strconv.Itoa(int(clientNetTimeout / time.Second)),
		"--max-time", strconv.Itoa(int(clientMaxTime / time.Second)),
		"--user", "anonymous:e2e@",
	}, modeArgs...)
	full = append(full, args...)
	cmd := ns.Cmd(ctx, "curl", full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		// curl's own error line ("curl: (28) ...") first, then the verbose tail.
		var msg []string
		for _, line := range strings.Split(stderr.String(), "\n") {
			if strings.HasPrefix(line, "curl: (") {
				msg = append(msg, line)
			}
		}
		err = fmt.Errorf("curl %s %s: %v: %s | verbose: %s", mode, server, err, strings.Join(msg, "; "), tail(stderr.Bytes(), 600))
		// curl's --max-time (clientMaxTime) says "Operation timed out
		// after"; its connect and accept timeouts say otherwise.
		if strings.Contains(strings.Join(msg, "\n"), "Operation timed out after") {
			return nil, fmt.Errorf("%w: %w", errClientBound, err)
		}
		return nil, boundErr(ctx, err)
	}
	if err := checkVerbs(mode, curlVerbs(stderr.Bytes())); err != nil {
		return nil, fmt.Errorf("curl: %w", err)
	}
	return stdout.Bytes(), nil
}

// CurlGet downloads file with curl.
func CurlGet(ctx context.Context, ns *NS, server netip.Addr, file string, mode Mode) ([]byte, error) {
	return runCurl(ctx, ns, server, mode, nil, ftpURL(server, file))
}

// CurlPut uploads data to upload/<name> with curl.
func CurlPut(ctx context.Context, ns *NS, server netip.Addr, name string, data []byte, mode Mode) error {
	_, err := runCurl(ctx, ns, server, mode, data, "-T", "-", ftpURL(server, UploadSub+"/"+name))
	return err
}

// ---------------------------------------------------------------- jlaffaye/ftp

// verbRecorder collects the commands written to the control connection by
// jlaffaye/ftp's debug output (which interleaves both directions; commands are
// the lines not starting with a reply code).
type verbRecorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *verbRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *verbRecorder) verbs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var verbs []string
	for _, line := range strings.Split(r.buf.String(), "\n") {
		// Replies start with a digit; continuation lines of multi-line
		// replies (FEAT's " EPSV") with a space.
		if line == "" || line[0] == ' ' || line[0] == '\t' || (line[0] >= '0' && line[0] <= '9') {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		verbs = append(verbs, strings.ToUpper(f[0]))
	}
	return verbs
}

// GoFTPGet downloads file with github.com/jlaffaye/ftp, dialing from inside ns.
func GoFTPGet(ctx context.Context, ns *NS, server netip.Addr, file string, mode Mode) (data []byte, err error) {
	if mode.Active() {
		return nil, fmt.Errorf("%w: jlaffaye/ftp has no active mode", errUnsupported)
	}
	if err := v6OnlyV4Mode(server, mode); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, clientMaxTime)
	defer cancel()
	defer func() { err = boundErr(ctx, err) }()
	deadline, _ := ctx.Deadline()
	var (
		connMu sync.Mutex
		conns  []net.Conn
	)
	defer func() {
		connMu.Lock()
		defer connMu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	dial := func(network, address string) (net.Conn, error) {
		dctx, dcancel := context.WithTimeout(ctx, clientNetTimeout)
		defer dcancel()
		c, err := ns.DialContext(dctx, network, address)
		if err != nil {
			return nil, err
		}
		c = &idleConn{Conn: c, ctx: ctx, idle: clientNetTimeout, max: deadline}
		connMu.Lock()
		conns = append(conns, c)
		connMu.Unlock()
		return c, nil
	}
	rec := &verbRecorder{}
	opts := []ftp.DialOption{
		ftp.DialWithDialFunc(dial),
		ftp.DialWithContext(ctx),
		ftp.DialWithDebugOutput(rec),
		ftp.DialWithDisabledEPSV(mode == ModePASV),
		ftp.DialWithShutTimeout(time.Second),
	}
	// Abort blocking I/O when the context ends (deadlines are set too).
	stop := context.AfterFunc(ctx, func() {
		connMu.Lock()
		defer connMu.Unlock()
		for _, c := range conns {
			_ = c.SetDeadline(time.Now())
		}
	})
	defer stop()

	c, err := ftp.Dial(netip.AddrPortFrom(server, 21).String(), opts...)
	if err != nil {
		return nil, fmt.Errorf("goftp %s %s: dial: %w", mode, server, err)
	}
	defer func() { _ = c.Quit() }()
	if err := c.Login("anonymous", "e2e@"); err != nil {
		return nil, fmt.Errorf("goftp %s %s: login: %w", mode, server, err)
	}
	r, err := c.Retr(file)
	if err != nil {
		return nil, fmt.Errorf("goftp %s %s: RETR %s: %w (commands: %v)", mode, server, file, err, rec.verbs())
	}
	data, err = io.ReadAll(r)
	if cerr := r.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("goftp %s %s: read %s: %w", mode, server, file, err)
	}
	if err := checkVerbs(mode, rec.verbs()); err != nil {
		return nil, fmt.Errorf("goftp: %w", err)
	}
	return data, nil
}

// idleConn gives every Read and Write its own deadline (idle timeout), capped
// by an overall deadline.
type idleConn struct {
	net.Conn
	ctx  context.Context
	idle time.Duration
	max  time.Time
}

func (c *idleConn) deadline() time.Time {
	d := time.Now().Add(c.idle)
	if !c.max.IsZero() && c.max.Before(d) {
		return c.max
	}
	return d
}

func (c *idleConn) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	_ = c.Conn.SetReadDeadline(c.deadline())
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	_ = c.Conn.SetWriteDeadline(c.deadline())
	return c.Conn.Write(p)
}

// GoFTPLogin logs in from ns and asks for the size of file: a control-channel
// only check (no data connection).
func GoFTPLogin(ctx context.Context, ns *NS, server netip.Addr, file string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, clientMaxTime)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var ctrl net.Conn
	dial := func(network, address string) (net.Conn, error) {
		dctx, dcancel := context.WithTimeout(ctx, clientNetTimeout)
		defer dcancel()
		c, err := ns.DialContext(dctx, network, address)
		if err != nil {
			return nil, err
		}
		ctrl = &idleConn{Conn: c, ctx: ctx, idle: clientNetTimeout, max: deadline}
		return ctrl, nil
	}
	c, err := ftp.Dial(netip.AddrPortFrom(server, 21).String(), ftp.DialWithDialFunc(dial), ftp.DialWithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("control %s: dial: %w", server, err)
	}
	defer ctrl.Close()
	defer func() { _ = c.Quit() }()
	if err := c.Login("anonymous", "e2e@"); err != nil {
		return 0, fmt.Errorf("control %s: login: %w", server, err)
	}
	return c.FileSize(file)
}

// ---------------------------------------------------------------- python ftplib

var (
	pythonScript = mustAbs("testdata/ftpget.py")
	pythonBin    = firstExisting("/usr/bin/python3", "python3")
)

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}

func firstExisting(cands ...string) string {
	for _, c := range cands {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	return cands[len(cands)-1]
}

// PythonGet downloads file with python3's ftplib (testdata/ftpget.py). The
// script itself verifies that it used the intended command.
func PythonGet(ctx context.Context, ns *NS, server netip.Addr, file string, mode Mode) ([]byte, error) {
	return runPython(ctx, ns, server, mode, nil, "--get", file)
}

// PythonGetAbort is PythonGet followed by ftplib's abort() (ABOR sent as
// urgent data) and a NOOP that must still get its own reply.
func PythonGetAbort(ctx context.Context, ns *NS, server netip.Addr, file string, mode Mode) ([]byte, error) {
	return runPython(ctx, ns, server, mode, nil, "--get", file, "--abort")
}

// PythonPut uploads data to upload/<name> with python3's ftplib.
func PythonPut(ctx context.Context, ns *NS, server netip.Addr, name string, data []byte, mode Mode) error {
	_, err := runPython(ctx, ns, server, mode, data, "--put", UploadSub+"/"+name)
	return err
}

func runPython(ctx context.Context, ns *NS, server netip.Addr, mode Mode, stdin []byte, args ...string) ([]byte, error) {
	if err := v6OnlyV4Mode(server, mode); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, clientMaxTime+3*time.Second)
	defer cancel()
	full := append([]string{pythonScript,
		"--host", server.String(),
		"--mode", string(mode),
		"--timeout", strconv.Itoa(int(clientNetTimeout / time.Second)),
	}, args...)
	cmd := ns.Cmd(ctx, pythonBin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return nil, boundErr(ctx, fmt.Errorf("python %s %s: %v: %s", mode, server, err, tail(stderr.Bytes(), 600)))
	}
	return stdout.Bytes(), nil
}

// ---------------------------------------------------------------- lftp

// LftpGet downloads file with lftp. lftp chooses the active command itself:
// PORT on IPv4, EPRT on IPv6; so IPv4 "eprt" is unsupported.
func LftpGet(ctx context.Context, ns *NS, server netip.Addr, file string, mode Mode) ([]byte, error) {
	if err := v6OnlyV4Mode(server, mode); err != nil {
		return nil, err
	}
	if mode == ModeEPRT && family(server) == 4 {
		return nil, fmt.Errorf("%w: lftp uses PORT on IPv4", errUnsupported)
	}
	dir, err := os.MkdirTemp("", "ftpgate-lftp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out, dbg := filepath.Join(dir, "out"), filepath.Join(dir, "debug.log")
	passive, epsv := "on", "no"
	switch mode {
	case ModeEPSV:
		epsv = "yes"
	case ModePORT, ModeEPRT:
		passive = "off"
	}
	// lftp reconnects once after a timeout even with net:max-retries 1, so a
	// blocked data connection costs it two timeouts: use 4 s to stay near 8 s.
	to := "4"
	script := strings.Join([]string{
		"set cmd:fail-exit yes",
		"set net:max-retries 1", // 1 = no retry
		"set net:persist-retries 0",
		"set net:reconnect-interval-base 1",
		"set net:timeout " + to,
		"set ftp:ssl-allow no",
		"set ftp:auto-passive-mode no", // never switch modes behind our back
		"set ftp:passive-mode " + passive,
		"set ftp:prefer-epsv " + epsv,
		"set ftp:use-feat yes",
		"set xfer:clobber yes",
		"debug -o " + dbg + " 5",
		"open -u anonymous,e2e@ " + ftpURL(server, ""),
		"get " + file + " -o " + out,
	}, "; ")
	ctx, cancel := context.WithTimeout(ctx, clientMaxTime+3*time.Second)
	defer cancel()
	cmd := ns.Cmd(ctx, "lftp", "-c", script)
	var outb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outb, &outb
	cmd.Stdin = nil
	runErr := cmd.Run()
	dbgText, _ := os.ReadFile(dbg)
	if os.Getenv("E2E_LFTP_DEBUG") != "" {
		fmt.Fprintf(os.Stderr, "lftp debug %s %s:\n%s\n", mode, server, dbgText)
	}
	if runErr != nil {
		return nil, boundErr(ctx, fmt.Errorf("lftp %s %s: %v: %s | debug: %s", mode, server, runErr, tail(outb.Bytes(), 300), tail(dbgText, 600)))
	}
	if err := checkVerbs(mode, lftpVerbs(dbgText)); err != nil {
		return nil, fmt.Errorf("lftp: %w", err)
	}
	return os.ReadFile(out)
}

// lftpVerbs extracts the commands lftp sent from its debug log ("---> EPSV").
func lftpVerbs(dbg []byte) []string {
	var verbs []string
	for _, line := range strings.Split(string(dbg), "\n") {
		if i := strings.Index(line, "---> "); i >= 0 {
			if f := strings.Fields(line[i+5:]); len(f) > 0 {
				verbs = append(verbs, strings.ToUpper(f[0]))
			}
		}
	}
	return verbs
}
