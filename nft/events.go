package nft

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// ctReadBuffer is the receive buffer of the conntrack event socket. With
// CAP_NET_ADMIN, which ftpgate has, it is set with SO_RCVBUFFORCE and not
// capped by net.core.rmem_max.
const ctReadBuffer = 8 << 20

// Conntrack multicast groups (linux/netfilter/nfnetlink.h, enum nfnetlink_groups).
const (
	groupCTNew     = 1 // NFNLGRP_CONNTRACK_NEW
	groupCTDestroy = 3 // NFNLGRP_CONNTRACK_DESTROY
)

// ctEvents watches conntrack events of the namespace it was started in and
// reports new (and, if asked, destroyed) TCP connections carrying ftpgate's
// ct mark, outside the conntrack zone of intercepted connections. A socket
// filter in the kernel drops every other event, so a busy gateway's
// unrelated connections cost ftpgate no wakeup and no decoding — nor do the
// intercepted control connections, which carry the mark too (the tproxy rule
// admits them) but are in Config.InterceptZone.
type ctEvents struct {
	conn     *netlink.Conn
	rc       syscall.RawConn
	buf      []byte // one datagram of events
	n        int    // recvfrom's result and error, set by readFn
	errno    syscall.Errno
	readFn   func(fd uintptr) bool
	filtered bool // the kernel filters (else only userspace does)
	mark     uint32
	mask     uint32
	zone     uint16 // events of this zone are dropped; 0: none
	ctHandlers
	lost     atomic.Uint64 // times the kernel dropped events (ENOBUFS)
	stopping atomic.Bool
	ended    atomic.Bool // run returned: on a fatal error or after stop
	done     sync.WaitGroup
}

// ctHandlers are what the listener calls, all from its goroutine.
type ctHandlers struct {
	// onNew: a new TCP connection whose ct mark is mark under mask, with
	// its conntrack ID, original tuple and conntrack zone.
	onNew func(k pinKey, id uint32, orig conntrack.Tuple, zone uint16)
	// onDestroy (if not nil): such a connection's entry went, with the
	// kernel's byte counters (when accounting is on).
	onDestroy func(id uint32, origBytes, replyBytes uint64)
	// onLost: the kernel dropped events because the socket's buffer was
	// full; lost counts such overruns so far. The listener goes on.
	onLost func(lost uint64)
	// onErr: an event could not be read (the listener goes on), or, with
	// stopped, the listener ended.
	onErr func(err error, stopped bool)
}

// startCTEvents opens the conntrack event socket in the calling thread's
// namespace and reads it until stop, calling h.
func startCTEvents(mark, mask uint32, zone uint16, h ctHandlers) (*ctEvents, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, wrap("conntrack", "open netlink socket", err)
	}
	ev := &ctEvents{conn: c, mark: mark, mask: mask, zone: zone, ctHandlers: h, buf: make([]byte, ctDatagramSize)}
	ev.readFn = ev.recv
	if err := ev.setup(); err != nil {
		_ = c.Close()
		return nil, err
	}
	ev.done.Add(1)
	go ev.run()
	return ev, nil
}

func (ev *ctEvents) setup() error {
	rc, err := ev.conn.SyscallConn()
	if err != nil {
		return wrap("conntrack", "raw socket access", err)
	}
	ev.rc = rc
	// A burst of connections must not overflow the socket: ask for a large
	// buffer. If it overflows all the same, the kernel drops events and
	// says so once (ENOBUFS, left on: a lost event makes a used pinhole look
	// expired, which should be visible), and the listener reads on.
	if err := ev.conn.SetReadBuffer(ctReadBuffer); err != nil {
		return wrap("conntrack", "set receive buffer", err)
	}
	// The filter goes on before joining, so no unfiltered event is queued.
	// Without it (it cannot fail on a kernel ftpgate runs on, but if it
	// did) the events are filtered below, only at a higher cost.
	if prog, err := markFilter(ev.mark, ev.mask, ev.zone); err == nil && ev.conn.SetBPF(prog) == nil {
		ev.filtered = true
	}
	groups := []uint32{groupCTNew}
	if ev.onDestroy != nil {
		groups = append(groups, groupCTDestroy)
	}
	for _, g := range groups {
		if err := ev.conn.JoinGroup(g); err != nil {
			return wrap("conntrack", "subscribe to connection events", err)
		}
	}
	return nil
}

// Attribute layout of a ctnetlink event (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaMark      = 8                     // CTA_MARK, a big-endian u32
	ctaZone      = 18                    // CTA_ZONE, a big-endian u16; absent for zone 0
	ctAttrOffset = unix.NLMSG_HDRLEN + 4 // first attribute: after nlmsghdr and the 4-byte nfgenmsg
)

// markFilter is a socket filter accepting ctnetlink events whose CTA_MARK
// attribute, masked, equals mark; events without one (mark 0) are dropped,
// and so are, if zone is not 0, events of entries in that zone.
func markFilter(mark, mask uint32, zone uint16) ([]bpf.RawInstruction, error) {
	var zoneTest []bpf.Instruction
	if zone != 0 {
		zoneTest = []bpf.Instruction{
			bpf.LoadConstant{Dst: bpf.RegA, Val: ctAttrOffset},
			bpf.LoadConstant{Dst: bpf.RegX, Val: ctaZone},
			bpf.LoadExtension{Num: bpf.ExtNetlinkAttr},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 3}, // zone 0: accept
			bpf.TAX{},
			bpf.LoadIndirect{Off: 4, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(zone), SkipTrue: 1}, // drop
		}
	}
	n := uint8(len(zoneTest))
	prog := []bpf.Instruction{
		bpf.LoadConstant{Dst: bpf.RegA, Val: ctAttrOffset},
		bpf.LoadConstant{Dst: bpf.RegX, Val: ctaMark},
		// A = offset of the first attribute of type X at or after A, or 0.
		bpf.LoadExtension{Num: bpf.ExtNetlinkAttr},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 5 + n}, // drop
		bpf.TAX{},
		bpf.LoadIndirect{Off: 4, Size: 4}, // the value, after the 4-byte nlattr header
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mask},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: mark & mask, SkipFalse: 1 + n}, // drop
	}
	prog = append(prog, zoneTest...)
	return bpf.Assemble(append(prog,
		bpf.RetConstant{Val: 0xffffffff}, // accept
		bpf.RetConstant{Val: 0},          // drop
	))
}

// ctDatagramSize bounds one read: the kernel sends each event as a datagram
// of its own, well under a kilobyte.
const ctDatagramSize = 32 << 10

func (ev *ctEvents) run() {
	defer ev.done.Done()
	defer ev.ended.Store(true)
	for {
		msgs, err := ev.receive()
		if ev.stopping.Load() {
			return
		}
		if err != nil {
			// receive goes on after lost events; anything else it returns
			// ends the listener.
			ev.ended.Store(true) // before onErr logs it
			ev.onErr(fmt.Errorf("conntrack event listener: %w", err), true)
			return
		}
		for _, m := range msgs {
			ev.handle(netlink.Message{
				Header: netlink.Header{Length: m.Header.Len, Type: netlink.HeaderType(m.Header.Type),
					Flags: netlink.HeaderFlags(m.Header.Flags), Sequence: m.Header.Seq, PID: m.Header.Pid},
				Data: m.Data,
			})
		}
	}
}

// receive reads one datagram of events, with a raw system call on the
// non-blocking socket, waiting in Go's network poller. The messages point
// into ev.buf: handle them before the next receive.
//
// Why not conn.Receive: its recvmsg enters the runtime's syscall state, and
// a system call made after the daemon was idle wakes the runtime's sysmon
// thread, which then polls every 20 µs until all is idle again. Events
// arrive while the daemon sleeps (a client connecting to a pinhole), so
// that was about one sysmon wakeup, three context switches, per session
// (perf, one client at a time). proxy/rawio.go does the same for control
// connections.
func (ev *ctEvents) receive() ([]syscall.NetlinkMessage, error) {
	for {
		if err := ev.rc.Read(ev.readFn); err != nil {
			return nil, err
		}
		switch {
		case ev.errno == unix.ENOBUFS:
			// The socket's buffer overflowed and the kernel dropped events;
			// the ones after it are there to read.
			ev.onLost(ev.lost.Add(1))
			continue
		case ev.errno != 0:
			return nil, os.NewSyscallError("recvfrom", ev.errno)
		case ev.n > len(ev.buf):
			ev.onErr(fmt.Errorf("conntrack event listener: a %d-byte datagram does not fit the %d-byte buffer: skipped", ev.n, len(ev.buf)), false)
			continue
		}
		msgs, err := syscall.ParseNetlinkMessage(ev.buf[:ev.n])
		if err != nil {
			ev.onErr(fmt.Errorf("conntrack event listener: %w", err), false)
			continue
		}
		return msgs, nil
	}
}

// recv is the raw read for rc.Read: false means "not ready, wait in the
// poller". MSG_TRUNC makes it return a datagram's full length even when the
// buffer is shorter. An interrupted call is repeated at once: the poller is
// edge-triggered and would not wake again for what is already queued.
func (ev *ctEvents) recv(fd uintptr) bool {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&ev.buf[0])), uintptr(len(ev.buf)),
			unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		ev.n, ev.errno = int(r), e
		return true
	}
}

func (ev *ctEvents) handle(m netlink.Message) {
	var e conntrack.Event
	if err := e.Unmarshal(m); err != nil {
		ev.onErr(fmt.Errorf("conntrack event: %w", err), false)
		return
	}
	if e.Flow == nil {
		return
	}
	t := e.Flow.TupleOrig
	if t.Proto.Protocol != unix.IPPROTO_TCP || e.Flow.Mark&ev.mask != ev.mark&ev.mask || (ev.zone != 0 && e.Flow.Zone == ev.zone) {
		return
	}
	switch e.Type {
	case conntrack.EventNew:
		ev.onNew(pinKey{
			src:  t.IP.SourceAddress.Unmap(),
			dst:  t.IP.DestinationAddress.Unmap(),
			port: t.Proto.DestinationPort,
		}, e.Flow.ID, t, e.Flow.Zone)
	case conntrack.EventDestroy:
		if ev.onDestroy != nil {
			ev.onDestroy(e.Flow.ID, e.Flow.CountersOrig.Bytes, e.Flow.CountersReply.Bytes)
		}
	}
}

// stop closes the socket and waits for the listener to end.
func (ev *ctEvents) stop() {
	ev.stopping.Store(true)
	_ = ev.conn.Close()
	ev.done.Wait()
}
