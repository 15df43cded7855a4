package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Direction says which side of an FTP session opens a data connection.
type Direction uint8

const (
	// Passive: the client connects to the server (PASV/EPSV, 227/229).
	Passive Direction = iota
	// Active: the server connects to the client (PORT/EPRT).
	Active
)

func (d Direction) String() string {
	if d == Active {
		return "active"
	}
	return "passive"
}

// ErrInterceptedPort is wrapped by a Gate's Open for a data connection to a
// port the gateway intercepts as FTP control connections: such connections
// go to ftpgate's listener, never through a pinhole. A refusal by
// configuration, not a firewall failure.
var ErrInterceptedPort = errors.New("the data port is an intercepted FTP control port")

// Flow is one negotiated data connection: Src will open a TCP connection to Dst.
type Flow struct {
	Src netip.Addr
	Dst netip.AddrPort
	Dir Direction
	// Target, when valid, is where the connection is DNAT'ed to (reverse mode and
	// masqueraded clients); SNAT, when valid, is the source address it is rewritten to.
	Target netip.AddrPort
	SNAT   netip.Addr
}

// IPv6 reports whether the flow is an IPv6 flow.
func (f Flow) IPv6() bool { return f.Dst.Addr().Is6() && !f.Dst.Addr().Is4In6() }

func (f Flow) String() string {
	s := fmt.Sprintf("%s %s -> %s", f.Dir, f.Src, f.Dst)
	if f.Target.IsValid() {
		s += " dnat " + f.Target.String()
	}
	if f.SNAT.IsValid() {
		s += " snat " + f.SNAT.String()
	}
	return s
}

// Gate is the firewall seen from the protocol side: it allows negotiated data
// connections. The nft package implements it; tests use an in-memory fake.
type Gate interface {
	// Open allows one data connection matching f until it is used or ttl passes.
	// It returns only after the kernel acknowledged the rule, so the caller may
	// then tell the peer the address without racing the firewall.
	Open(ctx context.Context, f Flow, ttl time.Duration) (Pinhole, error)
}

// Pinhole is one opening made by a Gate.
type Pinhole interface {
	// Close revokes the opening if it has been neither used nor expired.
	// It is safe to call more than once and after the opening was used.
	Close() error
	// Done is closed when the opening ends: used, expired or closed. Ports
	// allocated for it can then be reused.
	Done() <-chan struct{}
}
