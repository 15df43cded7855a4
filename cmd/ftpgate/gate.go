package main

import (
	"context"
	"time"

	"github.com/ftpgate/ftpgate/proxy"
)

// countingGate counts the firewall's failed operations for
// ftpgate_nftables_errors_total; the proxy sees the errors as before.
type countingGate struct {
	proxy.Gate
	failed func(operation string)
}

type countingPinhole struct {
	proxy.Pinhole
	failed func(operation string)
}

func (g countingGate) Open(ctx context.Context, f proxy.Flow, ttl time.Duration) (proxy.Pinhole, error) {
	p, err := g.Gate.Open(ctx, f, ttl)
	if err != nil {
		g.failed("open_pinhole")
		return nil, err
	}
	return countingPinhole{p, g.failed}, nil
}

func (p countingPinhole) Close() error {
	err := p.Pinhole.Close()
	if err != nil {
		p.failed("close_pinhole")
	}
	return err
}
