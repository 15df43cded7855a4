package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ftpgate/ftpgate/metrics"
	"github.com/ftpgate/ftpgate/nft"
	"github.com/ftpgate/ftpgate/proxy"
)

func (o *options) nftConfig() (nft.Config, error) {
	ports, err := o.ports()
	if err != nil {
		return nft.Config{}, err
	}
	mark, mask, err := parseMark(o.ctMark)
	if err != nil {
		return nft.Config{}, err
	}
	v4, v6, err := o.tproxyTargets()
	if err != nil {
		return nft.Config{}, err
	}
	return nft.Config{
		Intercept:      true,
		InterceptPorts: ports,
		TProxy4:        v4,
		TProxy6:        v6,
		CTMark:         mark,
		CTMask:         mask,
		FWMark:         uint32(o.fwMark),
		RouteTable:     o.routeTable,
	}, nil
}

func runCmd(args []string) error {
	var o options
	fs := newFlagSet("run", &o)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := o.logger(os.Stderr)
	if err != nil {
		return err
	}
	ncfg, err := o.nftConfig()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var fw *nft.Firewall
	m := metrics.New(reg, func() int {
		if fw == nil {
			return 0
		}
		return fw.Active()
	})
	ncfg.OnPinholeEnd = m.PinholeEnded

	// Listeners first: a port in use should fail before the ruleset changes.
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, addr := range o.listen.values {
		ln, err := proxy.Listen(ctx, addr, proxy.Transparent)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}

	fw, err = nft.New(ncfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := fw.Close(); err != nil {
			log.Error("removing the ruleset", "err", err)
		}
	}()

	srv := proxy.NewServer(proxy.Config{
		Mode:        proxy.Transparent,
		PinholeTTL:  o.pinholeTTL,
		DialTimeout: o.dialTimeout,
		Logger:      log,
		Observer:    m,
	}, fw)

	var ready atomic.Bool
	var httpSrv *http.Server
	if o.metricsListen != "" {
		mln, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen %s: %w", o.metricsListen, err)
		}
		httpSrv = &http.Server{Handler: metrics.Handler(reg, ready.Load), ReadHeaderTimeout: 5 * time.Second}
		go httpSrv.Serve(mln)
	}

	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil {
				log.Error("serving", "listener", ln.Addr(), "err", err)
			}
		}()
	}
	ready.Store(true)
	log.Info("ftpgate running", "version", version, "listen", o.listen.String(),
		"intercept_ports", o.interceptPorts.String(), "metrics", o.metricsListen, "ct_mark", o.ctMark)

	<-ctx.Done()
	log.Info("shutting down")
	ready.Store(false)
	for _, ln := range lns {
		ln.Close()
	}
	wg.Wait()
	srv.Close()
	if httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		httpSrv.Shutdown(sctx)
		cancel()
	}
	return nil
}
