package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ftpgate/ftpgate/nft"
	"github.com/ftpgate/ftpgate/proxy"
)

// options are the settings shared by run and check.
type options struct {
	mode               string
	upstream           string
	publicAddress      listFlag
	passivePorts       string
	serverPassivePorts string
	listen             listFlag
	metricsListen      string
	logFormat          string
	logLevel           string
	interceptPorts     listFlag
	pinholeTTL         time.Duration
	dialTimeout        time.Duration
	ctMark             string
	fwMark             uint
	routeTable         int

	configFile           string
	dryRun               bool
	maxSessions          int
	maxSessionsPerClient int
	maxPortsPerClient    int
	idleTimeout          time.Duration
	shutdownGrace        time.Duration
	denyCommands         listFlag
	anonymousOnly        bool
	tls                  string
	nice                 int
	rtPriority           int
	procs                int
	procsSet             bool // --procs was given (flag, environment or config file)
	sysmonPoll           bool
	statusEndpoint       bool

	// values holds every flag's final value as text, so that a reload can
	// tell which settings changed.
	values map[string]string
}

// listFlag is a repeatable flag; the first explicit use replaces the default.
type listFlag struct {
	values []string
	set    bool
}

func (l *listFlag) String() string { return strings.Join(l.values, ",") }
func (l *listFlag) Set(v string) error {
	if !l.set {
		l.values, l.set = nil, true
	}
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			l.values = append(l.values, part)
		}
	}
	return nil
}

func newFlagSet(name string, o *options) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	o.listen = listFlag{values: []string{"127.0.0.1:2121", "[::1]:2121"}}
	o.interceptPorts = listFlag{values: []string{"21"}}
	fs.StringVar(&o.mode, "mode", "transparent", "transparent (a routed gateway intercepts FTP) or reverse (protect one --upstream server)")
	fs.StringVar(&o.upstream, "upstream", "", "reverse mode: the FTP server, HOST:PORT (a host name resolves per session)")
	fs.Var(&o.publicAddress, "public-address", "address clients reach ftpgate at (reverse; default: the address they connected to) or clients appear with behind the gateway's NAT (transparent; default: learned from conntrack); one IPv4 and one IPv6 (repeatable)")
	fs.StringVar(&o.passivePorts, "passive-ports", "50000-50999", "gateway ports for NAT'ed data connections: the only range the public side exposes in reverse mode")
	fs.StringVar(&o.serverPassivePorts, "server-passive-ports", "", "refuse 227/229 replies whose port is outside LO-HI (the range the server is configured with)")
	fs.Var(&o.listen, "listen", "transparent: where the tproxy rules divert control connections (one IPv4, one IPv6); reverse: the public address to serve, e.g. 203.0.113.5:21 (repeatable)")
	fs.StringVar(&o.metricsListen, "metrics-listen", "127.0.0.1:9121", "address serving /metrics, /healthz, /readyz and /status (empty: off)")
	fs.BoolVar(&o.statusEndpoint, "status-endpoint", true, "serve /status on --metrics-listen: live sessions with client and server addresses and user names, and open pinholes (what 'ftpgate status' shows); false leaves only /metrics, /healthz and /readyz")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.Var(&o.interceptPorts, "intercept-port", "TCP port of FTP control connections to intercept (repeatable)")
	fs.DurationVar(&o.pinholeTTL, "pinhole-timeout", 30*time.Second, "how long a negotiated data connection stays allowed if unused")
	fs.DurationVar(&o.dialTimeout, "upstream-connect-timeout", 10*time.Second, "timeout for connecting to the FTP server and receiving its greeting")
	fs.StringVar(&o.ctMark, "ct-mark", "0x100/0x100", "conntrack mark/mask set on admitted connections (the host firewall accepts it)")
	fs.UintVar(&o.fwMark, "fwmark", 1, "packet mark that routes intercepted packets to the local listener (1-4294967295; no other policy routing may use it)")
	fs.IntVar(&o.routeTable, "route-table", 100, "routing table for the fwmark policy route (1-4294967294 except 253-255; a table nothing else uses)")
	fs.StringVar(&o.configFile, "config", "", "YAML file of flag settings (keys are flag names); flags and FTPGATE_* variables override it; SIGHUP rereads it")
	fs.BoolVar(&o.dryRun, "dry-run", false, "check every setting, print the nftables ruleset that would be installed and exit (status 1 if a setting is invalid)")
	fs.IntVar(&o.maxSessions, "max-sessions", 1024, "control sessions open at once; more get 421")
	fs.IntVar(&o.maxSessionsPerClient, "max-sessions-per-client", 32, "control sessions open at once per client address (IPv6: per /64)")
	fs.IntVar(&o.maxPortsPerClient, "max-ports-per-client", 64, "ports of --passive-ports held at once for one client address (IPv6: one /64) by data connections it negotiated and has not used yet; more get 425 (a few addresses must not take the whole range)")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 5*time.Minute, "close a control connection whose client sends no complete command for this long (unless a reply is awaited)")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long open sessions may finish before they are closed")
	fs.Var(&o.denyCommands, "deny-commands", "FTP verbs refused with 550, e.g. STOR,DELE,RNFR,RNTO,MKD,RMD,APPE,STOU for a read-only gateway (repeatable)")
	fs.BoolVar(&o.anonymousOnly, "anonymous-only", false, "refuse logins other than anonymous/ftp")
	fs.IntVar(&o.procs, "procs", 1, "threads running Go code at once (GOMAXPROCS; 0: one per CPU). One suits a control-channel proxy: each line is microseconds of work and the data stays in the kernel, and one thread avoids waking others per line; raise it for thousands of new sessions per second. Unset, a GOMAXPROCS environment variable wins (read at start only)")
	fs.IntVar(&o.nice, "nice", 0, "scheduling priority of the daemon's threads, -20 (most favourable) to 19; 0 leaves it as started (read at start only)")
	fs.IntVar(&o.rtPriority, "rt-priority", 0, "run the daemon's threads at this real-time priority (SCHED_RR, 1-99; 0: as started). Under load it keeps pinhole openings in the sub-millisecond range; a thread busy for "+rtBudget.String()+" without pause drops the daemon back to normal scheduling (read at start only)")
	fs.BoolVar(&o.sysmonPoll, "sysmon-poll", false, "keep the Go runtime's monitor thread polling (every 10 ms at most) while the daemon is idle instead of sleeping until a system call wakes it, which happens a few times per session: about a quarter less CPU per session, for ~100 wakeups a second when idle; for gateways with more than a few new sessions a second. ftpgate executes itself again with GODEBUG="+sysmonPollGODEBUG+" (on a host up longer than 24.8 days the runtime then prints a SCHED line to stderr at start, and one every 24.8 days; a fatal error prints its scheduler state) (read at start only)")
	fs.StringVar(&o.tls, "tls", "refuse", "AUTH TLS: refuse (clients fall back to plain FTP) or passthrough (relay the encrypted channel blind; no data pinholes)")
	return fs
}

// parseOptions reads settings in order of precedence: flags, then FTPGATE_*
// environment variables, then the --config file, then defaults.
func parseOptions(name string, args []string) (*options, error) {
	o := &options{}
	fs := newFlagSet(name, o)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q; flags start with --", fs.Arg(0))
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	var errs []string
	fs.VisitAll(func(f *flag.Flag) {
		env := "FTPGATE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !explicit[f.Name] {
			// Like the config file, the environment of a unit or a pod must
			// not turn the daemon into a command that prints and exits.
			if f.Name == "dry-run" {
				errs = append(errs, env+" is not read: dry-run is a command-line flag only; unset it and run 'ftpgate run --dry-run'")
				return
			}
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", env, v, err))
			}
			explicit[f.Name] = true
		}
	})
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "; "))
	}
	if o.configFile != "" {
		if err := applyConfigFile(fs, o.configFile, explicit); err != nil {
			return nil, err
		}
	}
	fs.Visit(func(f *flag.Flag) { o.procsSet = o.procsSet || f.Name == "procs" })
	o.values = map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { o.values[f.Name] = f.Value.String() })
	return o, nil
}

// applyConfigFile sets every flag the file names that was not set otherwise.
func applyConfigFile(fs *flag.FlagSet, path string, explicit map[string]bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	for key, val := range doc {
		f := fs.Lookup(key)
		if f == nil || key == "config" {
			return fmt.Errorf("--config %s: unknown setting %q (keys are flag names, e.g. pinhole-timeout)", path, key)
		}
		// The daemon's own file must not turn it into a command that prints
		// and exits (systemd would count that as a clean stop).
		if key == "dry-run" {
			return fmt.Errorf("--config %s: dry-run is a command-line flag only: remove it from the file and run 'ftpgate run --config %s --dry-run'", path, path)
		}
		if explicit[key] {
			continue
		}
		// "key:" with nothing after it is YAML's null, which fmt would
		// spell "<nil>"; an empty value is written "".
		if val == nil {
			return fmt.Errorf("--config %s: %s has no value: write %s: \"\" for an empty one, or remove the key for the default", path, key, key)
		}
		values := []any{val}
		if list, ok := val.([]any); ok {
			values = list
			if len(list) == 0 {
				// An empty list is the empty value: it must replace the
				// default, not silently keep it (listen: [] is refused).
				values = []any{""}
			}
		}
		for _, v := range values {
			if v == nil {
				return fmt.Errorf("--config %s: %s has an empty item (~ or nothing after \"- \"): remove it", path, key)
			}
			if err := fs.Set(key, fmt.Sprint(v)); err != nil {
				return fmt.Errorf("--config %s: %s: %v", path, key, err)
			}
		}
	}
	return nil
}

// validate checks every setting the way the daemon uses it and returns the
// protocol and firewall sides' configurations. run, run --dry-run, reload
// (SIGHUP) and check all go through it, so that a config --dry-run accepts is
// one the daemon starts with.
func (o *options) validate() (proxy.Config, nft.Config, error) {
	if _, err := o.logger(io.Discard); err != nil {
		return proxy.Config{}, nft.Config{}, err
	}
	if o.metricsListen != "" {
		_, port, err := net.SplitHostPort(o.metricsListen)
		if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil {
			return proxy.Config{}, nft.Config{}, fmt.Errorf("--metrics-listen %q: want HOST:PORT such as 127.0.0.1:9121, or \"\" to turn it off", o.metricsListen)
		}
	}
	pcfg, err := o.proxyConfig()
	if err != nil {
		return pcfg, nft.Config{}, err
	}
	ncfg, err := o.nftConfig()
	if err != nil {
		return pcfg, ncfg, err
	}
	// What nftConfig did not catch, nft's own checks (the ones New makes)
	// still do. They name every problem, one per line: one line here.
	if err := ncfg.Validate(); err != nil {
		return pcfg, ncfg, errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return pcfg, ncfg, nil
}

// proxyConfig reads the protocol-side settings.
func (o *options) proxyConfig() (proxy.Config, error) {
	var cfg proxy.Config
	if o.procs < 0 {
		return cfg, fmt.Errorf("--procs %d: want 0 (one per CPU) or more", o.procs)
	}
	if o.nice < -20 || o.nice > 19 {
		return cfg, fmt.Errorf("--nice %d: want -20 (most favourable) to 19", o.nice)
	}
	if o.rtPriority < 0 || o.rtPriority > 99 {
		return cfg, fmt.Errorf("--rt-priority %d: want 1 (lowest real-time priority) to 99, or 0 to leave the scheduling as started", o.rtPriority)
	}
	switch o.mode {
	case "transparent":
		cfg.Mode = proxy.Transparent
		// A reverse-mode config without its mode line would otherwise give a
		// transparent gateway diverting to the public address, without a word.
		if o.upstream != "" {
			return cfg, fmt.Errorf("--upstream %q is for --mode reverse (protect one server); transparent mode relays to whatever server each client dials: set --mode reverse, or remove --upstream", o.upstream)
		}
		// A wildcard listener would also take connections made to the
		// gateway's own addresses on its port, which ftpgate would then dial
		// again through itself, session inside session.
		for _, l := range o.listen.values {
			if ap, err := netip.ParseAddrPort(l); err == nil && ap.Addr().Unmap().IsUnspecified() {
				return cfg, fmt.Errorf("--listen %s: transparent mode diverts to one specific local address per family (default 127.0.0.1:2121 and [::1]:2121), not a wildcard", l)
			}
		}
	case "reverse":
		cfg.Mode = proxy.Reverse
		if o.upstream == "" {
			return cfg, fmt.Errorf("--mode reverse needs --upstream HOST:PORT, the FTP server to protect")
		}
		host, _, err := net.SplitHostPort(o.upstream)
		if err != nil {
			return cfg, fmt.Errorf("--upstream %q: want HOST:PORT such as ftp.internal:21", o.upstream)
		}
		if !o.listen.set {
			return cfg, fmt.Errorf("--mode reverse needs --listen PUBLIC-IP:21, the address clients connect to")
		}
		// Passive data connections from outside are DNAT'ed to the
		// upstream's address: the kernel drops them when that is a loopback
		// address (a martian destination), after they consumed the pinhole.
		// Only clients on this host itself (a loopback --listen) can use one.
		if a, err := netip.ParseAddr(host); (err == nil && a.Unmap().IsLoopback()) || strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
			for _, l := range o.listen.values {
				if ap, err := netip.ParseAddrPort(l); err != nil || !ap.Addr().Unmap().IsLoopback() {
					return cfg, fmt.Errorf("--upstream %q is a loopback address, but clients connect from outside (--listen %s): the kernel will not DNAT their data connections to 127.0.0.0/8 or ::1 — for an FTP server on this host, give the address of one of its interfaces (and let the server listen there)", o.upstream, l)
				}
			}
		}
	default:
		return cfg, fmt.Errorf("--mode %q: want transparent or reverse", o.mode)
	}
	// Without a listener the daemon would install its interception rules,
	// divert FTP to nowhere and still report ready.
	if len(o.listen.values) == 0 {
		return cfg, errors.New("--listen is empty: give at least one IP:PORT (transparent: where intercepted connections are diverted, default 127.0.0.1:2121 and [::1]:2121; reverse: the public address, e.g. 203.0.113.5:21)")
	}
	// Zero and negative values used to become the defaults without a word;
	// none of these settings documents a meaning for them.
	for _, c := range []struct {
		bad bool
		msg string
	}{
		{o.pinholeTTL <= 0, fmt.Sprintf("--pinhole-timeout %v: want a positive duration such as 30s", o.pinholeTTL)},
		{o.dialTimeout <= 0, fmt.Sprintf("--upstream-connect-timeout %v: want a positive duration such as 10s", o.dialTimeout)},
		{o.idleTimeout <= 0, fmt.Sprintf("--idle-timeout %v: want a positive duration such as 5m", o.idleTimeout)},
		{o.shutdownGrace < 0, fmt.Sprintf("--shutdown-grace %v: want 0 (close sessions at once) or a positive duration such as 10s", o.shutdownGrace)},
		{o.maxSessions <= 0, fmt.Sprintf("--max-sessions %d: want 1 or more", o.maxSessions)},
		{o.maxSessionsPerClient <= 0, fmt.Sprintf("--max-sessions-per-client %d: want 1 or more", o.maxSessionsPerClient)},
		{o.maxPortsPerClient <= 0, fmt.Sprintf("--max-ports-per-client %d: want 1 or more", o.maxPortsPerClient)},
	} {
		if c.bad {
			return cfg, errors.New(c.msg)
		}
	}
	cfg.Upstream = o.upstream
	for _, v := range o.publicAddress.values {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return cfg, fmt.Errorf("--public-address %q: want an IP address", v)
		}
		for _, b := range cfg.PublicAddresses {
			if b.Is4() == a.Unmap().Is4() {
				return cfg, fmt.Errorf("--public-address %s and %s: give at most one IPv4 and one IPv6 address", b, a)
			}
		}
		cfg.PublicAddresses = append(cfg.PublicAddresses, a.Unmap())
	}
	var err error
	if cfg.PassivePorts, err = proxy.ParsePortRange(o.passivePorts); err != nil {
		return cfg, fmt.Errorf("--passive-ports: %w", err)
	}
	if err := o.checkPassivePorts(cfg.PassivePorts); err != nil {
		return cfg, err
	}
	if o.serverPassivePorts != "" {
		if cfg.ServerPassivePorts, err = proxy.ParsePortRange(o.serverPassivePorts); err != nil {
			return cfg, fmt.Errorf("--server-passive-ports: %w", err)
		}
	}
	cfg.PinholeTTL = o.pinholeTTL
	cfg.DialTimeout = o.dialTimeout
	cfg.MaxSessions = o.maxSessions
	cfg.MaxSessionsPerClient = o.maxSessionsPerClient
	cfg.MaxPortsPerClient = o.maxPortsPerClient
	cfg.IdleTimeout = o.idleTimeout
	cfg.DenyCommands = o.denyCommands.values
	cfg.AnonymousOnly = o.anonymousOnly
	if cfg.TLS, err = proxy.ParseTLSPolicy(o.tls); err != nil {
		return cfg, fmt.Errorf("--tls: %w", err)
	}
	return cfg, nil
}

// checkPassivePorts keeps the gateway's data ports apart from everything
// else: ports below 1024 belong to services (ftpgate never opens a data
// port below 1024 anywhere else either), and a port ftpgate listens on or
// intercepts would have control connections and data pinholes compete for it.
func (o *options) checkPassivePorts(r proxy.PortRange) error {
	if r.Lo < 1024 {
		return fmt.Errorf("--passive-ports %s: want LO of 1024 or more; ports below 1024 are never data ports", r)
	}
	for _, l := range o.listen.values {
		_, port, err := net.SplitHostPort(l)
		if p, err2 := strconv.ParseUint(port, 10, 16); err == nil && err2 == nil && r.Contains(uint16(p)) {
			return fmt.Errorf("--passive-ports %s contains port %d of --listen %s: move the range or the listener apart", r, p, l)
		}
	}
	if o.mode != "reverse" { // reverse mode intercepts nothing
		ports, _ := o.ports() // nftConfig reports a bad port
		for _, p := range ports {
			if r.Contains(p) {
				return fmt.Errorf("--passive-ports %s contains --intercept-port %d: move the range apart from the intercepted ports", r, p)
			}
		}
	}
	return nil
}

// nftConfig reads the firewall-side settings.
func (o *options) nftConfig() (nft.Config, error) {
	ports, err := o.ports()
	if err != nil {
		return nft.Config{}, err
	}
	if len(ports) == 0 && o.mode != "reverse" {
		return nft.Config{}, errors.New("--intercept-port is empty: give at least one TCP port of FTP control connections to intercept, such as 21")
	}
	mark, mask, err := parseMark(o.ctMark)
	if err != nil {
		return nft.Config{}, err
	}
	// nft would turn 0 into its default; a uint flag is 64 bits wide and
	// the conversion below would silently keep the low 32.
	if o.fwMark == 0 || o.fwMark > math.MaxUint32 {
		return nft.Config{}, fmt.Errorf("--fwmark %d: want 1 to 4294967295, a packet mark no other policy routing on this host uses", o.fwMark)
	}
	if o.routeTable <= 0 || int64(o.routeTable) > math.MaxUint32-1 || (o.routeTable >= 253 && o.routeTable <= 255) {
		return nft.Config{}, fmt.Errorf("--route-table %d: want a routing table nothing else uses, 1 to 4294967294 except 253-255 (default, main, local), such as 100", o.routeTable)
	}
	v4, v6, err := o.tproxyTargets()
	if err != nil {
		return nft.Config{}, err
	}
	return nft.Config{
		Intercept:      o.mode != "reverse",
		InterceptPorts: ports,
		TProxy4:        v4,
		TProxy6:        v6,
		CTMark:         mark,
		CTMask:         mask,
		FWMark:         uint32(o.fwMark),
		RouteTable:     o.routeTable,
	}, nil
}

// reloadable names the settings a reload (SIGHUP) applies, to new sessions:
// the ones proxy.Server.Reload takes. Every other setting needs a restart.
var reloadable = map[string]bool{
	"public-address": true, "server-passive-ports": true, "pinhole-timeout": true,
	"upstream-connect-timeout": true, "max-sessions": true, "max-sessions-per-client": true,
	"idle-timeout": true, "deny-commands": true, "anonymous-only": true, "tls": true,
	// Not settings of the daemon: the same command line names the same file.
	"config": true, "dry-run": true,
}

// restartOnly lists, as flags, the settings that differ between the running
// daemon's options and o but that a reload cannot apply.
func restartOnly(running, o *options) []string {
	var changed []string
	for name, v := range o.values {
		if !reloadable[name] && running.values[name] != v {
			changed = append(changed, "--"+name)
		}
	}
	slices.Sort(changed)
	return changed
}

func (o *options) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
}

// parseMark reads "value/mask" or "value" (mask = value), in hex or decimal.
func parseMark(s string) (mark, mask uint32, err error) {
	v, m, found := strings.Cut(s, "/")
	mv, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("--ct-mark %q: %v; want VALUE/MASK such as 0x100/0x100", s, err)
	}
	mk := mv
	if found {
		if mk, err = strconv.ParseUint(m, 0, 32); err != nil {
			return 0, 0, fmt.Errorf("--ct-mark %q: mask: %v", s, err)
		}
	}
	// A zero value would match every unmarked connection as ftpgate's.
	if mv == 0 || mv&^mk != 0 {
		return 0, 0, fmt.Errorf("--ct-mark %q: the value must be non-zero bits inside the mask", s)
	}
	return uint32(mv), uint32(mk), nil
}

func (o *options) ports() ([]uint16, error) {
	var ps []uint16
	for _, v := range o.interceptPorts.values {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("--intercept-port %q: want a TCP port 1-65535", v)
		}
		ps = append(ps, uint16(p))
	}
	return ps, nil
}

// tproxyTargets picks the IPv4 and IPv6 listener addresses the interception
// rules divert to.
func (o *options) tproxyTargets() (v4, v6 netip.AddrPort, err error) {
	for _, l := range o.listen.values {
		ap, err := netip.ParseAddrPort(l)
		if err != nil {
			return v4, v6, fmt.Errorf("--listen %q: want IP:PORT such as 127.0.0.1:2121 or [::1]:2121", l)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if ap.Addr().Is4() && !v4.IsValid() {
			v4 = ap
		} else if ap.Addr().Is6() && !v6.IsValid() {
			v6 = ap
		} else {
			return v4, v6, fmt.Errorf("--listen %q: at most one IPv4 and one IPv6 listener", l)
		}
	}
	return v4, v6, nil
}
