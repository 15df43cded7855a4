package nft

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// TestRacedConnectionCut: two connections of one pinhole's key whose
// opening SYNs raced (simulated: marked conntrack entries created through
// ctnetlink, whose NEW events the Firewall reads as it reads real ones).
// The first is the pinhole's; the second's entry is deleted. A connection
// of the key after a new Open is that pinhole's and stays, and so does a
// marked connection of another key.
func TestRacedConnectionCut(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "race")
	rec := newEnded()
	fw := newFirewall(t, ns, Config{OnPinholeEnd: rec.hook})
	ctc := dialConntrack(t, ns)
	src, dst := netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")
	f := flow("10.77.0.1", "10.77.0.2:5000")
	conn := func(sport, dport uint16) conntrack.Flow {
		t.Helper()
		c := conntrack.NewFlow(unix.IPPROTO_TCP, conntrack.StatusConfirmed, src, dst, sport, dport, 60, DefaultCTMark)
		if err := ctc.Create(c); err != nil {
			t.Fatalf("create conntrack entry :%d -> :%d: %v", sport, dport, err)
		}
		return c
	}
	exists := func(c conntrack.Flow) bool { return ctExists(t, ctc, c) }
	open := func() {
		t.Helper()
		if _, err := fw.Open(context.Background(), f, time.Minute); err != nil {
			t.Fatal(err)
		}
	}

	open()
	first, second := conn(40001, 5000), conn(40002, 5000)
	if got := rec.wait(t, 3*time.Second); got.end != Used {
		t.Fatal("the first connection did not use the pinhole")
	}
	if !waitFor(3*time.Second, func() bool { return fw.RacedConnections() == 1 && !exists(second) }) {
		t.Fatalf("the second connection was not cut: raced %d, entry present %v", fw.RacedConnections(), exists(second))
	}
	if !exists(first) {
		t.Error("the first connection's entry was deleted")
	}

	// A new pinhole of the key: its connection is its own.
	open()
	third := conn(40003, 5000)
	if got := rec.wait(t, 3*time.Second); got.end != Used {
		t.Fatal("the connection after a new Open did not use its pinhole")
	}
	other := conn(40004, 5001) // marked, another key, no pinhole
	time.Sleep(200 * time.Millisecond)
	if !exists(third) || !exists(other) || fw.RacedConnections() != 1 {
		t.Errorf("a connection that raced nothing was cut: third %v, other %v, raced %d", exists(third), exists(other), fw.RacedConnections())
	}
}

// TestRacedConnectionCutInZone: a raced second connection in a conntrack
// zone other than 0 (a host that zones its forwarded traffic) is looked up
// and deleted in its zone. It used to be looked up in zone 0, not found,
// taken for gone already and reported cut while it stayed.
func TestRacedConnectionCutInZone(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "racezone")
	var logbuf syncBuffer
	var fw *Firewall
	ns.do(t, func() {
		var err error
		fw, err = New(Config{}, slog.New(slog.NewTextHandler(&logbuf, nil)))
		if err != nil {
			t.Fatal(err)
		}
	})
	defer fw.Close()
	ctc := dialConntrack(t, ns)
	src, dst := netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")
	if _, err := fw.Open(context.Background(), flow("10.77.0.1", "10.77.0.2:5000"), time.Minute); err != nil {
		t.Fatal(err)
	}
	conn := func(sport uint16, zone uint16) conntrack.Flow {
		t.Helper()
		c := conntrack.NewFlow(unix.IPPROTO_TCP, conntrack.StatusConfirmed, src, dst, sport, 5000, 60, DefaultCTMark)
		c.Zone = zone
		if err := ctc.Create(c); err != nil {
			t.Fatalf("create conntrack entry :%d zone %d: %v", sport, zone, err)
		}
		return c
	}
	exists := func(c conntrack.Flow) bool { return ctExists(t, ctc, c) }
	first := conn(40001, 5)
	// Same tuple as the second, in zone 0: not the raced entry, stays.
	decoy := conntrack.NewFlow(unix.IPPROTO_TCP, conntrack.StatusConfirmed, src, dst, 40002, 5000, 60, 0)
	if err := ctc.Create(decoy); err != nil {
		t.Fatal(err)
	}
	second := conn(40002, 5)
	if !waitFor(3*time.Second, func() bool { return fw.RacedConnections() == 1 && !exists(second) }) {
		t.Fatalf("the second connection (zone 5) was not cut: raced %d, entry present %v\n%s", fw.RacedConnections(), exists(second), logbuf.String())
	}
	if !exists(first) || !exists(decoy) {
		t.Errorf("an entry that raced nothing was deleted: first (zone 5) %v, same tuple in zone 0 %v", exists(first), exists(decoy))
	}
	if log := logbuf.String(); !strings.Contains(log, "its conntrack entry is deleted") || !strings.Contains(log, "zone=5") {
		t.Errorf("log does not report the cut in zone 5:\n%s", log)
	}
}

// TestRacedCutHint: when the raced entry cannot be deleted, the command
// the log gives for deleting it by hand names its zone.
func TestRacedCutHint(t *testing.T) {
	var logbuf bytes.Buffer
	fw := &Firewall{log: slog.New(slog.NewTextHandler(&logbuf, nil)), ctqErr: errors.New("no conntrack socket")}
	orig := conntrack.Tuple{
		IP:    conntrack.IPTuple{SourceAddress: netip.MustParseAddr("10.77.0.1"), DestinationAddress: netip.MustParseAddr("10.77.0.2")},
		Proto: conntrack.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: 40002, DestinationPort: 5000},
	}
	fw.cutRaced(7, orig, 5)
	if log := logbuf.String(); !strings.Contains(log, "delete it by hand: conntrack -D -p tcp --orig-src 10.77.0.1 --sport 40002 -w 5") {
		t.Errorf("hint lacks the zone:\n%s", log)
	}
	logbuf.Reset()
	fw.cutRaced(7, orig, 0)
	if log := logbuf.String(); !strings.Contains(log, "--sport 40002") || strings.Contains(log, "-w ") {
		t.Errorf("hint for zone 0 names a zone:\n%s", log)
	}
}

// TestCutConnectionStops: deleting the conntrack entry of a live connection
// that came through a pinhole (what cutRaced does) stops it behind a typical
// stateful forward filter: its next packets are picked up as new, carry no
// mark and are dropped.
func TestCutConnectionStops(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	cli, gw, srv := routedLab(t)
	gw.nft(t, `table inet hostfw {
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		ct mark & 0x100 == 0x100 accept
	}
}`)
	fw := newFirewall(t, gw, Config{})
	accepted := acceptor(t, srv, "10.77.3.2:5000")
	f := flow("10.77.2.1", "10.77.3.2:5000")
	if _, err := fw.Open(context.Background(), f, time.Minute); err != nil {
		t.Fatal(err)
	}
	c, err := dialFrom(t, cli, f.Src, f.Dst)
	if err != nil {
		t.Fatalf("connection through the pinhole: %v", err)
	}
	defer c.Close()
	select {
	case s := <-accepted:
		defer s.Close()
	case <-time.After(3 * time.Second):
		t.Fatal("the server did not accept")
	}
	if err := echoed(c, "before the cut", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	local := addrPortOf(c.LocalAddr())
	orig := conntrack.Tuple{
		IP:    conntrack.IPTuple{SourceAddress: local.Addr(), DestinationAddress: f.Dst.Addr()},
		Proto: conntrack.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: local.Port(), DestinationPort: f.Dst.Port()},
	}
	fw.ctqMu.Lock()
	entry, err := fw.ctq.Get(conntrack.Flow{TupleOrig: orig})
	fw.ctqMu.Unlock()
	if err != nil {
		t.Fatalf("the connection's conntrack entry: %v", err)
	}
	fw.cutRaced(entry.ID, orig, 0)
	if err := echoed(c, "after the cut", 2*time.Second); err == nil {
		t.Fatal("the connection still carries data after its conntrack entry was deleted")
	}
}

// syncBuffer is a bytes.Buffer safe for a logger writing from another
// goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ctExists reports whether conntrack has the entry c (of its zone).
func ctExists(t *testing.T, ctc *conntrack.Conn, c conntrack.Flow) bool {
	t.Helper()
	_, err := ctc.Get(c)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		t.Fatal(err)
	}
	return err == nil
}

// dialConntrack opens a conntrack netlink socket in ns, closed with t.
func dialConntrack(t *testing.T, ns *testNS) *conntrack.Conn {
	t.Helper()
	var ctc *conntrack.Conn
	var err error
	ns.do(t, func() { ctc, err = conntrack.Dial(nil) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctc.Close() })
	return ctc
}
