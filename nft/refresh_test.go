package nft

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/ti-mo/conntrack"

	"github.com/ftpgate/ftpgate/proxy"
)

// TestLateEventAfterRefresh: a connection uses pinhole p1, and an Open of the
// same key (p2) commits before p1's conntrack NEW event is read. The event
// must end p1 as used and leave p2 open: its element stays in the kernel
// until p2.Close removes it, and a NAT pinhole's data stays with it. The
// connection is simulated: the test removes p1's one-shot key as the packet
// path does and calls the event handler as the listener does.
func TestLateEventAfterRefresh(t *testing.T) {
	requireRoot(t)
	for _, c := range []struct {
		name   string
		f1, f2 proxy.Flow
		// How many pinholes of the key are used before the refresh (their
		// events arrive late, oldest first).
		used int
	}{
		{name: "plain", f1: flow("10.77.0.1", "10.77.0.2:5000"), f2: flow("10.77.0.1", "10.77.0.2:5000"), used: 1},
		{name: "nat", f1: natFlow("10.77.1.2", "10.77.1.1:50000", "10.77.2.2:40012", "10.77.2.1"),
			f2: natFlow("10.77.1.2", "10.77.1.1:50000", "10.77.2.2:40013", "10.77.2.1"), used: 1},
		{name: "plain-then-nat", f1: flow("fd77:1::2", "[fd77:1::1]:50000"),
			f2: natFlow("fd77:1::2", "[fd77:1::1]:50000", "[fd77:2::2]:40012", ""), used: 1},
		{name: "two-used-before", f1: flow("10.77.0.1", "10.77.0.2:5000"), f2: flow("10.77.0.1", "10.77.0.2:5000"), used: 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			leakCheck(t)
			ns := newNS(t, "late")
			rec := newEnded()
			fw := newFirewall(t, ns, Config{OnPinholeEnd: rec.hook})
			ctx := context.Background()
			k, _, err := parseFlow(c.f1)
			if err != nil {
				t.Fatal(err)
			}
			fa, key := keyOf(c.f1)

			// c.used pinholes of the key are used in turn, each refreshed
			// by the next Open before its event is read.
			var old []proxy.Pinhole
			for range c.used {
				p, err := fw.Open(ctx, c.f1, time.Minute)
				if err != nil {
					t.Fatalf("Open(%v): %v", c.f1, err)
				}
				destroyElement(t, fw, p.(*pinhole).sets()[0], []byte(key)) // a connection consumed it
				old = append(old, p)
			}
			p2, err := fw.Open(ctx, c.f2, time.Minute)
			if err != nil {
				t.Fatalf("Open(%v) after its key was used: %v", c.f2, err)
			}
			for _, p := range old {
				if isDone(p) {
					t.Fatal("a used pinhole ended when an Open replaced it, before its conntrack event")
				}
			}
			if n := rec.count(); n != 0 {
				t.Fatalf("OnPinholeEnd called %d times before any event, want 0", n)
			}
			if fw.Active() != 1 {
				t.Errorf("Active() = %d after the refresh, want 1", fw.Active())
			}
			if got := fw.Pinholes(); len(got) != 1 || got[0].Flow != c.f2 {
				t.Errorf("Pinholes() = %v, want only %v", got, c.f2)
			}
			// Close of a used pinhole must not touch p2's element.
			if err := old[0].Close(); err != nil {
				t.Fatal(err)
			}

			// The late events, oldest first.
			for i, p := range old {
				fw.onConnNew(k, uint32(i+1), conntrack.Tuple{}, 0)
				if got := rec.wait(t, time.Second); got.f != c.f1 || got.end != Used {
					t.Errorf("late event %d: OnPinholeEnd(%v, %v), want (%v, used)", i, got.f, got.end, c.f1)
				}
				waitDone(t, p, time.Second)
			}
			if isDone(p2) {
				t.Fatal("the late event of the replaced pinhole ended the new one")
			}
			if fw.Active() != 1 {
				t.Errorf("Active() = %d after the late events, want 1", fw.Active())
			}

			// The janitor of the used NAT pinholes leaves p2's data alone.
			time.Sleep(3 * janitorDelay)
			want := strings.Join(names(wantElements(p2.(*pinhole))), ",")
			if got := strings.Join(names(natElements(t, ns, fa, []byte(key))), ","); got != want {
				t.Fatalf("after the late events the kernel holds %s for the key, want p2's %s", got, want)
			}

			if err := p2.Close(); err != nil {
				t.Fatal(err)
			}
			if got := rec.wait(t, time.Second); got.f != c.f2 || got.end == Used {
				t.Errorf("OnPinholeEnd(%v, %v), want (%v, not used)", got.f, got.end, c.f2)
			}
			if got := natElements(t, ns, fa, []byte(key)); len(got) != 0 {
				t.Errorf("p2.Close left %v in the kernel", names(got))
			}
		})
	}
}

// TestRefreshOfUnusedPinhole: an Open of the key of an outstanding pinhole
// that no connection used ends it unused at once, and a NEW event that
// follows is the new pinhole's.
func TestRefreshOfUnusedPinhole(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "refr")
	rec := newEnded()
	fw := newFirewall(t, ns, Config{OnPinholeEnd: rec.hook})
	f := flow("10.77.0.1", "10.77.0.2:5000")
	k, _, _ := parseFlow(f)
	p1, err := fw.Open(context.Background(), f, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := fw.Open(context.Background(), f, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, p1, time.Second)
	if got := rec.wait(t, time.Second); got.end == Used {
		t.Error("the replaced, unused pinhole was reported used")
	}
	fw.onConnNew(k, 1, conntrack.Tuple{}, 0)
	waitDone(t, p2, time.Second)
	if got := rec.wait(t, time.Second); got.end != Used {
		t.Error("the new pinhole's event reported it unused")
	}
}

// wantElements returns, by set name, the elements p's Open adds.
func wantElements(p *pinhole) map[string]nftables.SetElement {
	out := map[string]nftables.SetElement{}
	for _, e := range p.elements(time.Second) {
		out[e.set.Name] = e.elem
	}
	return out
}

// TestRefreshAfterKernelExpiry: an Open of a key whose element the kernel
// expired but whose expiry is not reported yet (the grace second) replaces
// it; the old pinhole ends unused when its timer fires, the new one stays.
func TestRefreshAfterKernelExpiry(t *testing.T) {
	requireRoot(t)
	leakCheck(t)
	ns := newNS(t, "refexp")
	rec := newEnded()
	fw := newFirewall(t, ns, Config{OnPinholeEnd: rec.hook})
	f := flow("10.77.0.1", "10.77.0.2:5000")
	fa, key := keyOf(f)
	p1, err := fw.Open(context.Background(), f, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(expireGrace / 2)
	for _, ok := pinElement(t, ns, fa, key); ok; _, ok = pinElement(t, ns, fa, key) {
		if time.Now().After(deadline) {
			t.Fatal("the kernel did not expire the element")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p2, err := fw.Open(context.Background(), f, time.Minute)
	if err != nil {
		t.Fatalf("Open of a key the kernel expired: %v", err)
	}
	if got := rec.wait(t, 2*expireGrace); got.end == Used {
		t.Error("the expired pinhole was reported used")
	}
	waitDone(t, p1, time.Second)
	if isDone(p2) || fw.Active() != 1 {
		t.Fatalf("the new pinhole ended with the expired one (active %d)", fw.Active())
	}
	if _, ok := pinElement(t, ns, fa, key); !ok {
		t.Fatal("the new pinhole's element is missing")
	}
}
