package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
)

// ErrNoPorts means every port of a range is held by an opening.
var ErrNoPorts = errors.New("no free port in the range")

// ErrClientPorts means one client address holds its share of the range.
var ErrClientPorts = errors.New("the client holds its share of the range")

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ Lo, Hi uint16 }

// ParsePortRange reads "LO-HI" (or a single port).
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || l == 0 || l > h {
		return PortRange{}, fmt.Errorf("port range %q: want LO-HI with 1 <= LO <= HI <= 65535", s)
	}
	return PortRange{uint16(l), uint16(h)}, nil
}

// IsZero reports whether the range is unset.
func (r PortRange) IsZero() bool { return r.Lo == 0 && r.Hi == 0 }

// Contains reports whether p lies in the range.
func (r PortRange) Contains(p uint16) bool { return p >= r.Lo && p <= r.Hi }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Lo, r.Hi) }

// portPool hands out ports of a range per local address, round robin so that
// a port just released is the last to be reused. Each port is held for one
// client address, and a client address may hold at most perClient ports at
// once (0: no limit): the range is what every client shares, and a few
// client addresses opening without using must not take all of it.
type portPool struct {
	r         PortRange
	perClient int
	mu        sync.Mutex
	used      map[netip.AddrPort]netip.Addr // port → the client (clientKey) it is held for
	held      map[netip.Addr]int            // ports held per clientKey
	next      map[netip.Addr]uint16
}

func newPortPool(r PortRange, perClient int) *portPool {
	return &portPool{r: r, perClient: perClient, used: map[netip.AddrPort]netip.Addr{},
		held: map[netip.Addr]int{}, next: map[netip.Addr]uint16{}}
}

// get takes a free port on local address a for client (counted by its
// clientKey).
func (p *portPool) get(a, client netip.Addr) (uint16, error) {
	client = clientKey(client)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.perClient > 0 && p.held[client] >= p.perClient {
		return 0, fmt.Errorf("%w: %s holds %d ports", ErrClientPorts, client, p.held[client])
	}
	n := int(p.r.Hi) - int(p.r.Lo) + 1
	start := p.next[a]
	if !p.r.Contains(start) {
		start = p.r.Lo
	}
	for i := 0; i < n; i++ {
		port := uint16(int(p.r.Lo) + (int(start-p.r.Lo)+i)%n)
		ap := netip.AddrPortFrom(a, port)
		if _, taken := p.used[ap]; !taken {
			p.used[ap] = client
			p.held[client]++
			p.next[a] = port + 1
			return port, nil
		}
	}
	return 0, fmt.Errorf("%w %s on %s", ErrNoPorts, p.r, a)
}

func (p *portPool) put(a netip.Addr, port uint16) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ap := netip.AddrPortFrom(a, port)
	client, taken := p.used[ap]
	if !taken {
		return
	}
	delete(p.used, ap)
	if p.held[client]--; p.held[client] <= 0 {
		delete(p.held, client)
	}
}

func (p *portPool) inUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.used)
}
