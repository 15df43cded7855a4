package e2e

// Transparent mode with clients the gateway masquerades towards the server:
// the server sees the gateway's server-side address on the control
// connection, so vsftpd (port_promiscuous=NO) accepts only a PORT/EPRT naming
// that address. ftpgate learns it (conntrack's reply tuple of its upstream
// connection, or --public-address), rewrites PORT/EPRT to it and a gateway
// port, and DNATs the server's connection back to the client.

import (
	"bytes"
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
	want := srv.Files[RandomFile]

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
	t.Run("get", func(t *testing.T) {
		RunMatrix(t, cases, 6, func(ctx context.Context, c Case) ([]byte, error) {
			return c.Client.Get(ctx, l.Client, l.ServerIP(c.Family), RandomFile, c.Mode)
		}, func(t *testing.T, c Case, r Result) {
			if r.Err != nil {
				t.Fatalf("%v\nftpgate log:\n%s\n%s", r.Err, tailString(g.LogText(), 3000), srv.Diag())
			}
			if !bytes.Equal(r.Data, want) {
				t.Fatalf("got %d bytes, want %d (content differs)", len(r.Data), len(want))
			}
		})
	})
	t.Run("put", func(t *testing.T) {
		for _, f := range Families {
			for _, m := range []Mode{ModePORT, ModeEPRT} {
				t.Run(fmt.Sprintf("curl/%s/ipv%d", m, f), func(t *testing.T) {
					name := fmt.Sprintf("mput-%s-%d.bin", m, f)
					data := want[:256<<10]
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					err := CurlPut(ctx, l.Client, l.ServerIP(f), name, data, m)
					if IsUnsupported(err) {
						t.Skip(err)
					}
					if err != nil {
						t.Fatalf("%v\nftpgate log:\n%s\n%s", err, tailString(g.LogText(), 3000), srv.Diag())
					}
					if got, err := srv.Uploaded(name); err != nil || !bytes.Equal(got, data) {
						t.Fatalf("uploaded: %d bytes, %v; want %d bytes", len(got), err, len(data))
					}
				})
			}
		}
	})

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
