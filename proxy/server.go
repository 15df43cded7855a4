package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
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
)

// Config holds a Server's settings. Zero values mean the defaults.
type Config struct {
	Mode        Mode
	PinholeTTL  time.Duration // how long an unused opening lives; default 30s
	DialTimeout time.Duration // upstream connect timeout; default 10s
	MaxLine     int           // line cap in bytes; default MaxLine
	MaxPending  int           // unused openings kept per session; older ones are revoked; default 8
	Logger      *slog.Logger
	Observer    Observer
}

func (c *Config) setDefaults() {
	if c.PinholeTTL <= 0 {
		c.PinholeTTL = 30 * time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.MaxLine <= 0 {
		c.MaxLine = MaxLine
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 8
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
	cfg  Config
	gate Gate
	// dial connects a session upstream; per Mode, replaceable in tests.
	dial func(s *session) (net.Conn, error)

	mu       sync.Mutex
	sessions map[*session]struct{}
	closed   bool
	nextID   uint64
	wg       sync.WaitGroup
}

// NewServer returns a Server that asks gate for data connections.
func NewServer(cfg Config, gate Gate) *Server {
	cfg.setDefaults()
	return &Server{cfg: cfg, gate: gate, dial: dialTransparent, sessions: map[*session]struct{}{}}
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
			s.cfg.Logger.Warn("accept failed", "listener", ln.Addr(), "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		sess := s.newSession(c, self)
		if sess == nil {
			c.Close()
			continue
		}
		go func() {
			defer s.wg.Done()
			sess.run()
			s.mu.Lock()
			delete(s.sessions, sess)
			s.mu.Unlock()
		}()
	}
}

func (s *Server) newSession(c net.Conn, self netip.AddrPort) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.nextID++
	sess := newSession(s, s.nextID, c, self)
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	return sess
}

// Sessions reports the number of open sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Close ends every session and waits for them; listeners are the caller's.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for sess := range s.sessions {
		sess.abort()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Listen opens a listener for tproxy'd connections: IP_TRANSPARENT lets it
// accept connections addressed to other hosts.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: transparentControl}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EPERM) {
			return nil, fmt.Errorf("listen %s: %w — IP_TRANSPARENT needs root or CAP_NET_ADMIN", addr, err)
		}
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// dialFrom connects to dst from src's address (any port), as the client would.
func dialFrom(ctx context.Context, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{
		Timeout:   timeout,
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
