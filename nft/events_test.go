package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/proxy"
)

// TestEventsMarkFilter: the socket filter of the conntrack event listener,
// attached in the kernel, passes exactly the events of entries whose ct mark
// carries ftpgate's mark under its mask; entries without a mark, with other
// bits under the mask, or with only bits outside it never reach userspace.
// With a zone (transparent mode: that of intercepted connections) the events
// of marked entries in that zone are dropped too, those of other zones not.
func TestEventsMarkFilter(t *testing.T) {
	requireRoot(t)
	const mark, mask, zone = 0x4600, 0xff00, 0x4654
	type entry struct {
		mark uint32
		zone uint16
	}
	entries := map[uint16]entry{ // by source port
		1000: {0, 0},
		1001: {mark, 0},
		1002: {mark | 0xff, 0},       // other bits outside the mask: ours
		1003: {0x4700, 0},            // other bits under the mask
		1004: {0xffff00ff, 0},        // only bits outside the mask
		1005: {0x12340000 | mark, 0}, // ours again
		1006: {mark, zone},           // ours, but an intercepted connection
		1007: {mark, 7},              // ours, in another zone
		1008: {0x4700, zone},
	}
	for _, c := range []struct {
		zone uint16
		want []uint16
	}{
		{0, []uint16{1001, 1002, 1005, 1006, 1007}},
		{zone, []uint16{1001, 1002, 1005, 1007}},
	} {
		t.Run(fmt.Sprintf("zone-%d", c.zone), func(t *testing.T) {
			ns := newNS(t, "evfilt")
			var (
				ev  *netlink.Conn
				ctc *conntrack.Conn
				err error
			)
			ns.do(t, func() {
				ev, err = netlink.Dial(unix.NETLINK_NETFILTER, nil)
				if err != nil {
					return
				}
				ctc, err = conntrack.Dial(nil)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer ev.Close()
			defer ctc.Close()
			prog, err := markFilter(mark, mask, c.zone)
			if err != nil {
				t.Fatal(err)
			}
			if err := ev.SetBPF(prog); err != nil {
				t.Fatalf("attach filter: %v", err)
			}
			if err := ev.JoinGroup(groupCTNew); err != nil {
				t.Fatal(err)
			}

			src, dst := netip.MustParseAddr("10.77.3.1"), netip.MustParseAddr("10.77.3.2")
			for port := uint16(1000); port <= 1008; port++ {
				e := entries[port]
				f := conntrack.NewFlow(unix.IPPROTO_TCP, conntrack.StatusConfirmed, src, dst, port, 21, 60, e.mark)
				f.Zone = e.zone
				if err := ctc.Create(f); err != nil {
					t.Fatalf("create conntrack entry with mark %#x in zone %d: %v", e.mark, e.zone, err)
				}
			}

			want := map[uint16]bool{}
			for _, p := range c.want {
				want[p] = true
			}
			got := map[uint16]bool{}
			if err := ev.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
				t.Fatal(err)
			}
			for {
				msgs, err := ev.Receive()
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range msgs {
					var e conntrack.Event
					if err := e.Unmarshal(m); err != nil {
						t.Fatal(err)
					}
					port := e.Flow.TupleOrig.Proto.SourcePort
					if !want[port] {
						t.Errorf("event for an entry with ct mark %#x in zone %d passed the filter", e.Flow.Mark, e.Flow.Zone)
					}
					got[port] = true
				}
			}
			for port := range want {
				if !got[port] {
					t.Errorf("no event for the entry with ct mark %#x in zone %d", entries[port].mark, entries[port].zone)
				}
			}
		})
	}
}

// TestEventsFilterAttached: the listener a Firewall starts has the filter
// in the kernel, and joins the destroy group only when bytes are counted.
func TestEventsFilterAttached(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "evattach")
	for _, counting := range []bool{false, true} {
		cfg := Config{}
		if counting {
			cfg.OnDataEnd = func(proxy.Flow, uint64, uint64) {}
		}
		fw := newFirewall(t, ns, cfg)
		if fw.events == nil || !fw.events.filtered {
			t.Errorf("counting=%v: conntrack events not filtered in the kernel", counting)
		}
		if fw.events != nil && (fw.events.onDestroy != nil) != counting {
			t.Errorf("counting=%v: destroy events subscribed: %v", counting, fw.events.onDestroy != nil)
		}
		if err := fw.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeRawConn runs the read function at once, as if the socket were ready.
type fakeRawConn struct{ syscall.RawConn }

func (fakeRawConn) Read(f func(uintptr) bool) error {
	for !f(0) {
	}
	return nil
}

// TestEventsReceiveErrors: lost events (ENOBUFS) are counted and reading
// goes on; any other receive error ends the listener, reported once as
// stopped. Firewall.EventsListening is true while it reads and false from
// the report on; a listener ended by stop is not reported but no longer
// listening either, and a Firewall without one never was.
func TestEventsReceiveErrors(t *testing.T) {
	noop := make([]byte, unix.NLMSG_HDRLEN) // one empty netlink message
	binary.NativeEndian.PutUint32(noop[0:4], unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint16(noop[4:6], unix.NLMSG_NOOP)
	type read struct {
		errno syscall.Errno
		data  []byte
	}
	for _, c := range []struct {
		name      string
		reads     []read
		wantLost  []uint64 // onLost calls
		wantMsgs  int      // messages handed to handle
		wantFatal bool     // onErr(stopped) called
	}{
		{"lost events, then events, then a fatal error",
			[]read{{errno: unix.ENOBUFS}, {data: noop}, {errno: unix.ENOBUFS}, {errno: unix.ENOBUFS}, {data: noop}, {errno: unix.EBADF}},
			[]uint64{1, 2, 3}, 2, true},
		{"a fatal error at once", []read{{errno: unix.ENOTSOCK}}, nil, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var lost []uint64
			var msgs, fatal int
			fw := &Firewall{}
			ev := &ctEvents{rc: fakeRawConn{}, buf: make([]byte, 64), ctHandlers: ctHandlers{
				onLost: func(n uint64) { lost = append(lost, n) },
				onErr: func(err error, stopped bool) {
					if !stopped {
						msgs++ // the NOOP message is no conntrack event
						return
					}
					fatal++
					if fw.EventsListening() {
						t.Error("EventsListening() true when the listener reports it stopped")
					}
				},
			}}
			fw.events = ev
			i := 0
			ev.readFn = func(uintptr) bool {
				if i == len(c.reads) {
					t.Fatal("read after the listener should have stopped")
				}
				if !fw.EventsListening() {
					t.Errorf("read %d: EventsListening() false while the listener runs", i)
				}
				r := c.reads[i]
				i++
				ev.errno, ev.n = r.errno, copy(ev.buf, r.data)
				return true
			}
			ev.done.Add(1)
			ev.run()
			if !slices.Equal(lost, c.wantLost) {
				t.Errorf("onLost calls %v, want %v", lost, c.wantLost)
			}
			if got := ev.lost.Load(); got != uint64(len(c.wantLost)) {
				t.Errorf("lost = %d, want %d", got, len(c.wantLost))
			}
			if msgs != c.wantMsgs || (fatal == 1) != c.wantFatal || fatal > 1 {
				t.Errorf("%d messages handled and %d stops, want %d and stopped=%v", msgs, fatal, c.wantMsgs, c.wantFatal)
			}
			if fw.EventsListening() {
				t.Error("EventsListening() true after the listener ended")
			}
		})
	}
	t.Run("ended by stop", func(t *testing.T) {
		fw := &Firewall{}
		ev := &ctEvents{rc: fakeRawConn{}, buf: make([]byte, 64), ctHandlers: ctHandlers{
			onErr: func(err error, stopped bool) { t.Errorf("onErr(%v, %v) after stop", err, stopped) },
		}}
		fw.events = ev
		ev.readFn = func(uintptr) bool {
			// stop closed the socket under the blocked read
			ev.stopping.Store(true)
			ev.errno, ev.n = unix.EBADF, 0
			return true
		}
		ev.done.Add(1)
		ev.run()
		if fw.EventsListening() {
			t.Error("EventsListening() true after stop")
		}
	})
	if (&Firewall{}).EventsListening() {
		t.Error("EventsListening() true without a listener")
	}
}

// TestDataConnTable: the table of followed data connections stays bounded
// when DESTROY events are lost, forgets the oldest first, and keeps
// following new connections — lost events never use up its room for good.
func TestDataConnTable(t *testing.T) {
	f := func(id uint32) proxy.Flow {
		return proxy.Flow{Src: netip.AddrFrom4([4]byte{10, 77, 0, byte(id)}), Dst: netip.MustParseAddrPort("10.77.1.1:5000")}
	}
	d := newDataConnTable(8)
	// 1000 connections whose DESTROY events are all lost.
	for id := uint32(1); id <= 1000; id++ {
		d.add(id, f(id))
		if d.len() > 8 {
			t.Fatalf("after %d adds the table holds %d, want at most 8", id, d.len())
		}
	}
	for _, c := range []struct {
		id   uint32
		want bool
	}{
		{1000, true}, {997, true}, {993, true}, // the newest are followed
		{1, false}, {900, false}, {992, false}, // the oldest were forgotten
		{1000, false}, // taken once
	} {
		got, ok := d.take(c.id)
		if ok != c.want || (ok && got != f(c.id)) {
			t.Errorf("take(%d) = %v, %v; want followed=%v", c.id, got, ok, c.want)
		}
	}
	// A reused ID is followed once, with its newest flow.
	d.add(995, f(1))
	if got, ok := d.take(995); !ok || got != f(1) {
		t.Errorf("reused ID: take = %v, %v; want the newest flow", got, ok)
	}
	if _, ok := d.take(995); ok {
		t.Error("reused ID followed twice")
	}
}
