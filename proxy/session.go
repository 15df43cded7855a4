package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// writeTimeout bounds one write to a peer that does not read (a variable
// for tests).
var writeTimeout = 30 * time.Second

// maxPipelined caps the commands awaiting their replies, forwarded or
// answered by ftpgate: without a cap a client could queue them faster than a
// stalled server lets them go. Real clients pipeline a few, but some send a
// NOOP every 30 s during a transfer that the server answers only at its end:
// 1024 lasts 8 hours of that (and holds ~100 KiB at most).
const maxPipelined = 1024

// pendingCmd is a command waiting for its reply. A command ftpgate answered
// itself carries that reply in local: it is written when it reaches the head
// of the queue, so that pipelined replies keep the order of their commands.
type pendingCmd struct {
	verb  string
	local string
	// PORT/EPRT: the opening for the server's connection, closed (and its
	// NAT port freed) if the server refuses the command.
	opening Pinhole
	// Transfer commands only: what and since when, and the size a 150 announced.
	arg   string
	start time.Time
	size  int64
}

// session is one client's control connection and its upstream twin.
type session struct {
	id     uint64
	srv    *Server
	cfg    *Config
	log    *slog.Logger
	client net.Conn
	self   netip.AddrPort // ftpgate's listener, to refuse loops
	start  time.Time
	ctx    context.Context
	cancel context.CancelFunc
	// stopping is set first thing by abort: write errors are then expected.
	stopping atomic.Bool

	clientAddr netip.Addr
	serverAddr netip.Addr
	upstream   net.Conn

	// Deadlines: clientRead and upstreamWrite belong to the command
	// goroutine, clientWrite to whoever holds mu.
	clientRead, clientWrite, upstreamWrite lazyDeadline
	// clientOut holds reply lines on their way to the client (relayLine),
	// written together; mu.
	clientOut []byte
	// publicAddr is where NAT'ed data connections are advertised to the
	// client (reverse) or the server (masqueraded client); invalid when
	// nothing is NAT'ed. insideAddr is ftpgate's end of the upstream connection.
	publicAddr netip.Addr
	insideAddr netip.Addr
	learned    bool // publicAddr was decided (transparent: lazily, in the command goroutine)

	// What info reports, readable without mu: a reply goroutine holds mu
	// for the whole of a write to a client that may not read.
	connected  atomic.Bool // upstream and serverAddr are set
	user       atomic.Pointer[string]
	commands   atomic.Int64
	pendingLen atomic.Int32 // len(pending), stored under mu

	mu            sync.Mutex // guards everything below and writes to client
	pending       []pendingCmd
	epsvAll       bool
	told421       bool      // a 421 of the server's reached the client: ftpgate adds none
	pinholes      []Pinhole // openings of this session, oldest first (ended ones are dropped lazily)
	aborted       bool
	quit          bool   // the client said QUIT: the server closing is expected
	endReason     string // why the session ended, when not a plain QUIT
	tlsAccepted   bool   // the server accepted AUTH (passthrough): relay blind
	transfers     []Transfer
	moreTransfers int       // transfers beyond maxLoggedTransfers
	authDone      chan bool // TLS passthrough: the AUTH reply, true if accepted
}

func newSession(srv *Server, cfg *Config, id uint64, c net.Conn, self netip.AddrPort) *session {
	ctx, cancel := context.WithCancel(context.Background())
	oobErr := setOOBInline(c)
	c = withRawIO(c)
	s := &session{
		id: id, srv: srv, cfg: cfg, client: c, self: self, start: time.Now(),
		ctx: ctx, cancel: cancel,
		clientAddr: addrPortOf(c.RemoteAddr()).Addr(),
		// The greeting is the reply to connecting.
		pending: []pendingCmd{{verb: "connect"}},
	}
	s.pendingLen.Store(1)
	s.clientRead.set, s.clientWrite.set = c.SetReadDeadline, c.SetWriteDeadline
	s.log = cfg.Logger.With("session", id, "client", s.clientAddr.String())
	if oobErr != nil {
		s.log.Warn("cannot keep urgent data in the control stream: the client's ABOR may arrive garbled", "err", oobErr)
	}
	return s
}

// abort ends the session from outside (shutdown). The client goes first,
// before taking mu: a reply goroutine blocked writing to a client that does
// not read holds mu until the write fails.
func (s *session) abort() {
	s.stopping.Store(true)
	s.cancel()
	s.client.Close()
	s.mu.Lock()
	s.aborted = true
	up := s.upstream
	s.mu.Unlock()
	if up != nil {
		up.Close()
	}
}

func (s *session) run() {
	obs := s.cfg.Observer
	obs.SessionStarted()
	result := "ok"
	defer func() {
		s.cancel()
		s.client.Close()
		s.mu.Lock()
		if s.upstream != nil {
			s.upstream.Close()
		}
		// Openings nobody used die with their session.
		for _, p := range s.pinholes {
			p.Close()
		}
		s.pinholes = nil
		s.mu.Unlock()
		d := time.Since(s.start)
		obs.SessionEnded(d)
		s.mu.Lock()
		if s.endReason != "" {
			result = s.endReason
		} else if s.stopping.Load() {
			result = "shutdown"
		}
		// The server is in s.log once connected.
		args := []any{"user", s.userName(), "commands", s.commands.Load(),
			"duration", d.Round(time.Millisecond), "result", result, "transfers", s.transfers}
		if s.moreTransfers > 0 {
			args = append(args, "transfers_not_listed", s.moreTransfers)
		}
		s.mu.Unlock()
		s.log.Info("session end", args...)
	}()

	up, err := s.dialGreeted()
	if err != nil {
		s.mu.Lock()
		if s.ctx.Err() == nil { // else a shutdown: see the deferred result
			s.endReason = "upstream_error"
		}
		s.writeClientLocked("421 ftpgate: " + err.Error())
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	if s.aborted {
		s.mu.Unlock()
		up.Close()
		return
	}
	up = withRawIO(up)
	s.upstream = up
	s.upstreamWrite.set = up.SetWriteDeadline
	s.serverAddr = addrPortOf(up.RemoteAddr()).Addr()
	s.connected.Store(true)
	s.mu.Unlock()
	s.insideAddr = addrPortOf(up.LocalAddr()).Addr()
	s.log = s.log.With("server", s.serverAddr.String())
	if s.cfg.Mode == Reverse {
		s.learnPublicAddr()
		s.learned = true
	}
	s.log.Debug("session start")

	done := make(chan struct{})
	go func() {
		defer close(done)
		s.relayReplies()
		// The server is gone: nothing the command side waits for (an AUTH
		// reply, a firewall opening) will come.
		s.cancel()
		s.mu.Lock()
		if !s.quit && !s.aborted && !s.tlsAccepted && s.endReason == "" {
			s.endReason = "server_closed"
			if !s.told421 { // else the client has the server's own reason
				s.writeClientLocked("421 ftpgate: the FTP server closed the connection")
			}
		}
		s.mu.Unlock()
		s.client.Close() // the server is gone: so is the client's session
	}()
	s.relayCommands()
	s.mu.Lock()
	s.quit = true // the client side ended: the server closing is expected
	s.mu.Unlock()
	up.Close()
	<-done
}

// dialTransparent connects to the server the client meant, from the client's address.
func dialTransparent(s *session) (net.Conn, error) {
	// Transparent: the connection's local address is the server the client
	// meant; a connection to the listener itself would loop.
	dst := addrPortOf(s.client.LocalAddr())
	if dst == s.self || !dst.Addr().IsValid() {
		return nil, &dialError{ReasonLoop, "direct connection to the listener", []any{"dst", dst.String()},
			"this port only serves intercepted connections"}
	}
	up, err := dialFrom(s.ctx, s.clientAddr, dst, s.cfg.DialTimeout)
	if err != nil {
		return nil, &dialError{ReasonUpstream, "cannot reach server", []any{"dst", dst.String(), "err", err},
			fmt.Sprintf("cannot reach the FTP server %s", dst)}
	}
	return up, nil
}

// refused counts and logs one refusal.
func (s *session) refused(r Reason, msg string, args ...any) {
	s.cfg.Observer.Refused(r)
	s.log.Warn("refused: "+msg, append([]any{"reason", string(r)}, args...)...)
}

// reply queues ftpgate's own answer to a command it did not forward.
func (s *session) reply(text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 {
		s.writeClientLocked(text)
		return
	}
	s.pushLocked(pendingCmd{local: text})
}

// pushLocked queues p; mu is held.
func (s *session) pushLocked(p pendingCmd) {
	s.pending = append(s.pending, p)
	s.pendingLen.Store(int32(len(s.pending)))
}

// popLocked drops the head of pending; mu is held. Only the reply
// goroutine pops.
func (s *session) popLocked() {
	s.pending = s.pending[1:]
	s.pendingLen.Store(int32(len(s.pending)))
}

// writeClientLocked sends line to the client, after the reply lines held
// by relayLine (they came first). mu is held.
func (s *session) writeClientLocked(line string) {
	s.clientOut = appendWire(s.clientOut, line)
	s.flushClientLocked()
}

// relayLine passes on a line of a multi-line reply. Lines that arrived
// together go out in one write — a FEAT list or a banner is one segment to
// the client, not one system call, packet and wakeup per line. A line is
// held only while the next one is already read (r has it buffered), so
// nothing waits for the server. It reports whether it holds lines.
func (s *session) relayLine(r *LineReader, line string) (held bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clientOut = appendWire(s.clientOut, line)
	if !r.HasLine() || len(s.clientOut) >= maxClientOut {
		s.flushClientLocked()
	}
	return len(s.clientOut) > 0
}

// maxClientOut bounds the reply lines held for one write.
const maxClientOut = 16 << 10

// flushClientLocked writes what clientOut holds. mu is held.
func (s *session) flushClientLocked() {
	if len(s.clientOut) == 0 {
		return
	}
	// The deadline keeps a client that stops reading from pinning the session.
	s.clientWrite.extend(writeTimeout)
	_, err := s.client.Write(s.clientOut)
	if cap(s.clientOut) > keptClientOut {
		s.clientOut = nil // a long reply's buffer is not kept for an idle session
	} else {
		s.clientOut = s.clientOut[:0]
	}
	if err != nil {
		s.writeFailedLocked("client", err)
	}
}

// keptClientOut is the largest write buffer a session keeps between writes.
const keptClientOut = 512

// writeFailedLocked ends the session after a write to peer failed: the line
// may have gone out in part, and the next one must not be glued to it. A
// peer that stopped reading (the write timed out) is counted and logged; one
// that is gone ends the session quietly, as its read side would. mu is held.
func (s *session) writeFailedLocked(peer string, err error) {
	if s.endReason == "" && !s.quit && !s.aborted && !s.stopping.Load() {
		s.endReason = peer + "_write_failed"
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.refused(ReasonWriteFailed, "the "+peer+" stopped reading", "timeout", writeTimeout)
		} else {
			s.log.Debug("write failed", "peer", peer, "err", err)
		}
		if peer == "server" {
			s.writeClientLocked("421 ftpgate: cannot send to the FTP server, closing the control connection")
		}
	}
	s.client.Close()
	if s.upstream != nil {
		s.upstream.Close()
	}
}

// forward sends a command upstream and remembers that it awaits a reply.
func (s *session) forward(verb, line string) { s.send(pendingCmd{verb: verb}, line, false) }

// send is forward of p's command; with synch, the command goes after a
// Telnet Synch of ftpgate's own (an ABOR the client sent with one).
func (s *session) send(p pendingCmd, line string, synch bool) {
	if transferDirection(p.verb) != "" {
		_, p.arg = ParseCommand(line)
		p.start, p.size = time.Now(), -1
	}
	s.mu.Lock()
	s.pushLocked(p)
	s.mu.Unlock()
	s.upstreamWrite.extend(writeTimeout)
	out := wireLine(line)
	if synch {
		// RFC 959 4.1.3: Telnet IP and Synch (IAC as urgent data, then DM)
		// before ABOR, so that a server busy with a transfer reads it now
		// (vsftpd acts on SIGURG); the client's own Synch ended at ftpgate.
		// Only then: servers that do not parse Telnet would refuse it.
		if err := sendUrgent(s.upstream, []byte{telnetIAC, telnetIP, telnetIAC}); err != nil {
			s.mu.Lock()
			s.writeFailedLocked("server", err)
			s.mu.Unlock()
			return
		}
		out = append([]byte{telnetDM}, out...)
	}
	if _, err := s.upstream.Write(out); err != nil {
		s.mu.Lock()
		s.writeFailedLocked("server", err)
		s.mu.Unlock()
	}
}

func (s *session) relayCommands() {
	r := NewLineReader(s.client, s.cfg.MaxLine)
	for {
		// A client must complete each line within the idle timeout, unless it
		// waits for a reply (a long transfer keeps the control channel quiet).
		s.clientRead.extend(s.cfg.IdleTimeout)
		line, err := r.ReadLine()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if s.waiting() {
				continue
			}
			s.refused(ReasonIdle, "client idle", "timeout", s.cfg.IdleTimeout)
			s.mu.Lock()
			s.endReason = "idle_timeout"
			s.mu.Unlock()
			s.reply("421 ftpgate: idle timeout, closing the control connection")
			return
		}
		tooLong := errors.Is(err, ErrLineTooLong)
		if err != nil && !tooLong {
			return
		}
		if !s.admit() {
			return
		}
		if tooLong {
			s.refused(ReasonLineTooLong, "command line too long")
			s.reply("500 ftpgate: command line too long")
			continue
		}
		verb, arg := ParseCommand(line)
		s.cfg.Observer.Command(verb)
		s.log.Debug("command", "line", redactedLine(line))
		if HasControl(line) {
			s.refused(ReasonControlChars, "control character in command", "line", truncate(redact(line)))
			s.reply("500 ftpgate: control characters in command refused")
			continue
		}
		if _, _, isReply := ParseReplyLine(line); isReply {
			s.refused(ReasonWrongSide, "a reply from the client", "line", truncate(redact(line)))
			s.reply("500 ftpgate: replies are not commands")
			continue
		}
		if !ValidVerb(line) {
			s.refused(ReasonBadVerb, "malformed command verb", "line", truncate(redact(line)))
			s.reply("500 ftpgate: malformed command: a verb is 3-8 letters or digits, starting with a letter, then a space or the end of the line")
			continue
		}
		if s.cfg.deny[verb] {
			s.refused(ReasonDenied, verb+" denied by policy")
			s.reply("550 ftpgate: " + verb + " is not allowed through this gateway")
			continue
		}
		switch verb {
		case "USER":
			if s.cfg.AnonymousOnly && !isAnonymous(arg) {
				s.refused(ReasonNotAnonymous, "non-anonymous login", "user", arg)
				s.reply("530 ftpgate: only anonymous logins are allowed through this gateway")
				continue
			}
			s.user.Store(&arg)
			s.forward(verb, line)
		case "QUIT":
			s.mu.Lock()
			s.quit = true
			s.mu.Unlock()
			s.forward(verb, line)
		case "ABOR":
			s.send(pendingCmd{verb: verb}, line, r.Synch())
		case "PORT", "EPRT":
			s.activeCommand(verb, arg, line)
		case "PASV":
			if s.epsvAllInEffect() {
				s.refused(ReasonEPSVAll, "PASV after EPSV ALL")
				s.reply("501 ftpgate: EPSV ALL in effect, use EPSV")
				continue
			}
			s.forward(verb, line)
		case "EPSV":
			if strings.EqualFold(strings.TrimSpace(arg), "ALL") {
				// Its reply names no port: a 229 to it pairs with nothing.
				// It binds the session once the server accepts it.
				verb = "EPSV ALL"
			}
			s.forward(verb, line)
		case "LPRT", "LPSV":
			s.refused(ReasonUnsupported, verb+" is not supported")
			s.reply("502 ftpgate: " + verb + " not supported, use EPRT or EPSV")
		case "AUTH":
			if s.cfg.TLS == TLSPassthrough {
				if s.authPassthrough(verb, line, r) {
					return
				}
				continue
			}
			// Encrypted control traffic cannot be inspected; refusing lets the
			// client fall back to plain FTP.
			s.cfg.Observer.TLS("refused")
			s.refused(ReasonTLS, "AUTH refused", "arg", arg)
			s.reply("534 ftpgate: TLS on the control channel is not allowed through this gateway")
		default:
			s.forward(verb, line)
		}
	}
}

// admit counts a command line. It returns false, having ended the session,
// when too many commands await their replies: every line counts, an
// over-long one too (its 500 waits in pending like any reply).
func (s *session) admit() bool {
	// No lock per line: only this goroutine queues, so the count read here
	// can only be higher than the real one, never lower.
	if s.pendingLen.Load() >= maxPipelined {
		s.mu.Lock()
		s.endReason = "pipeline_overflow"
		s.writeClientLocked("421 ftpgate: too many commands awaiting replies, closing the control connection")
		s.mu.Unlock()
		s.refused(ReasonPipeline, "too many commands awaiting replies", "max", maxPipelined)
		return false
	}
	s.commands.Add(1)
	return true
}

// waiting reports whether a forwarded command still awaits its reply.
func (s *session) waiting() bool { return s.pendingLen.Load() > 0 }

func (s *session) userName() string {
	if u := s.user.Load(); u != nil {
		return *u
	}
	return ""
}

func isAnonymous(user string) bool {
	return strings.EqualFold(user, "anonymous") || strings.EqualFold(user, "ftp")
}

// authPassthrough forwards AUTH and, if the server accepts, relays the rest of
// the control connection blind (it is encrypted: no inspection, no pinholes).
// It reports whether the session became a blind relay.
func (s *session) authPassthrough(verb, line string, r *LineReader) bool {
	s.mu.Lock()
	s.authDone = make(chan bool, 1)
	s.mu.Unlock()
	s.forward(verb, line)
	accepted, answered := s.awaitAuthReply()
	if !answered {
		return true
	}
	if !accepted {
		return false
	}
	s.cfg.Observer.TLS("passthrough")
	s.mu.Lock()
	s.endReason = "tls_passthrough"
	s.mu.Unlock()
	s.log.Info("AUTH accepted by the server: relaying the encrypted control channel blind, no data connections will be opened")
	s.clientRead.clear()
	s.upstreamWrite.clear()
	io.Copy(s.upstream, r.Raw())
	return true
}

// awaitAuthReply waits for the server's answer to AUTH: true, true if it
// accepted. Nobody reads the client meanwhile, so a client that left goes
// unnoticed: a server that does not answer within the idle timeout ends the
// session (answered false, as when the session ends otherwise).
func (s *session) awaitAuthReply() (accepted, answered bool) {
	// mu is held; pending is empty only once AUTH's reply is in authDone.
	authAtHead := func() bool { return len(s.pending) == 0 || s.pending[0].verb == "AUTH" }
	// The server's time to answer AUTH begins when AUTH reaches the head of
	// pending: when the wait starts, or between two ticks of the timer. The
	// first tick that finds it there starts a full idle timeout; only the
	// next one ends the wait.
	s.mu.Lock()
	atHead := authAtHead()
	s.mu.Unlock()
	timer := time.NewTimer(s.cfg.IdleTimeout)
	defer timer.Stop()
	for {
		select {
		case accepted = <-s.authDone:
			return accepted, true
		case <-s.ctx.Done():
			return false, false
		case <-timer.C:
		}
		s.mu.Lock()
		select {
		case accepted = <-s.authDone: // just in time: finishReply sends under mu
			s.mu.Unlock()
			return accepted, true
		default:
		}
		if head := authAtHead(); !head || !atHead {
			// The server is still answering commands sent before AUTH, or
			// has answered them since the last tick: its time to answer
			// AUTH has not begun, or not run for a full idle timeout.
			atHead = head
			s.mu.Unlock()
			timer.Reset(s.cfg.IdleTimeout)
			continue
		}
		break
	}
	defer s.mu.Unlock()
	s.endReason = "auth_timeout"
	s.refused(ReasonTLS, "the FTP server did not answer AUTH", "timeout", s.cfg.IdleTimeout)
	s.writeClientLocked("421 ftpgate: the FTP server did not answer AUTH, closing the control connection")
	return false, false
}

func (s *session) epsvAllInEffect() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epsvAll
}

// activeCommand checks a PORT/EPRT, opens the server → client connection and
// only then forwards the command.
func (s *session) activeCommand(verb, arg, line string) {
	if s.epsvAllInEffect() {
		s.refused(ReasonEPSVAll, verb+" after EPSV ALL")
		s.reply("501 ftpgate: EPSV ALL in effect, use EPSV")
		return
	}
	var ap netip.AddrPort
	var err error
	if verb == "PORT" {
		ap, err = ParsePORT(arg)
	} else {
		ap, err = ParseEPRT(arg)
	}
	if err != nil {
		s.refused(parseReason(err), verb+" malformed", "arg", arg, "err", err)
		s.reply(fmt.Sprintf("501 ftpgate: %s refused: %v", verb, err))
		return
	}
	if ap.Addr() != s.clientAddr {
		s.refused(ReasonBounce, verb+" names another host", "addr", ap.Addr().String())
		s.reply(fmt.Sprintf("501 ftpgate: %s refused: address %s is not the client's", verb, ap.Addr()))
		return
	}
	if ap.Port() < 1024 {
		s.refused(ReasonLowPort, verb+" names a privileged port", "port", ap.Port())
		s.reply(fmt.Sprintf("501 ftpgate: %s refused: port %d is below 1024", verb, ap.Port()))
		return
	}
	if !s.learned {
		// Only active mode needs to know whether clients are NAT'ed: ask
		// conntrack once, at the first PORT/EPRT, not for every session.
		s.learned = true
		s.learnPublicAddr()
	}
	f := Flow{Src: s.serverAddr, Dst: ap, Dir: Active}
	if s.publicAddr.IsValid() {
		// The server must connect to a gateway port, DNAT'ed to the client:
		// reverse mode on ftpgate's inside address, with the client hidden
		// behind the public address; masqueraded clients on the address the
		// server sees them with.
		via := s.publicAddr
		if s.cfg.Mode == Reverse {
			via = s.insideAddr
			f.SNAT = s.publicAddr
		}
		if via.Is4() != ap.Addr().Is4() || (verb == "PORT" && !via.Is4()) {
			s.refused(ReasonCrossFamily, verb+" across IP versions", "addr", ap.Addr().String(), "via", via.String())
			s.reply("522 ftpgate: the data connection cannot cross IP versions; use EPRT/EPSV with the server's family")
			return
		}
		f.Target = ap
		port, refusal := s.allocPort(via)
		if refusal != "" {
			s.reply(refusal)
			return
		}
		f.Dst = netip.AddrPortFrom(via, port)
		if verb == "PORT" {
			line = "PORT " + FormatPORT(f.Dst)
		} else {
			line = "EPRT " + FormatEPRT(f.Dst)
		}
	}
	p := s.open(f)
	if p == nil {
		s.reply("425 ftpgate: cannot open the data connection in the firewall")
		return
	}
	if f.Target.IsValid() {
		s.cfg.Observer.Rewrite(verb) // counted once it goes to the server
	}
	s.send(pendingCmd{verb: verb, opening: p}, line, false)
}

// allocPort takes a gateway port on addr for a NAT'ed data connection. On
// exhaustion it counts the refusal and returns the reply for the client.
func (s *session) allocPort(addr netip.Addr) (port uint16, refusal string) {
	port, err := s.srv.pool.get(addr, s.clientAddr)
	if errors.Is(err, ErrClientPorts) {
		s.refused(ReasonClientPorts, "client holds its share of the data ports", "addr", addr.String(), "max", s.cfg.MaxPortsPerClient)
		return 0, "425 ftpgate: too many unused data connections for this client address; use or close them, then retry"
	}
	if err != nil {
		s.refused(ReasonNoPorts, "no free data port", "addr", addr.String(), "range", s.cfg.PassivePorts.String())
		return 0, "425 ftpgate: no free data port, try again later"
	}
	return port, ""
}

// learnPublicAddr decides whether data connections need NAT in this session.
func (s *session) learnPublicAddr() {
	if s.cfg.Mode == Reverse {
		local := addrPortOf(s.client.LocalAddr()).Addr()
		s.publicAddr = local
		if a, ok := s.cfg.publicAddress(local); ok {
			s.publicAddr = a
		}
		return
	}
	if a, ok := s.cfg.publicAddress(s.serverAddr); ok {
		s.publicAddr = a
		s.log.Debug("clients appear as the public address", "public", a.String())
		return
	}
	if s.cfg.SourceNAT == nil {
		return
	}
	seen, err := s.cfg.SourceNAT(addrPortOf(s.upstream.LocalAddr()), addrPortOf(s.upstream.RemoteAddr()))
	if err != nil {
		s.log.Warn("cannot learn whether the gateway masquerades this client; PORT/EPRT pass unchanged", "err", err)
		return
	}
	if seen != s.insideAddr {
		s.publicAddr = seen
		s.log.Debug("client is masqueraded", "public", seen.String())
	}
}

// open asks the gate for f and remembers the opening; nil on failure. A
// NAT'ed flow's gateway port (f.Dst) goes back to the pool when the opening ends.
func (s *session) open(f Flow) Pinhole {
	p := s.openPinhole(f)
	if f.Target.IsValid() && p == nil {
		s.srv.pool.put(f.Dst.Addr(), f.Dst.Port())
	}
	return p
}

func (s *session) openPinhole(f Flow) Pinhole {
	t0 := time.Now()
	p, err := s.srv.gate.Open(s.ctx, f, s.cfg.PinholeTTL)
	if err != nil && s.ctx.Err() != nil {
		// The session is ending (server gone, shutdown): not a firewall fault.
		s.log.Debug("opening abandoned: the session is ending", "flow", f, "err", err)
		return nil
	}
	if errors.Is(err, ErrInterceptedPort) {
		s.refused(ReasonInterceptPort, "the data port is an intercepted control port", "flow", f.String())
		return nil
	}
	if err != nil {
		s.refused(ReasonFirewall, "firewall could not open the data connection", "flow", f.String(), "err", err)
		return nil
	}
	s.cfg.Observer.PinholeOpened(f, time.Since(t0))
	s.log.Debug("pinhole opened", "flow", f)
	if f.Target.IsValid() {
		go func() {
			<-p.Done()
			s.srv.pool.put(f.Dst.Addr(), f.Dst.Port())
		}()
	}
	s.mu.Lock()
	// Only unused openings count against the cap: forget the ended ones.
	live := s.pinholes[:0]
	for _, q := range s.pinholes {
		select {
		case <-q.Done():
		default:
			live = append(live, q)
		}
	}
	clear(s.pinholes[len(live):])
	s.pinholes = append(live, p)
	var old Pinhole
	if len(s.pinholes) > s.cfg.MaxPending {
		s.refused(ReasonPendingCap, "unused data connection opening revoked for a newer one", "max", s.cfg.MaxPending)
		old = s.pinholes[0]
		s.pinholes = append(s.pinholes[:0], s.pinholes[1:]...)
	}
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return p
}

func parseReason(err error) Reason {
	switch {
	case errors.Is(err, ErrByteRange):
		return ReasonByteRange
	case errors.Is(err, ErrFamily):
		return ReasonFamily
	}
	return ReasonSyntax
}

// replyMode is what becomes of a reply, decided at its first line.
type replyMode int

const (
	relayed replyMode = iota // it answers the command at the head of pending
	dropped                  // it answers nothing: none of its lines reach the client
	closing                  // a 421 answering nothing: the server announces it closes
)

func (s *session) relayReplies() {
	r := NewLineReader(s.upstream, s.cfg.MaxLine)
	defer func() {
		s.mu.Lock()
		s.flushClientLocked() // what came before the end of the stream
		s.mu.Unlock()
		if s.tlsAccepted {
			s.mu.Lock()
			s.clientWrite.clear()
			s.mu.Unlock()
			io.Copy(s.client, r.Raw())
		}
	}()
	multi := 0 // the code of the multi-line reply in progress, 0 if none
	mode := relayed
	held := false // relayLine holds lines for the client
	for {
		if held && !r.HasLine() {
			// Whatever the last line read became (relayed, dropped as
			// over-long), nothing held may wait for the server.
			s.mu.Lock()
			s.flushClientLocked()
			s.mu.Unlock()
			held = false
		}
		line, err := r.ReadLine()
		tooLong := errors.Is(err, ErrLineTooLong)
		if err != nil && !tooLong {
			return
		}
		if tooLong {
			s.refused(ReasonLineTooLong, "server reply line too long")
		}
		code, more, ok := ParseReplyLine(line)
		if multi != 0 {
			// Inside a multi-line reply only "<code> " ends it; everything
			// else is text, never parsed for addresses (over-long text is dropped).
			if !ok || code != multi || more {
				if mode != dropped && !tooLong {
					held = s.relayLine(r, line)
				}
				continue
			}
			multi = 0
		} else {
			if !ok {
				if !tooLong { // an over-long one is counted already
					s.refuseServerLine(line)
				}
				continue
			}
			// Decided at the first line: the end of an unsolicited reply
			// must not pair with a command the client sends meanwhile.
			mode = s.replyMode(code, line)
		}
		if tooLong {
			code, line = overLongReply(code, more)
		}
		if more {
			multi = code
			if mode != dropped {
				held = s.relayLine(r, line)
			}
			continue
		}
		if s.endReply(mode, code, line) {
			return
		}
	}
}

// replyMode decides what becomes of the reply whose first line this is.
// Only this goroutine pops pending, so a reply found solicited stays so.
func (s *session) replyMode(code int, line string) replyMode {
	switch {
	case s.pendingLen.Load() > 0:
		return relayed
	case code == 421:
		// RFC 959 allows a 421 at any time: vsftpd's idle timeout sends one.
		return closing
	}
	// Nothing asked for it: passing it on would desynchronise the client.
	s.cfg.Observer.Reply(code)
	s.refused(ReasonUnsolicited, "reply without a pending command", "line", truncate(line))
	return dropped
}

// endReply handles the last line of a reply.
func (s *session) endReply(mode replyMode, code int, line string) bool {
	switch mode {
	case dropped:
		return false
	case closing:
		s.cfg.Observer.Reply(code)
		s.log.Debug("the FTP server announced that it closes", "line", truncate(line))
		s.mu.Lock()
		s.told421 = true
		s.writeClientLocked(line)
		s.mu.Unlock()
		return false
	}
	return s.finishReply(code, line)
}

// overLongReply stands in for a reply line above the cap, of which only
// the code survives. A 227/229 cannot be checked: it becomes a refusal.
func overLongReply(code int, more bool) (int, string) {
	switch {
	case more:
		return code, fmt.Sprintf("%d-ftpgate: an over-long line was dropped", code)
	case code == 227 || code == 229:
		return 451, "451 ftpgate: server reply line too long"
	}
	return code, fmt.Sprintf("%d ftpgate: an over-long line was dropped", code)
}

// refuseServerLine counts and drops a line from the server that is not a reply.
func (s *session) refuseServerLine(line string) {
	if ValidVerb(line) {
		s.refused(ReasonWrongSide, "a command from the server", "line", truncate(line))
		return
	}
	s.refused(ReasonSyntax, "server line is not a reply", "line", truncate(line))
}

// finishReply handles the last line of a reply: pairs it with the pending
// command, acts on 227/229 and passes it on. It returns true when the server
// accepted AUTH in passthrough mode: the channel is encrypted from then on.
func (s *session) finishReply(code int, line string) bool {
	s.cfg.Observer.Reply(code)
	s.mu.Lock()
	if len(s.pending) == 0 {
		// Nothing asked for it: passing it on would desynchronise the client.
		s.mu.Unlock()
		s.refused(ReasonUnsolicited, "reply without a pending command", "line", truncate(line))
		return false
	}
	if code >= 100 && code < 200 {
		if code == 150 && !s.pending[0].start.IsZero() {
			s.pending[0].size = sizeFrom150(line)
		}
		s.writeClientLocked(line) // preliminary: the command still awaits its final reply
		s.mu.Unlock()
		return false
	}
	head := s.pending[0]
	closeOpening := head.opening != nil && code >= 300
	if closeOpening || code == 227 || code == 229 {
		s.flushClientLocked() // the reply's earlier lines need not wait for the firewall
	}
	s.mu.Unlock()
	if closeOpening {
		// The server will not connect: the opening (and its port) is free.
		head.opening.Close()
		s.log.Debug("opening closed: the server refused the command", "verb", head.verb, "code", code)
	}

	// The head stays queued while the gate works, so that commands the client
	// pipelines meanwhile queue their local replies behind it.
	out := line
	switch code {
	case 227, 229:
		want := "PASV"
		if code == 229 {
			want = "EPSV"
		}
		if head.verb != want {
			s.refused(ReasonUnpaired, fmt.Sprintf("%d reply to %s", code, head.verb), "line", truncate(line))
			out = fmt.Sprintf("451 ftpgate: refused a %d reply to %s", code, head.verb)
		} else {
			out = s.passiveReply(code, line)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.popLocked()
	s.told421 = s.told421 || code == 421
	if code >= 200 && code < 300 && out == line { // what the client was told
		switch head.verb {
		case "EPSV ALL": // RFC 2428: from now on only EPSV
			s.epsvAll = true
		case "REIN": // RFC 959: a new session, as if just connected
			s.epsvAll = false
		}
	}
	if !head.start.IsZero() {
		s.transferDone(head, code)
	}
	s.writeClientLocked(out)
	if head.verb == "AUTH" && s.authDone != nil {
		s.tlsAccepted = code == 234
		s.authDone <- s.tlsAccepted
		if s.tlsAccepted {
			return true
		}
	}
	for len(s.pending) > 0 && s.pending[0].local != "" {
		s.writeClientLocked(s.pending[0].local)
		s.popLocked()
	}
	return false
}

// passiveReply checks a 227/229 answering PASV/EPSV, opens client → server and
// returns the line to pass on.
func (s *session) passiveReply(code int, line string) string {
	text := ""
	if len(line) > 4 {
		text = line[4:]
	}
	var ap netip.AddrPort
	var err error
	if code == 227 {
		ap, err = Parse227(text)
	} else {
		var port uint16
		port, err = Parse229(text)
		ap = netip.AddrPortFrom(s.serverAddr, port)
	}
	if err != nil {
		s.refused(parseReason(err), fmt.Sprintf("malformed %d reply", code), "line", truncate(line), "err", err)
		return fmt.Sprintf("425 ftpgate: refused a malformed %d reply from the server", code)
	}
	if rng := s.cfg.ServerPassivePorts; !rng.IsZero() && !rng.Contains(ap.Port()) {
		s.refused(ReasonServerPorts, "passive port outside the server's range", "port", ap.Port(), "range", rng.String())
		return fmt.Sprintf("425 ftpgate: refused passive port %d: outside the server's range", ap.Port())
	}
	if ap.Addr() != s.serverAddr {
		if s.cfg.Mode != Reverse {
			s.refused(ReasonServerAddress, "227 names another host than the server", "addr", ap.Addr().String())
			return fmt.Sprintf("425 ftpgate: refused passive address %s: not the server's", ap.Addr())
		}
		// Reverse: the data target is the control connection's peer, whatever
		// the server announces (a private, wrong or third-party address: a
		// server behind NAT with a stale pasv_address). Nothing is refused,
		// so nothing is counted as a refusal; the 227 is rewritten anyway.
		s.log.Debug("227 names another host than the server; using the server's", "addr", ap.Addr().String())
		ap = netip.AddrPortFrom(s.serverAddr, ap.Port())
	}
	if ap.Port() < 1024 {
		s.refused(ReasonLowPort, "passive reply names a privileged port", "port", ap.Port())
		return fmt.Sprintf("425 ftpgate: refused passive port %d: below 1024", ap.Port())
	}
	f := Flow{Src: s.clientAddr, Dst: ap, Dir: Passive}
	if s.cfg.Mode == Reverse {
		if code == 227 && !s.publicAddr.Is4() {
			s.refused(ReasonCrossFamily, "PASV cannot name an IPv6 address")
			return "425 ftpgate: PASV cannot carry an IPv6 address; use EPSV"
		}
		if s.publicAddr.Is4() != ap.Addr().Is4() {
			// The kernel cannot NAT a connection from one IP version to the other.
			s.refused(ReasonCrossFamily, "data connection across IP versions", "public", s.publicAddr.String(), "server", ap.Addr().String())
			return "425 ftpgate: the server is reachable only over the other IP version; data connections cannot cross it"
		}
		port, refusal := s.allocPort(s.publicAddr)
		if refusal != "" {
			return refusal
		}
		f.Dst, f.Target, f.SNAT = netip.AddrPortFrom(s.publicAddr, port), ap, s.insideAddr
		if code == 227 {
			line = "227 " + Format227(f.Dst)
		} else {
			line = "229 " + Format229(port)
		}
	}
	if s.open(f) == nil {
		return "425 ftpgate: cannot open the data connection in the firewall"
	}
	if f.Target.IsValid() {
		s.cfg.Observer.Rewrite(strconv.Itoa(code)) // counted once it reaches the client
	}
	return line
}

// wireLine encodes a decoded line for the wire: a literal 0xFF byte goes out
// as IAC IAC, so a Telnet-aware peer cannot read a command into it.
func wireLine(line string) []byte { return appendWire(nil, line) }

// appendWire appends line as it goes on the wire to b.
func appendWire(b []byte, line string) []byte {
	if strings.IndexByte(line, 0xFF) >= 0 {
		line = strings.ReplaceAll(line, "\xff", "\xff\xff")
	}
	b = append(b, line...)
	return append(b, '\r', '\n')
}

// redact hides the password of a PASS line from the log, however the line
// is malformed: leading blanks or control characters, any separator after
// the verb (a tab, none at all), any case — and a PASS after a control or
// non-ASCII byte inside the line (NOOP\rPASS x), where a server that splits
// lines differently could see a new command begin.
func redact(line string) string {
	start := true // a verb could begin here
	for i := 0; i+4 <= len(line); i++ {
		if start && strings.EqualFold(line[i:i+4], "PASS") {
			return line[:i] + "PASS ****"
		}
		b := line[i]
		start = b < ' ' || b >= 0x7f || (b == ' ' && start)
	}
	return line
}

// redactedLine is a line for the debug log, redacted only when the log
// writes it: not for every relayed line at the default level.
type redactedLine string

func (l redactedLine) LogValue() slog.Value { return slog.StringValue(redact(string(l))) }

// truncate keeps hostile lines from flooding the log.
func truncate(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

// SessionInfo describes a running session for 'ftpgate status'.
type SessionInfo struct {
	ID       uint64    `json:"id"`
	Client   string    `json:"client"`
	Server   string    `json:"server"`
	User     string    `json:"user"`
	Started  time.Time `json:"started"`
	Commands int       `json:"commands"`
	Pending  int       `json:"pending_replies"`
}

func (s *session) info() SessionInfo {
	i := SessionInfo{ID: s.id, Client: s.clientAddr.String(), User: s.userName(), Started: s.start,
		Commands: int(s.commands.Load()), Pending: int(s.pendingLen.Load())}
	if s.connected.Load() {
		i.Server = s.serverAddr.String()
	}
	return i
}
