package nft

import (
	"errors"
	"net/netip"
	"os"
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
func TestEventsMarkFilter(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "evfilt")
	const mark, mask = 0x4600, 0xff00
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
	prog, err := markFilter(mark, mask)
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
	marks := map[uint16]uint32{ // source port -> ct mark
		1000: 0,
		1001: mark,
		1002: mark | 0xff,       // other bits outside the mask: ours
		1003: 0x4700,            // other bits under the mask
		1004: 0xffff00ff,        // only bits outside the mask
		1005: 0x12340000 | mark, // ours again
	}
	want := map[uint16]bool{1001: true, 1002: true, 1005: true}
	for port := uint16(1000); port <= 1005; port++ {
		f := conntrack.NewFlow(unix.IPPROTO_TCP, conntrack.StatusConfirmed, src, dst, port, 21, 60, marks[port])
		if err := ctc.Create(f); err != nil {
			t.Fatalf("create conntrack entry with mark %#x: %v", marks[port], err)
		}
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
				t.Errorf("event for an entry with ct mark %#x passed the filter", e.Flow.Mark)
			}
			got[port] = true
		}
	}
	for port := range want {
		if !got[port] {
			t.Errorf("no event for the entry with ct mark %#x", marks[port])
		}
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
