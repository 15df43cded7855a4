package main

import (
	"context"
	"errors"
	"time"

	"github.com/ftpgate/ftpgate/nft"
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
		// A flow refused by configuration is counted by the session (a
		// refusal), not as a kernel error.
		if !abandoned(ctx, err) && !errors.Is(err, proxy.ErrInterceptedPort) {
			g.failed("open_pinhole")
		}
		return nil, err
	}
	return countingPinhole{p, g.failed}, nil
}

// abandoned reports whether an Open failed because nobody wants the opening
// any more: its session ended (its context is done) or the daemon is
// shutting down (the firewall is closed). The kernel refused nothing, and
// counting it would page someone for a client that hung up.
func abandoned(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, nft.ErrClosed)
}

func (p countingPinhole) Close() error {
	err := p.Pinhole.Close()
	if err != nil {
		p.failed("close_pinhole")
	}
	return err
}
