package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ftpgate/ftpgate/metrics"
	"github.com/ftpgate/ftpgate/nft"
	"github.com/ftpgate/ftpgate/proxy"
)

func runCmd(args []string) error {
	// Signals first. Until a handler is registered, SIGHUP's default action
	// ends the process, and systemd counts death by SIGHUP as a clean exit:
	// Restart=on-failure would then leave the gateway down after a reload
	// sent during start-up. Signals that arrive during start-up wait here:
	// a SIGHUP rereads the config once running, a SIGTERM stops the daemon.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	o, err := parseOptions("run", args)
	if err != nil {
		return err
	}
	pcfg, ncfg, err := o.validate()
	if err != nil {
		return err
	}
	if o.dryRun {
		fmt.Print(nft.Ruleset(ncfg))
		return nil
	}
	if o.sysmonPoll && !sysmonPolls(os.Getenv("GODEBUG")) {
		// Before anything is opened: the new image inherits descriptors.
		return execWithSysmonPoll(sigs)
	}
	log, err := o.logger(os.Stderr)
	if err != nil {
		return err
	}
	setProcs(o.procs, o.procsSet)
	if o.nice != 0 {
		if err := setNice(o.nice); err != nil {
			return err
		}
	}
	if o.rtPriority != 0 {
		if err := setRealtime(o.rtPriority); err != nil {
			return err
		}
	}
	var rt realtimeGuard
	if err := rt.start(log, rtBudget); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// /metrics is served from before fw and srv exist: what reads them waits
	// for wired, set once both are (an atomic, so the reads see them).
	var fw *nft.Firewall
	var srv *proxy.Server
	var ready, wired atomic.Bool
	m := metrics.New(reg, metrics.Options{Mode: o.mode, Version: version, Realtime: rt.on.Load,
		ActivePinholes:   onceWired(&wired, func() int { return fw.Active() }),
		LostEvents:       onceWired(&wired, func() uint64 { return fw.LostEvents() }),
		RacedConnections: onceWired(&wired, func() uint64 { return fw.RacedConnections() }),
		EventsListening:  onceWired(&wired, func() bool { return fw.EventsListening() }),
	})
	ncfg.OnPinholeEnd = func(f proxy.Flow, end nft.PinholeEnd) { m.PinholeEnded(f, end.String()) }
	ncfg.OnDataEnd = m.DataConnectionEnded

	// Listeners first: a port in use should fail before the ruleset changes.
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, addr := range o.listen.values {
		ln, err := proxy.Listen(context.Background(), addr, pcfg.Mode)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}
	// The HTTP endpoint answers from here on: /healthz while the process
	// lives, /readyz 503 until the table and listeners are up (and again
	// while draining), /status 503 until there are sessions to report.
	var httpSrv *http.Server
	if o.metricsListen != "" {
		mln, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen %s: %w", o.metricsListen, err)
		}
		var status func() any // nil: no /status
		if o.statusEndpoint {
			status = func() any {
				return statusReport{Version: version, Mode: o.mode, Sessions: srv.Snapshot(),
					PinholesActive: fw.Active(), Pinholes: fw.Pinholes()}
			}
		}
		httpSrv = &http.Server{
			Handler: statusOnceWired(metrics.Handler(reg, ready.Load, status), wired.Load, status != nil),
			// A scraper that stops reading or idles must not hold a
			// descriptor (they share LimitNOFILE with the sessions).
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       time.Minute,
		}
		go httpSrv.Serve(mln)
		defer httpSrv.Close() // a failed start; a clean stop shuts it down first
	}

	if ncfg.Intercept {
		// nft.New replaces these (and refuses someone else's, or a second
		// ftpgate's); say so.
		if pr, err := nft.InspectPolicyRouting(ncfg); err == nil && len(pr.Leftovers) > 0 {
			log.Warn("ftpgate's policy routing is already there, left by an earlier run that was killed: replacing it; it is deleted on exit",
				"found", strings.Join(pr.Leftovers, "; "))
		}
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
	enableConntrackAccounting(log)

	pcfg.Logger, pcfg.Observer, pcfg.SourceNAT = log, m, fw.SourceAddress
	srv = proxy.NewServer(pcfg, countingGate{fw, m.NFTError})
	wired.Store(true) // after srv and fw are set: /status reads them

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
	sdNotify(log, daemon.SdNotifyReady)
	log.Info("ftpgate running", "version", version, "mode", o.mode, "listen", o.listen.String(), "upstream", o.upstream,
		"intercept_ports", o.interceptPorts.String(), "metrics", o.metricsListen, "ct_mark", o.ctMark,
		"sysmon_poll", sysmonPolls(os.Getenv("GODEBUG")))

	sig := waitForStop(sigs, func() { reload(args, o, srv, log) })
	sdNotify(log, daemon.SdNotifyStopping)
	log.Info("shutting down: new clients get a 421; open sessions may finish (a second signal closes them now)", "signal", sig, "grace", o.shutdownGrace)
	ready.Store(false)
	// The listeners stay open through the drain, so that a new client hears
	// why at once. Closed, they would leave it waiting: in transparent mode
	// the tproxy rule still takes its SYN, and no reset comes for an address
	// that is not the gateway's; its retries would reach the server unproxied
	// once the table is gone.
	drain(srv, o.shutdownGrace, sigs, log)
	for _, ln := range lns {
		ln.Close()
	}
	wg.Wait()
	if httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		httpSrv.Shutdown(sctx)
		cancel()
	}
	return nil
}

// waitForStop calls reload for each SIGHUP and returns the first other
// signal.
func waitForStop(sigs <-chan os.Signal, reload func()) os.Signal {
	for sig := range sigs {
		if sig != syscall.SIGHUP {
			return sig
		}
		reload()
	}
	return nil
}

// drainer is the part of proxy.Server that drain needs.
type drainer interface {
	Shutdown(ctx context.Context)
}

// drain lets open sessions finish for grace, then closes them. A second
// SIGINT or SIGTERM closes them at once: an operator who asks twice wants
// the daemon gone now, not after the grace period.
func drain(srv drainer, grace time.Duration, sigs <-chan os.Signal, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	done := make(chan struct{})
	go func() {
		srv.Shutdown(ctx)
		close(done)
	}()
	for {
		select {
		case <-done:
			return
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				log.Info("SIGHUP ignored: shutting down")
				continue
			}
			log.Warn("second signal: closing the remaining sessions now", "signal", sig)
			cancel()
		}
	}
}

// sdNotify tells systemd (Type=notify) the daemon's state; without
// $NOTIFY_SOCKET, outside systemd, it does nothing.
func sdNotify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("cannot notify systemd", "state", state, "err", err)
	}
}

// reload rereads flags, environment and the config file, checks them as run
// does, and applies what can change while running (limits, policy,
// timeouts) to new sessions. Settings that need a restart are named in a
// warning rather than passed over in silence.
func reload(args []string, running *options, srv *proxy.Server, log *slog.Logger) {
	o, err := parseOptions("run", args)
	var cfg proxy.Config
	if err == nil {
		cfg, _, err = o.validate()
	}
	if err == nil {
		old := srv.Config()
		cfg.Logger, cfg.Observer, cfg.SourceNAT = old.Logger, old.Observer, old.SourceNAT
		err = srv.Reload(cfg)
	}
	if err != nil {
		log.Error("reload failed; keeping the running configuration", "err", err)
		return
	}
	if changed := restartOnly(running, o); len(changed) > 0 {
		log.Warn("configuration reloaded for new sessions, except settings that need a restart (systemctl restart ftpgate); they keep their running values",
			"restart_needed", strings.Join(changed, " "))
		return
	}
	log.Info("configuration reloaded; new sessions use it")
}

// enableConntrackAccounting turns on the kernel's per-connection byte counters
// in this network namespace: ftpgate_data_bytes_total comes from them.
func enableConntrackAccounting(log *slog.Logger) {
	const path = "/proc/sys/net/netfilter/nf_conntrack_acct"
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "1" {
		return
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		log.Warn("conntrack accounting is off: data byte counters stay at zero; set net.netfilter.nf_conntrack_acct=1 (deploy/systemd/ftpgate-sysctl.conf)", "err", err)
	}
}

// onceWired returns f's value once wired is set, the zero value before.
func onceWired[T any](wired *atomic.Bool, f func() T) func() T {
	return func() T {
		var zero T
		if !wired.Load() {
			return zero
		}
		return f()
	}
}

// statusOnceWired answers /status, when served at all, with 503 until
// wired reports that the sessions and pinholes it reports exist; everything
// else goes to h.
func statusOnceWired(h http.Handler, wired func() bool, served bool) http.Handler {
	if !served {
		return h // its 404 tells 'ftpgate status' to ask for --status-endpoint
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/status" && !wired() {
			http.Error(w, "starting\n", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}
