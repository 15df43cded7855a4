package nft

import (
	"fmt"
	"sync"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

const (
	// ctReadBuffer is the receive buffer asked for the conntrack event socket;
	// the kernel caps it at net.core.rmem_max.
	ctReadBuffer = 8 << 20
	// ctWorkers decode events; a decode error ends one worker, so more than
	// one keeps the listener alive.
	ctWorkers = 2
)

// ctEvents watches conntrack NEW events of the namespace it was started in
// and reports new TCP connections carrying the given mark.
type ctEvents struct {
	conn      *conntrack.Conn
	evCh      chan conntrack.Event
	errCh     chan error
	stopCh    chan struct{}
	done      sync.WaitGroup
	matches   func(mark uint32) bool
	onNew     func(k pinKey, id uint32)
	onDestroy func(id uint32, origBytes, replyBytes uint64)
	onErr     func(error)
}

// startCTEvents opens the conntrack event socket in the calling thread's
// namespace. onNew is called for every new TCP connection whose ct mark
// satisfies matches, onDestroy when such a connection's entry goes (with the
// kernel's byte counters, when accounting is on); onErr for listener errors.
func startCTEvents(matches func(uint32) bool, onNew func(pinKey, uint32), onDestroy func(uint32, uint64, uint64), onErr func(error)) (*ctEvents, error) {
	c, err := conntrack.Dial(nil)
	if err != nil {
		return nil, wrap("conntrack", "open netlink socket", err)
	}
	// A burst of connections must not overflow the socket and end the
	// listener: ask for a large buffer and for no ENOBUFS errors (lost
	// events only make a used pinhole look expired).
	if err := c.SetReadBuffer(ctReadBuffer); err != nil {
		_ = c.Close()
		return nil, wrap("conntrack", "set receive buffer", err)
	}
	if err := c.SetOption(netlink.NoENOBUFS, true); err != nil {
		_ = c.Close()
		return nil, wrap("conntrack", "set NETLINK_NO_ENOBUFS", err)
	}
	ev := &ctEvents{
		conn:      c,
		evCh:      make(chan conntrack.Event, 1024),
		stopCh:    make(chan struct{}),
		matches:   matches,
		onNew:     onNew,
		onDestroy: onDestroy,
		onErr:     onErr,
	}
	ev.errCh, err = c.Listen(ev.evCh, ctWorkers, []netfilter.NetlinkGroup{netfilter.GroupCTNew, netfilter.GroupCTDestroy})
	if err != nil {
		_ = c.Close()
		return nil, wrap("conntrack", "subscribe to new-connection events", err)
	}
	ev.done.Add(1)
	go ev.run()
	return ev, nil
}

func (ev *ctEvents) run() {
	defer ev.done.Done()
	alive := ctWorkers
	for {
		select {
		case e := <-ev.evCh:
			ev.handle(e)
		case err := <-ev.errCh:
			alive--
			ev.onErr(fmt.Errorf("conntrack event listener: %w (%d of %d readers left)", err, alive, ctWorkers))
		case <-ev.stopCh:
			// conntrack.Conn.Close waits for its workers, which may be blocked
			// sending to evCh/errCh: keep draining until it returns.
			closed := make(chan struct{})
			go func() {
				_ = ev.conn.Close()
				close(closed)
			}()
			for {
				select {
				case <-ev.evCh:
				case <-ev.errCh:
				case <-closed:
					return
				}
			}
		}
	}
}

func (ev *ctEvents) handle(e conntrack.Event) {
	if e.Flow == nil {
		return
	}
	t := e.Flow.TupleOrig
	if t.Proto.Protocol != unix.IPPROTO_TCP || !ev.matches(e.Flow.Mark) {
		return
	}
	switch e.Type {
	case conntrack.EventNew:
		ev.onNew(pinKey{
			src:  t.IP.SourceAddress.Unmap(),
			dst:  t.IP.DestinationAddress.Unmap(),
			port: t.Proto.DestinationPort,
		}, e.Flow.ID)
	case conntrack.EventDestroy:
		ev.onDestroy(e.Flow.ID, e.Flow.CountersOrig.Bytes, e.Flow.CountersReply.Bytes)
	}
}

// stop closes the socket and waits for every goroutine to end.
func (ev *ctEvents) stop() {
	close(ev.stopCh)
	ev.done.Wait()
}
