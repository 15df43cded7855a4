package nft

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
)

// NAT pinholes.
//
// A NAT pinhole for the flow Src -> Dst:port, DNAT'ed to Target and
// optionally SNAT'ed to SNAT, is up to three elements with the same key
// Src . Dst . port, added in one batch:
//
//   - natpin4/6 (a set, like pin4/6): the one-shot key. The nat_prerouting
//     rule (nat_output's, for a connection made on the gateway itself)
//     deletes it from the packet path when a new connection matches, so
//     exactly one connection is translated;
//   - dnat4/6 (a timeout map): Target address . port, looked up by that rule
//     right after consuming the key; only if it is there is the connection
//     marked and DNAT'ed (never marked without being translated);
//   - snat4/6 (a timeout map): the SNAT address, looked up in nat_postrouting
//     (nat_input for a connection delivered to the gateway itself) by the
//     connection's original tuple (ip saddr . ct original ip daddr .
//     ct original proto-dst), only for DNAT'ed connections.
//
// Why not a dynset delete on the dnat map itself: the kernel refuses a
// dynset delete on a map without a data register (EINVAL), and nft's rule
// language cannot hand data looked up for that delete on to the dnat
// statement (it looks the element up again — after it was deleted), so such
// a rule could not be written as the text Ruleset prints. So the one-shot
// part is a set element and the maps only hold data. The map elements live
// expireGrace longer than the key, so a connection that consumes the key at
// its last moment still finds them; once the pinhole ended — used (conntrack
// NEW event), expired or replaced — the janitor deletes them, and Close
// deletes all of them. The Firewall tracks the keys that may still hold such
// data (natDirty), so an Open destroys stale data only where some can be. Only the NAT chains see the first
// packet of a connection (afterwards conntrack applies the binding), so the
// maps need no deletion from the packet path.

// natSpec is the translation of a NAT pinhole; the zero value means none.
type natSpec struct {
	to   netip.AddrPort // DNAT target
	snat netip.Addr     // SNAT address, if any
}

func (p *pinhole) isNAT() bool { return p.nat.to.IsValid() }

func (p *pinhole) keyBytes() []byte { return p.fa.pinKey(p.key.src, p.key.dst, p.key.port) }

// sets returns the sets that may hold p's elements, the one-shot key first.
func (p *pinhole) sets() []*nftables.Set {
	o := p.fw.obj
	if !p.isNAT() {
		return []*nftables.Set{o.pins[p.fa]}
	}
	return p.fw.natSets(p.fa)
}

// natSets returns natpinN, dnatN and snatN.
func (fw *Firewall) natSets(fa *family) []*nftables.Set {
	o := fw.obj
	return []*nftables.Set{o.natPins[fa], o.dnats[fa], o.snats[fa]}
}

type setElement struct {
	set  *nftables.Set
	elem nftables.SetElement
}

// elements returns what Open adds for p.
func (p *pinhole) elements(ttl time.Duration) []setElement {
	o, kb := p.fw.obj, p.keyBytes()
	if !p.isNAT() {
		return []setElement{{o.pins[p.fa], nftables.SetElement{Key: kb, Timeout: ttl}}}
	}
	dataTTL := ttl + expireGrace
	e := []setElement{
		{o.natPins[p.fa], nftables.SetElement{Key: kb, Timeout: ttl}},
		{o.dnats[p.fa], nftables.SetElement{Key: kb, Val: p.fa.dnatData(p.nat.to), Timeout: dataTTL}},
	}
	if p.nat.snat.IsValid() {
		e = append(e, setElement{o.snats[p.fa], nftables.SetElement{Key: kb, Val: p.nat.snat.AsSlice(), Timeout: dataTTL}})
	}
	return e
}

// setNames names the sets Open adds p's elements to, for error messages.
func (p *pinhole) setNames() string {
	var names []string
	for _, e := range p.elements(time.Second) {
		names = append(names, e.set.Name)
	}
	if len(names) == 1 {
		return "set " + names[0]
	}
	return "sets " + strings.Join(names, ", ")
}

// appendNew appends the sets of add that s does not hold yet.
func appendNew(s []*nftables.Set, add ...*nftables.Set) []*nftables.Set {
	for _, a := range add {
		if !slices.Contains(s, a) {
			s = append(s, a)
		}
	}
	return s
}

// queueDestroy queues the destruction of key in every set, for send. The
// kernel ignores missing elements (NFT_MSG_DESTROYSETELEM, Linux >= 6.3).
func (fw *Firewall) queueDestroy(sets []*nftables.Set, key []byte) error {
	for _, s := range sets {
		if err := fw.conn.SetDestroyElements(s, []nftables.SetElement{{Key: key}}); err != nil {
			return err
		}
	}
	return nil
}

// janitor removes the DNAT/SNAT data of ended NAT pinholes, batching what
// piles up while it waits for the netlink socket.
type janitor struct {
	mu    sync.Mutex
	queue []*pinhole
	wake  chan struct{} // capacity 1
	stop  chan struct{}
	done  chan struct{}
}

func newJanitor() janitor {
	return janitor{wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// add queues p; it may be called with fw.mu held.
func (j *janitor) add(p *pinhole) {
	j.mu.Lock()
	j.queue = append(j.queue, p)
	j.mu.Unlock()
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

// janitorDelay is how long the janitor lets ended pinholes gather before it
// removes their data in one batch: under load that is one netlink round trip
// for many pinholes instead of one each, off the path of Opens. The data is
// inert meanwhile (its one-shot key is gone) and expires on its own anyway.
const janitorDelay = 100 * time.Millisecond

func (j *janitor) run(fw *Firewall) {
	defer close(j.done)
	for {
		select {
		case <-j.stop:
			return
		case <-j.wake:
		}
		select {
		case <-j.stop:
			return
		case <-time.After(janitorDelay):
		}
		j.mu.Lock()
		q := j.queue
		j.queue = nil
		j.mu.Unlock()
		fw.removeNATData(q)
	}
}

// shutdown stops run and waits for it; pinholes still queued are dropped
// (Close deletes the whole table anyway).
func (j *janitor) shutdown() {
	close(j.stop)
	<-j.done
}

// removeNATData deletes the dnat/snat elements of ended NAT pinholes, unless
// a newer pinhole owns the key (its Open replaced them already) or they are
// known to be gone.
func (fw *Firewall) removeNATData(q []*pinhole) {
	fw.nlMu.Lock()
	defer fw.nlMu.Unlock()
	fw.mu.Lock()
	if fw.closed {
		fw.mu.Unlock()
		return
	}
	var todo []*pinhole
	for _, p := range q {
		if _, dirty := fw.natDirty[p.key]; dirty && fw.entries[p.key] == nil {
			todo = append(todo, p)
		}
	}
	fw.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	err := fw.send(func() error {
		for _, p := range todo {
			if err := fw.queueDestroy(p.sets()[1:], p.keyBytes()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		fw.log.Warn("nft: cannot remove the NAT data of used pinholes; the kernel expires it with the pinholes' ttl",
			"pinholes", len(todo), "err", wrap("nftables", "delete dnat/snat map elements", err))
		return
	}
	// nlMu is held: no Open registered a newer pinhole meanwhile.
	fw.mu.Lock()
	for _, p := range todo {
		delete(fw.natDirty, p.key)
	}
	fw.mu.Unlock()
}
