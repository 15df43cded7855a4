package e2e

// Self tests of the lab, without ftpgate: they prove that the harness, the
// clients and vsftpd work (routed, no firewall), that the default-drop host
// firewall really blocks every data connection (the "without ftpgate it
// fails" baseline), and that the in-kernel FTP helper makes them pass again
// (the comparison baseline for ftpgate).

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLabRoutedNoFirewall(t *testing.T) {
	requireLabEnv(t)
	t.Parallel()
	l := NewLab(t)
	srv := l.StartVsftpd(t)
	want := srv.Files[RandomFile]

	t.Run("get", func(t *testing.T) {
		RunMatrix(t, AllCases(), 6, func(ctx context.Context, c Case) ([]byte, error) {
			return c.Client.Get(ctx, l.Client, l.ServerIP(c.Family), RandomFile, c.Mode)
		}, func(t *testing.T, c Case, r Result) {
			if r.Err != nil {
				t.Fatalf("%v\n%s", r.Err, srv.Diag())
			}
			if !bytes.Equal(r.Data, want) {
				t.Fatalf("got %d bytes, want %d (content differs)", len(r.Data), len(want))
			}
			t.Logf("%d bytes in %v", len(r.Data), r.Elapsed.Round(time.Millisecond))
		})
	})

	t.Run("put", func(t *testing.T) {
		for _, f := range Families {
			for _, m := range Modes {
				for _, put := range []struct {
					name string
					fn   func(context.Context, *NS, netip.Addr, string, []byte, Mode) error
				}{{"curl", CurlPut}, {"python", PythonPut}} {
					t.Run(fmt.Sprintf("%s/%s/ipv%d", put.name, m, f), func(t *testing.T) {
						name := fmt.Sprintf("%s-%s-%d.bin", put.name, m, f)
						data := want[:64<<10]
						ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
						defer cancel()
						err := put.fn(ctx, l.Client, l.ServerIP(f), name, data, m)
						if IsUnsupported(err) {
							t.Skip(err)
						}
						if err != nil {
							t.Fatalf("%v\n%s", err, srv.Diag())
						}
						got, err := srv.Uploaded(name)
						if err != nil || !bytes.Equal(got, data) {
							t.Fatalf("uploaded file: %d bytes, err %v; want %d bytes", len(got), err, len(data))
						}
					})
				}
			}
		}
	})
}

func TestLabDefaultDropBlocksData(t *testing.T) {
	requireLabEnv(t)
	t.Parallel()
	l := NewLab(t)
	l.HostFirewall(t, true)
	srv := l.StartVsftpd(t)

	t.Run("control", func(t *testing.T) {
		for _, f := range Families {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			size, err := GoFTPLogin(ctx, l.Client, l.ServerIP(f), RandomFile)
			cancel()
			if err != nil {
				t.Fatalf("ipv%d: control connection through the host firewall: %v\n%s", f, err, srv.Diag())
			}
			if size != int64(len(srv.Files[RandomFile])) {
				t.Fatalf("ipv%d: SIZE %d, want %d", f, size, len(srv.Files[RandomFile]))
			}
		}
	})

	t.Run("data", func(t *testing.T) {
		RunMatrix(t, AllCases(), 8, func(ctx context.Context, c Case) ([]byte, error) {
			return c.Client.Get(ctx, l.Client, l.ServerIP(c.Family), SmallFile, c.Mode)
		}, func(t *testing.T, c Case, r Result) {
			if r.Err == nil {
				t.Fatalf("transfer succeeded through a default-drop firewall (%d bytes)", len(r.Data))
			}
			// Clients fail on their own network timeouts (connect, accept,
			// read); one ended by its overall bound instead hung.
			if IsHung(r.Err) {
				t.Errorf("blocked transfer hung until the client's overall bound (after %v): %v", r.Elapsed.Round(time.Millisecond), r.Err)
			}
			if strings.Contains(r.Err.Error(), "never sent") || strings.Contains(r.Err.Error(), "also sent") {
				t.Errorf("failed for the wrong reason: %v", r.Err)
			}
			t.Logf("failed as expected after %v: %.200s", r.Elapsed.Round(time.Millisecond), r.Err)
		})
	})

	// The drops must be the firewall's doing: the same lab without it works.
	t.Run("sanity-after-flush", func(t *testing.T) {
		l.Gateway.Run(t, "nft", "delete", "table", "inet", "host")
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		got, err := CurlGet(ctx, l.Client, l.ServerIP4, SmallFile, ModePASV)
		if err != nil || !bytes.Equal(got, srv.Files[SmallFile]) {
			t.Fatalf("after removing the host firewall: %q, %v", got, err)
		}
	})
}

func TestLabKernelHelper(t *testing.T) {
	requireLabEnv(t)
	t.Parallel()
	l := NewLab(t)
	opts := HostFirewallOpts{CtMarkLine: true, KernelHelper: true}
	check := filepath.Join(l.Dir, "helper-check.nft")
	if err := os.WriteFile(check, []byte(HostRuleset(opts)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := l.Gateway.Cmd(ctx, "nft", "-c", "-f", check).CombinedOutput(); err != nil {
		t.Skipf("kernel FTP helper not usable (nf_conntrack_ftp): %v: %s", err, out)
	}
	l.HostFirewallWith(t, opts)
	srv := l.StartVsftpd(t)
	want := srv.Files[RandomFile]

	RunMatrix(t, AllCases(), 6, func(ctx context.Context, c Case) ([]byte, error) {
		return c.Client.Get(ctx, l.Client, l.ServerIP(c.Family), RandomFile, c.Mode)
	}, func(t *testing.T, c Case, r Result) {
		if r.Err != nil {
			t.Fatalf("%v\n%s", r.Err, srv.Diag())
		}
		if !bytes.Equal(r.Data, want) {
			t.Fatalf("got %d bytes, want %d (content differs)", len(r.Data), len(want))
		}
	})

	// The data connections were admitted as RELATED by the helper.
	out := l.Conntrack(t, "-L", "-o", "extended")
	if !strings.Contains(out, "helper=ftp") {
		t.Errorf("no conntrack entry with helper=ftp:\n%s", out)
	}
}
