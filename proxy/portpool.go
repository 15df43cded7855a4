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
// a port just released is the last to be reused.
type portPool struct {
	r    PortRange
	mu   sync.Mutex
	used map[netip.AddrPort]bool
	next map[netip.Addr]uint16
}

func newPortPool(r PortRange) *portPool {
	return &portPool{r: r, used: map[netip.AddrPort]bool{}, next: map[netip.Addr]uint16{}}
}

func (p *portPool) get(a netip.Addr) (uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := int(p.r.Hi) - int(p.r.Lo) + 1
	start := p.next[a]
	if !p.r.Contains(start) {
		start = p.r.Lo
	}
	for i := 0; i < n; i++ {
		port := uint16(int(p.r.Lo) + (int(start-p.r.Lo)+i)%n)
		ap := netip.AddrPortFrom(a, port)
		if !p.used[ap] {
			p.used[ap] = true
			p.next[a] = port + 1
			return port, nil
		}
	}
	return 0, fmt.Errorf("%w %s on %s", ErrNoPorts, p.r, a)
}

func (p *portPool) put(a netip.Addr, port uint16) {
	p.mu.Lock()
	delete(p.used, netip.AddrPortFrom(a, port))
	p.mu.Unlock()
}

func (p *portPool) inUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.used)
}
