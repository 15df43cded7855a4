package nft

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// SourceAddress reports the address the peer sees for the TCP connection
// local→remote, from conntrack's reply tuple (it differs from local.Addr()
// when the gateway masquerades/SNATs that connection). Errors if no entry.
//
// local→remote is the connection's original direction, as for a connection
// this host dialled (also from a foreign address with IP_TRANSPARENT) or one
// it forwards. The query runs in the Firewall's network namespace. Its
// signature matches proxy.Config.SourceNAT.
//
// Connections this host opens are in conntrack zone 0, also in transparent
// mode (only the intercepted ones are in Config.InterceptZone), so the
// lookup is in zone 0.
func (fw *Firewall) SourceAddress(local, remote netip.AddrPort) (netip.Addr, error) {
	src, dst := local.Addr().Unmap().WithZone(""), remote.Addr().Unmap().WithZone("")
	what := fmt.Sprintf("look up tcp %s -> %s", netip.AddrPortFrom(src, local.Port()), netip.AddrPortFrom(dst, remote.Port()))
	switch {
	case !src.IsValid() || !dst.IsValid():
		return netip.Addr{}, fmt.Errorf("conntrack: %s: both addresses are required", what)
	case src.Is4() != dst.Is4():
		return netip.Addr{}, fmt.Errorf("conntrack: %s: the addresses are of different families", what)
	case local.Port() == 0 || remote.Port() == 0:
		return netip.Addr{}, fmt.Errorf("conntrack: %s: port 0 is not a port", what)
	}
	q := conntrack.Flow{TupleOrig: conntrack.Tuple{
		IP:    conntrack.IPTuple{SourceAddress: src, DestinationAddress: dst},
		Proto: conntrack.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: local.Port(), DestinationPort: remote.Port()},
	}}

	fw.ctqMu.Lock()
	defer fw.ctqMu.Unlock()
	if fw.ctq == nil {
		if errors.Is(fw.ctqErr, ErrClosed) {
			return netip.Addr{}, ErrClosed
		}
		return netip.Addr{}, fmt.Errorf("conntrack: %s: %w", what, fw.ctqErr)
	}
	f, err := fw.ctq.Get(q)
	switch {
	case errors.Is(err, unix.ENOENT):
		return netip.Addr{}, wrapHint("conntrack", what, err,
			"no conntrack entry: the connection is closed, untracked (notrack) or in another network namespace")
	case err != nil:
		return netip.Addr{}, wrap("conntrack", what, err)
	}
	seen := f.TupleReply.IP.DestinationAddress.Unmap()
	if !seen.IsValid() {
		return netip.Addr{}, fmt.Errorf("conntrack: %s: the entry has no reply tuple", what)
	}
	return seen, nil
}
