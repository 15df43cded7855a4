package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mode says where sessions go and what is rewritten.
type Mode int

const (
	// Transparent: intercepted connections go to their original destination,
	// dialled from the client's own address; nothing is rewritten.
	Transparent Mode = iota
	// Reverse: ftpgate listens on a public address and dials a fixed upstream
	// server; data ports are remapped into PassivePorts and NAT'ed.
	Reverse
)

func (m Mode) String() string {
	if m == Reverse {
		return "reverse"
	}
	return "transparent"
}

// Config holds a Server's settings. Zero values mean the defaults.
type Config struct {
	Mode     Mode
	Upstream string // reverse: the server, host:port (a name resolves per session)
	// PublicAddresses (at most one per IP version) are the addresses clients
	// reach: advertised in rewritten replies (reverse; default: the address
	// the client connected to) and, in transparent mode, the address clients
	// appear with behind the gateway's NAT (default: learned from conntrack
	// through SourceNAT).
	PublicAddresses []netip.Addr
	// PassivePorts is the range ports are allocated from for NAT'ed data
	// connections (reverse mode, masqueraded clients). Default 50000-50999.
	PassivePorts PortRange
	// ServerPassivePorts, when set, is the only range a server may announce
	// in 227/229.
	ServerPassivePorts PortRange
	// SourceNAT reports the address the server sees for a connection from
	// local to remote (it differs from local when the gateway masquerades).
	// Nil: clients are taken as not NAT'ed.
	SourceNAT   func(local, remote netip.AddrPort) (netip.Addr, error)
	PinholeTTL  time.Duration // how long an unused opening lives; default 30s
	DialTimeout time.Duration // upstream connect timeout, and how long the server may take to start its greeting; default 10s
	// GreetingRedial is how long to wait for the server's greeting before a
	// second connection races the first (see dialGreeted); default a
	// quarter of DialTimeout.
	GreetingRedial time.Duration
	MaxLine        int // line cap in bytes; default MaxLine
	MaxPending     int // unused openings kept per session; older ones are revoked; default 8
	// MaxPortsPerClient caps the PassivePorts held at once for one client
	// address (NAT'ed openings not yet used or expired); default 64.
	MaxPortsPerClient int
	// Limits.
	MaxSessions          int           // open sessions in all; default 1024
	MaxSessionsPerClient int           // open sessions per client address; default 32
	IdleTimeout          time.Duration // a client must complete a line within it while nothing is pending; default 5m
	// Policy.
	DenyCommands  []string  // verbs answered with 550 and never forwarded
	AnonymousOnly bool      // refuse USER other than anonymous/ftp
	TLS           TLSPolicy // AUTH TLS/SSL: refused (default) or relayed blind
	Logger        *slog.Logger
	Observer      Observer

	deny map[string]bool // DenyCommands as a set
}

// TLSPolicy says what happens to AUTH TLS: encrypted control traffic cannot be
// inspected, so it either is refused (clients fall back to plain FTP) or
// passes blind, without pinholes.
type TLSPolicy int

const (
	TLSRefuse TLSPolicy = iota
	TLSPassthrough
)

// publicAddress returns the configured public address of like's IP version.
func (c *Config) publicAddress(like netip.Addr) (netip.Addr, bool) {
	for _, a := range c.PublicAddresses {
		if a.Is4() == like.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// ParseTLSPolicy reads "refuse" or "passthrough".
func ParseTLSPolicy(s string) (TLSPolicy, error) {
	switch s {
	case "refuse", "":
		return TLSRefuse, nil
	case "passthrough":
		return TLSPassthrough, nil
	}
	return 0, fmt.Errorf("TLS policy %q: want refuse or passthrough", s)
}

func (c *Config) setDefaults() {
	if c.PinholeTTL <= 0 {
		c.PinholeTTL = 30 * time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.GreetingRedial <= 0 {
		c.GreetingRedial = c.DialTimeout / 4
	}
	if c.MaxLine <= 0 {
		c.MaxLine = MaxLine
	}
	if c.PassivePorts.IsZero() {
		c.PassivePorts = PortRange{50000, 50999}
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 8
	}
	if c.MaxPortsPerClient <= 0 {
		c.MaxPortsPerClient = 64
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 1024
	}
	if c.MaxSessionsPerClient <= 0 {
		c.MaxSessionsPerClient = 32
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	c.deny = map[string]bool{}
	for _, v := range c.DenyCommands {
		c.deny[strings.ToUpper(strings.TrimSpace(v))] = true
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
}

// Server runs one session per accepted control connection.
type Server struct {
	cfg  atomic.Pointer[Config] // replaced whole by Reload; sessions keep the one they started with
	gate Gate
	pool *portPool
	// dial connects a session upstream; per Mode, replaceable in tests.
	dial func(s *session) (net.Conn, error)

	mu       sync.Mutex
	sessions map[*session]struct{}
	byClient map[netip.Addr]int
	closed   bool
	nextID   uint64
	wg       sync.WaitGroup
}

// NewServer returns a Server that asks gate for data connections.
func NewServer(cfg Config, gate Gate) *Server {
	cfg.setDefaults()
	s := &Server{gate: gate, dial: dialTransparent, sessions: map[*session]struct{}{}, byClient: map[netip.Addr]int{}}
	s.cfg.Store(&cfg)
	s.pool = newPortPool(cfg.PassivePorts, cfg.MaxPortsPerClient)
	if cfg.Mode == Reverse {
		s.dial = dialReverse
	}
	return s
}

func (s *Server) config() *Config { return s.cfg.Load() }

// Config returns a copy of the settings new sessions get.
func (s *Server) Config() Config { return *s.config() }

// Reload replaces the settings for sessions that start from now on. What
// listeners, the mode and the port pool depend on needs a restart.
func (s *Server) Reload(cfg Config) error {
	old := s.config()
	if cfg.Mode != old.Mode || cfg.Upstream != old.Upstream {
		return errors.New("changing --mode or --upstream needs a restart")
	}
	cfg.setDefaults()
	if cfg.PassivePorts != old.PassivePorts {
		return errors.New("changing --passive-ports needs a restart")
	}
	// The port pool was sized with it: the running value stays (the daemon
	// names it among the settings that need a restart).
	cfg.MaxPortsPerClient = old.MaxPortsPerClient
	s.cfg.Store(&cfg)
	return nil
}

// Serve accepts control connections on ln until ln is closed.
func (s *Server) Serve(ln net.Listener) error {
	self := addrPortOf(ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors and the like: back off instead of spinning.
			s.config().Logger.Warn("accept failed", "listener", ln.Addr(), "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		sess := s.newSession(c, self)
		if sess == nil {
			continue
		}
		go func() {
			defer s.wg.Done()
			sess.run()
			s.mu.Lock()
			delete(s.sessions, sess)
			key := clientKey(sess.clientAddr)
			if s.byClient[key]--; s.byClient[key] <= 0 {
				delete(s.byClient, key)
			}
			s.mu.Unlock()
		}()
	}
}

// clientKey is what the per-client limits count by: the address, or for
// IPv6 its /64 — one subscriber's link gets a whole /64 and can pick a new
// address in it for every connection.
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.Addr()
	}
	return a
}

// newSession admits c within the limits, or turns it away with a 421.
func (s *Server) newSession(c net.Conn, self netip.AddrPort) *session {
	cfg := s.config()
	client := addrPortOf(c.RemoteAddr()).Addr()
	key := clientKey(client)
	s.mu.Lock()
	var reason Reason
	switch {
	case s.closed:
		reason = ReasonShutdown
	case len(s.sessions) >= cfg.MaxSessions:
		reason = ReasonMaxSessions
	case s.byClient[key] >= cfg.MaxSessionsPerClient:
		reason = ReasonMaxPerClient
	}
	if reason != "" {
		s.mu.Unlock()
		cfg.Observer.Refused(reason)
		msg, text := "refused: session limit", "421 ftpgate: too many sessions ("+string(reason)+"), try again later\r\n"
		if reason == ReasonShutdown {
			msg, text = "refused: shutting down", "421 ftpgate: shutting down, try again in a moment\r\n"
		}
		cfg.Logger.Warn(msg, "reason", string(reason), "client", client.String())
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write([]byte(text))
		c.Close()
		return nil
	}
	s.nextID++
	sess := newSession(s, cfg, s.nextID, c, self)
	s.sessions[sess] = struct{}{}
	s.byClient[key]++
	s.wg.Add(1)
	s.mu.Unlock()
	return sess
}

// Sessions reports the number of open sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Snapshot describes the running sessions, oldest first.
func (s *Server) Snapshot() []SessionInfo {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess)
	}
	s.mu.Unlock()
	infos := make([]SessionInfo, 0, len(list))
	for _, sess := range list {
		infos = append(infos, sess.info())
	}
	slices.SortFunc(infos, func(a, b SessionInfo) int { return cmp.Compare(a.ID, b.ID) })
	return infos
}

// Close ends every session and waits for them; listeners are the caller's.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	list := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess)
	}
	s.mu.Unlock()
	// Outside s.mu: accept and ending sessions need it meanwhile.
	for _, sess := range list {
		sess.abort()
	}
	s.wg.Wait()
}

// Shutdown turns new sessions away and lets open ones finish until ctx ends;
// then it closes them. Serve goes on accepting meanwhile, to tell each new
// client so with a 421: the caller closes the listeners after Shutdown.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.Close()
	}
}

// Listen opens a control-connection listener. In transparent mode it has
// IP_TRANSPARENT, which lets it accept connections addressed to other hosts.
func Listen(ctx context.Context, addr string, mode Mode) (net.Listener, error) {
	// No TCP keepalives: the idle timeout bounds sessions, and each
	// keepalive option costs syscalls per connection.
	lc := net.ListenConfig{KeepAlive: -1}
	if mode == Transparent {
		lc.Control = transparentControl
	}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		switch {
		case mode == Transparent && errors.Is(err, syscall.EPERM):
			return nil, fmt.Errorf("listen %s: %w — IP_TRANSPARENT needs root or CAP_NET_ADMIN", addr, err)
		case errors.Is(err, syscall.EACCES):
			return nil, fmt.Errorf("listen %s: %w — a port below 1024 needs root or CAP_NET_BIND_SERVICE", addr, err)
		case errors.Is(err, syscall.EADDRNOTAVAIL):
			return nil, fmt.Errorf("listen %s: %w — the address is not configured on this host", addr, err)
		}
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// dialReverse connects to the configured upstream, preferring an address of
// the client's family: the kernel cannot NAT a data connection across families.
func dialReverse(s *session) (net.Conn, error) {
	host, port, err := net.SplitHostPort(s.cfg.Upstream)
	if err != nil {
		return nil, fmt.Errorf("bad upstream %q: %v", s.cfg.Upstream, err)
	}
	addrs, err := net.DefaultResolver.LookupNetIP(s.ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return nil, &dialError{ReasonUpstream, "cannot resolve upstream", []any{"upstream", s.cfg.Upstream, "err", err},
			fmt.Sprintf("cannot resolve the FTP server %s", host)}
	}
	if !s.clientAddr.IsLoopback() {
		// The kernel does not DNAT connections from outside to 127.0.0.0/8
		// or ::1: data connections to such a server cannot work (--dry-run
		// refuses a loopback literal; a name can still resolve to one, as
		// Debian's 127.0.1.1 line for the host's own name does).
		addrs = slices.DeleteFunc(addrs, func(a netip.Addr) bool { return a.Unmap().IsLoopback() })
		if len(addrs) == 0 {
			return nil, &dialError{ReasonUpstream, "upstream resolves to loopback only: use an address of one of the gateway's interfaces (data connections from outside cannot be DNAT'ed to 127.0.0.0/8 or ::1)",
				[]any{"upstream", s.cfg.Upstream}, fmt.Sprintf("the FTP server %s is not reachable through ftpgate", host)}
		}
	}
	sameFamily := func(a netip.Addr) bool { return a.Unmap().Is4() == s.clientAddr.Is4() }
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
		switch {
		case sameFamily(a) && !sameFamily(b):
			return -1
		case sameFamily(b) && !sameFamily(a):
			return 1
		}
		return 0
	})
	d := net.Dialer{Timeout: s.cfg.DialTimeout, KeepAlive: -1}
	var lastErr error
	for _, a := range addrs {
		up, err := d.DialContext(s.ctx, "tcp", net.JoinHostPort(a.Unmap().String(), port))
		if err == nil {
			return up, nil
		}
		lastErr = err
	}
	return nil, &dialError{ReasonUpstream, "cannot reach server", []any{"upstream", s.cfg.Upstream, "err", lastErr},
		fmt.Sprintf("cannot reach the FTP server %s", s.cfg.Upstream)}
}

// dialFrom connects to dst from src's address (any port), as the client would.
func dialFrom(ctx context.Context, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{
		Timeout:   timeout,
		KeepAlive: -1,
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
		Control:   transparentControl,
	}
	return d.DialContext(ctx, "tcp", dst.String())
}

func transparentControl(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if network == "tcp6" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set IP_TRANSPARENT: %w", serr)
	}
	return nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
