package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// options are the settings shared by run and check.
type options struct {
	listen         listFlag
	metricsListen  string
	logFormat      string
	logLevel       string
	interceptPorts listFlag
	pinholeTTL     time.Duration
	dialTimeout    time.Duration
	ctMark         string
	fwMark         uint
	routeTable     int
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
	fs.Var(&o.listen, "listen", "address the tproxy rules divert control connections to (repeatable; one IPv4 and one IPv6)")
	fs.StringVar(&o.metricsListen, "metrics-listen", "127.0.0.1:9121", "address serving /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.Var(&o.interceptPorts, "intercept-port", "TCP port of FTP control connections to intercept (repeatable)")
	fs.DurationVar(&o.pinholeTTL, "pinhole-timeout", 30*time.Second, "how long a negotiated data connection stays allowed if unused")
	fs.DurationVar(&o.dialTimeout, "upstream-connect-timeout", 10*time.Second, "timeout for connecting to the FTP server")
	fs.StringVar(&o.ctMark, "ct-mark", "0x100/0x100", "conntrack mark/mask set on admitted connections (the host firewall accepts it)")
	fs.UintVar(&o.fwMark, "fwmark", 1, "packet mark that routes intercepted packets to the local listener")
	fs.IntVar(&o.routeTable, "route-table", 100, "routing table for the fwmark policy route")
	return fs
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
	if mk == 0 || mv&^mk != 0 {
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
