package e2e

// Transparent mode with clients the gateway masquerades towards the server:
// the server sees the gateway's server-side address on the control
// connection, so vsftpd (port_promiscuous=NO) accepts only a PORT/EPRT naming
// that address. ftpgate learns it (conntrack's reply tuple of its upstream
// connection, or --public-address), rewrites PORT/EPRT to it and a gateway
// port, and DNATs the server's connection back to the client.

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// MasqueradeRuleset masquerades everything leaving the gateway towards the
// server (IPv4 and IPv6).
const MasqueradeRuleset = `table ip masq
delete table ip masq
table ip masq {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "` + GwServerIf + `" masquerade
	}
}
table ip6 masq
delete table ip6 masq
table ip6 masq {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "` + GwServerIf + `" masquerade
	}
}
`

func TestMasqueradedClientsActive(t *testing.T) {
	requireLabEnv(t)
	requireFtpgate(t)
	t.Parallel()
	t.Run("learned", func(t *testing.T) {
		t.Parallel()
		testMasquerade(t)
	})
	t.Run("public-address", func(t *testing.T) {
		t.Parallel()
		testMasquerade(t, "--public-address", "") // filled in with the lab's address
	})
}

func testMasquerade(t *testing.T, ftpgateArgs ...string) {
	l := NewLab(t)
	l.HostFirewall(t, true)
	l.Nft(t, "masq.nft", MasqueradeRuleset)
	srv := l.StartVsftpd(t)
	for i, a := range ftpgateArgs {
		if a == "" && i > 0 && ftpgateArgs[i-1] == "--public-address" {
			ftpgateArgs[i] = l.GwServerIP4.String()
		}
	}
	g := l.StartFtpgate(t, ftpgateArgs...)

	// The masquerading works at all: vsftpd sees the gateway.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	if _, err := CurlGet(ctx, l.Client, l.ServerIP4, SmallFile, ModePASV); err != nil {
		cancel()
		t.Fatalf("passive transfer through the masquerading gateway: %v\n%s\n%s", err, tailString(g.LogText(), 3000), srv.Diag())
	}
	cancel()

	var cases []Case
	for _, c := range AllCases() {
		if c.Client.Name != "goftp" || !c.Mode.Active() {
			cases = append(cases, c)
		}
	}
	getMatrix(t, l, srv, g, cases, l.ServerIP)
	putMatrix(t, l, srv, g, "mput", []Mode{ModePORT, ModeEPRT}, l.ServerIP)

	expectNoLeftovers(t, l, 10*time.Second)
	for _, kind := range []string{"PORT", "EPRT"} {
		if v := g.MetricSum(t, "ftpgate_rewrites_total", map[string]string{"kind": kind}); v == 0 {
			t.Errorf("rewrites_total{kind=%q} = 0: PORT/EPRT of masqueraded clients not rewritten", kind)
		}
	}
	for _, kind := range []string{"227", "229"} {
		if v := g.MetricSum(t, "ftpgate_rewrites_total", map[string]string{"kind": kind}); v != 0 {
			t.Errorf("rewrites_total{kind=%q} = %v: passive replies need no rewrite in transparent mode", kind, v)
		}
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		series := fmt.Sprintf(`ftpgate_pinholes_closed_total{direction="active",family="%s",result="used"}`, fam)
		if v := g.Metric(t, series); v == 0 {
			t.Errorf("%s = 0", series)
		}
	}
	for _, reason := range []string{"bounce_address", "firewall_error", "cross_family", "ports_exhausted"} {
		if v := g.Metric(t, fmt.Sprintf(`ftpgate_refusals_total{reason="%s"}`, reason)); v != 0 {
			t.Errorf("refusals{%s} = %v during legitimate transfers", reason, v)
		}
	}
}
