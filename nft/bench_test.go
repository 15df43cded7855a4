package nft

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/proxy"
)

// BenchmarkPinholeChurn measures Open+Close of one-shot pinholes, each a
// kernel round trip (add element, then delete element).
func BenchmarkPinholeChurn(b *testing.B) {
	requireRoot(b)
	ns := newNS(b, "bench")
	fw := newFirewall(b, ns, Config{})
	ctx := context.Background()
	src, dst := netip.MustParseAddr("10.77.9.1"), netip.MustParseAddr("10.77.9.2")
	start := time.Now()
	n := 0
	for b.Loop() {
		f := proxy.Flow{Src: src, Dst: netip.AddrPortFrom(dst, uint16(1024+n%60000))}
		p, err := fw.Open(ctx, f, 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Close(); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "pinholes/s")
}

// BenchmarkNATPinholeChurn measures Open+Close of NAT pinholes with SNAT:
// three elements added in one batch, then deleted in one batch.
func BenchmarkNATPinholeChurn(b *testing.B) {
	requireRoot(b)
	ns := newNS(b, "natbench")
	fw := newFirewall(b, ns, Config{})
	ctx := context.Background()
	src, pub := netip.MustParseAddr("10.77.9.1"), netip.MustParseAddr("10.77.9.2")
	srv, in := netip.MustParseAddr("10.77.10.2"), netip.MustParseAddr("10.77.10.1")
	start := time.Now()
	n := 0
	for b.Loop() {
		f := proxy.Flow{Src: src, Dst: netip.AddrPortFrom(pub, uint16(1024+n%60000)),
			Target: netip.AddrPortFrom(srv, 40000), SNAT: in}
		p, err := fw.Open(ctx, f, 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Close(); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "pinholes/s")
}
