package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/ftpgate/ftpgate/nft"
)

// checkCmd prints what the gateway needs and whether it has it; ok is false
// when something must be fixed before 'ftpgate run' works. It validates the
// settings exactly as run does first, so that a config check passes also
// means the daemon accepts the config.
func checkCmd(args []string, w io.Writer) (ok bool, err error) {
	o, err := parseOptions("check", args)
	if err != nil {
		return false, err
	}
	_, cfg, err := o.validate()
	if err != nil {
		return false, err
	}
	ok = true
	for _, f := range nft.Check(cfg) {
		if f.OK && f.Warn {
			fmt.Fprintf(w, "warn %s\n", f.What)
			continue
		}
		ok = report(w, f.OK, f.What, f.Fix) && ok
	}
	if cfg.Intercept {
		ok = checkRouting(w, cfg) && ok
	}
	return ok, nil
}

// report prints one finding and returns ok.
func report(w io.Writer, ok bool, what, fix string) bool {
	mark := "ok  "
	if !ok {
		mark = "FAIL"
	}
	fmt.Fprintf(w, "%s %s\n", mark, what)
	if !ok && fix != "" {
		fmt.Fprintf(w, "     fix: %s\n", fix)
	}
	return ok
}

// checkRouting reports whether the fwmark and the route table are free for
// ftpgate's policy routing.
func checkRouting(w io.Writer, cfg nft.Config) bool {
	pr, err := nft.InspectPolicyRouting(cfg)
	if err != nil {
		return report(w, false, "cannot read policy routing: "+err.Error(), "run on Linux with rtnetlink (ip rule, ip route work)")
	}
	ok := true
	for _, c := range pr.Conflicts {
		ok = report(w, false, c, nft.RoutingConflictFix(cfg))
	}
	if len(pr.Held) > 0 {
		// Checked on a running gateway, they are its own.
		report(w, true, "policy routing in place, held by the running ftpgate: "+strings.Join(pr.Held, "; "), "")
		return ok
	}
	for _, l := range pr.Leftovers {
		fmt.Fprintf(w, "warn %s: ftpgate's policy routing (tagged proto 70): left by an ftpgate that was killed (a running one's would be a conflict above); ftpgate replaces it at start and deletes it on exit\n", l)
	}
	if ok && len(pr.Leftovers) == 0 {
		report(w, true, fmt.Sprintf("policy routing: no ip rule uses fwmark %#x, route table %d is empty", cfg.FWMark, cfg.RouteTable), "")
	}
	return ok
}
