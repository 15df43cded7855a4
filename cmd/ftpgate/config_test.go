package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/nft"
	"github.com/ftpgate/ftpgate/proxy"
)

func TestParseMark(t *testing.T) {
	tests := []struct {
		in         string
		mark, mask uint32
		ok         bool
	}{
		{"0x100/0x100", 0x100, 0x100, true},
		{"0x100", 0x100, 0x100, true},
		{"256/0xff00", 0x100, 0xff00, true},
		{"0x100/0x0ff", 0, 0, false}, // value outside the mask
		{"0/0", 0, 0, false},
		{"0/1", 0, 0, false}, // a zero value matches every unmarked connection
		{"banana", 0, 0, false},
		{"0x1/zz", 0, 0, false},
	}
	for _, tc := range tests {
		mark, mask, err := parseMark(tc.in)
		if (err == nil) != tc.ok || mark != tc.mark || mask != tc.mask {
			t.Errorf("parseMark(%q) = %#x, %#x, %v; want %#x, %#x, ok=%v", tc.in, mark, mask, err, tc.mark, tc.mask, tc.ok)
		}
	}
}

func TestListenAndPorts(t *testing.T) {
	var o options
	fs := newFlagSet("run", &o)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	v4, v6, err := o.tproxyTargets()
	if err != nil || v4 != netip.MustParseAddrPort("127.0.0.1:2121") || v6 != netip.MustParseAddrPort("[::1]:2121") {
		t.Fatalf("default targets = %v %v %v", v4, v6, err)
	}
	if err := fs.Parse([]string{"--listen", "10.77.0.1:2000", "--intercept-port", "21", "--intercept-port", "2121"}); err != nil {
		t.Fatal(err)
	}
	v4, v6, err = o.tproxyTargets()
	if err != nil || v4 != netip.MustParseAddrPort("10.77.0.1:2000") || v6.IsValid() {
		t.Fatalf("explicit --listen replaced the defaults badly: %v %v %v", v4, v6, err)
	}
	ports, err := o.ports()
	if err != nil || len(ports) != 2 || ports[1] != 2121 {
		t.Fatalf("ports = %v, %v", ports, err)
	}
	for _, bad := range [][]string{{"--listen", "nonsense"}, {"--listen", "127.0.0.1:1", "--listen", "127.0.0.2:2"}} {
		var o options
		fs := newFlagSet("run", &o)
		fs.Parse(bad)
		if _, _, err := o.tproxyTargets(); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	o.interceptPorts = listFlag{values: []string{"0"}}
	if _, err := o.ports(); err == nil {
		t.Error("port 0 accepted")
	}
}

func TestOptionPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/ftpgate.yaml"
	yaml := "pinhole-timeout: 45s\nidle-timeout: 1m\nmax-sessions: 10\ndeny-commands: [STOR, DELE]\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FTPGATE_IDLE_TIMEOUT", "2m")
	o, err := parseOptions("run", []string{"--config", file, "--max-sessions", "20"})
	if err != nil {
		t.Fatal(err)
	}
	if o.pinholeTTL != 45*time.Second {
		t.Errorf("pinhole-timeout = %v, want 45s from the file", o.pinholeTTL)
	}
	if o.idleTimeout != 2*time.Minute {
		t.Errorf("idle-timeout = %v, want 2m from the environment", o.idleTimeout)
	}
	if o.maxSessions != 20 {
		t.Errorf("max-sessions = %d, want 20 from the flag", o.maxSessions)
	}
	if got := o.denyCommands.values; len(got) != 2 || got[1] != "DELE" {
		t.Errorf("deny-commands = %v, want [STOR DELE]", got)
	}
	cfg, err := o.proxyConfig()
	if err != nil || cfg.MaxSessions != 20 || len(cfg.DenyCommands) != 2 {
		t.Fatalf("proxyConfig = %+v, %v", cfg, err)
	}

	if err := os.WriteFile(file, []byte("pinhole-timeuot: 1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := parseOptions("run", []string{"--config", file}); err == nil || !strings.Contains(err.Error(), "pinhole-timeuot") {
		t.Errorf("a misspelt key gave %v, want an error naming it", err)
	}
	t.Setenv("FTPGATE_TLS", "maybe")
	o, err = parseOptions("run", nil)
	if err == nil {
		_, err = o.proxyConfig()
	}
	if err == nil {
		t.Error("FTPGATE_TLS=maybe accepted")
	}
}

func TestReverseNeedsUpstreamAndListen(t *testing.T) {
	for _, args := range [][]string{
		{"--mode", "reverse", "--listen", "10.77.0.1:21"},
		{"--mode", "reverse", "--upstream", "ftp:21"},
		{"--mode", "sideways"},
	} {
		o, err := parseOptions("run", args)
		if err == nil {
			_, err = o.proxyConfig()
		}
		if err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// failingGate fails every Open with err, after cancelling the session's
// context when cancel is set (a session ending while its opening is queued).
type failingGate struct {
	err    error
	cancel context.CancelFunc
}

func (g failingGate) Open(context.Context, proxy.Flow, time.Duration) (proxy.Pinhole, error) {
	if g.cancel != nil {
		g.cancel()
	}
	return nil, g.err
}

func TestCountingGate(t *testing.T) {
	kernel := errors.New("nftables: add element: no buffer space")
	tests := []struct {
		name   string
		err    error
		cancel bool // the session's context ends during Open
		counts bool
	}{
		{"kernel refused", kernel, false, true},
		{"session ended meanwhile", kernel, true, false},
		{"session context cancelled", fmt.Errorf("nft: pinhole x: %w", context.Canceled), false, false},
		{"firewall closed (shutdown)", fmt.Errorf("open: %w", nft.ErrClosed), false, false},
		{"intercepted port (a refusal)", fmt.Errorf("nft: pinhole x: %w", nft.ErrInterceptPort), false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			g := failingGate{err: tc.err}
			if tc.cancel {
				g.cancel = cancel
			}
			var ops []string
			cg := countingGate{g, func(op string) { ops = append(ops, op) }}
			if _, err := cg.Open(ctx, proxy.Flow{}, time.Second); !errors.Is(err, tc.err) {
				t.Fatalf("Open = %v, want the gate's error %v", err, tc.err)
			}
			want := []string(nil)
			if tc.counts {
				want = []string{"open_pinhole"}
			}
			if !slices.Equal(ops, want) {
				t.Errorf("counted %v, want %v", ops, want)
			}
		})
	}
}

// TestValidate: every setting is checked the same way by run, run --dry-run,
// reload and check; nothing out of range is quietly replaced by a default.
func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		file    string // --config contents
		wantErr string // "" = valid
	}{
		{name: "defaults"},
		{name: "reverse", args: []string{"--mode", "reverse", "--upstream", "ftp:21", "--listen", "203.0.113.5:21"}},

		{name: "empty --listen", args: []string{"--listen", ""}, wantErr: "--listen is empty"},
		{name: "empty --listen list", args: []string{"--listen", ","}, wantErr: "--listen is empty"},
		{name: "empty FTPGATE_LISTEN", env: map[string]string{"FTPGATE_LISTEN": ""}, wantErr: "--listen is empty"},
		{name: "empty listen in the file", file: "listen: \"\"\n", wantErr: "--listen is empty"},
		{name: "empty listen list in the file", file: "listen: []\n", wantErr: "--listen is empty"},
		{name: "reverse, empty --listen", args: []string{"--mode", "reverse", "--upstream", "ftp:21", "--listen", ""}, wantErr: "--listen is empty"},
		{name: "empty --intercept-port", args: []string{"--intercept-port", ""}, wantErr: "--intercept-port is empty"},
		{name: "reverse ignores intercept ports", args: []string{"--mode", "reverse", "--upstream", "ftp:21", "--listen", "203.0.113.5:21", "--intercept-port", ""}},

		{name: "route table main", args: []string{"--route-table", "254"}, wantErr: "--route-table 254"},
		{name: "route table local", args: []string{"--route-table", "255"}, wantErr: "--route-table 255"},
		{name: "route table negative", args: []string{"--route-table", "-1"}, wantErr: "--route-table -1"},
		{name: "route table 0", args: []string{"--route-table", "0"}, wantErr: "--route-table 0"},
		{name: "route table too big", args: []string{"--route-table", "4294967295"}, wantErr: "--route-table 4294967295"},
		{name: "route table highest", args: []string{"--route-table", "4294967294"}},
		{name: "fwmark above 32 bits", args: []string{"--fwmark", "4294967297"}, wantErr: "--fwmark 4294967297"},
		{name: "fwmark 0", args: []string{"--fwmark", "0"}, wantErr: "--fwmark 0"},
		{name: "fwmark highest", args: []string{"--fwmark", "4294967295"}},

		{name: "max-sessions 0", args: []string{"--max-sessions", "0"}, wantErr: "--max-sessions 0"},
		{name: "max-sessions negative", args: []string{"--max-sessions", "-5"}, wantErr: "--max-sessions -5"},
		{name: "per-client 0", args: []string{"--max-sessions-per-client", "0"}, wantErr: "--max-sessions-per-client 0"},
		{name: "ports per client 0", args: []string{"--max-ports-per-client", "0"}, wantErr: "--max-ports-per-client 0"},
		{name: "pinhole-timeout 0", args: []string{"--pinhole-timeout", "0s"}, wantErr: "--pinhole-timeout 0s"},
		{name: "pinhole-timeout negative", args: []string{"--pinhole-timeout", "-1s"}, wantErr: "--pinhole-timeout -1s"},
		{name: "idle-timeout 0", args: []string{"--idle-timeout", "0s"}, wantErr: "--idle-timeout"},
		{name: "connect timeout 0", args: []string{"--upstream-connect-timeout", "0s"}, wantErr: "--upstream-connect-timeout"},
		{name: "shutdown-grace 0 closes at once", args: []string{"--shutdown-grace", "0s"}},
		{name: "shutdown-grace negative", args: []string{"--shutdown-grace", "-1s"}, wantErr: "--shutdown-grace -1s"},

		{name: "passive ports below 1024", args: []string{"--passive-ports", "1023-2000"}, wantErr: "want LO of 1024 or more"},
		{name: "passive ports from 1024", args: []string{"--passive-ports", "1024-2000"}},
		{name: "passive ports hold the listener", args: []string{"--passive-ports", "2000-3000"}, wantErr: "contains port 2121 of --listen"},
		{name: "passive ports hold an intercept port", args: []string{"--intercept-port", "50021"}, wantErr: "contains --intercept-port 50021"},
		{name: "reverse: passive ports hold the listener", args: []string{"--mode", "reverse", "--upstream", "ftp:21", "--listen", "203.0.113.5:50010"}, wantErr: "contains port 50010 of --listen"},

		{name: "dry-run in the file", file: "dry-run: true\n", wantErr: "dry-run is a command-line flag only"},
		{name: "FTPGATE_DRY_RUN", env: map[string]string{"FTPGATE_DRY_RUN": "true"}, wantErr: "dry-run is a command-line flag only"},
		{name: "key without a value in the file", file: "metrics-listen:\n", wantErr: "metrics-listen has no value"},
		{name: "metrics-listen off", file: "metrics-listen: \"\"\n"},
		{name: "metrics-listen without port", args: []string{"--metrics-listen", "localhost"}, wantErr: "--metrics-listen \"localhost\": want HOST:PORT"},
		{name: "metrics-listen bad port", args: []string{"--metrics-listen", "127.0.0.1:99999"}, wantErr: "--metrics-listen"},
		{name: "metrics-listen all addresses", args: []string{"--metrics-listen", ":9121"}},
		{name: "reverse: loopback upstream", args: []string{"--mode", "reverse", "--upstream", "127.0.0.1:21", "--listen", "203.0.113.5:21"}, wantErr: "--upstream \"127.0.0.1:21\" is a loopback address, but clients connect from outside (--listen 203.0.113.5:21)"},
		{name: "reverse: loopback upstream 127.0.0.2", args: []string{"--mode", "reverse", "--upstream", "127.0.0.2:2121", "--listen", "203.0.113.5:21"}, wantErr: "is a loopback address"},
		{name: "reverse: IPv6 loopback upstream", args: []string{"--mode", "reverse", "--upstream", "[::1]:21", "--listen", "203.0.113.5:21"}, wantErr: "is a loopback address"},
		{name: "reverse: IPv4-mapped loopback upstream", args: []string{"--mode", "reverse", "--upstream", "[::ffff:127.0.0.1]:21", "--listen", "203.0.113.5:21"}, wantErr: "is a loopback address"},
		{name: "reverse: localhost upstream", args: []string{"--mode", "reverse", "--upstream", "LocalHost:21", "--listen", "203.0.113.5:21"}, wantErr: "is a loopback address"},
		{name: "reverse: localhost. upstream", args: []string{"--mode", "reverse", "--upstream", "localhost.:21", "--listen", "203.0.113.5:21"}, wantErr: "is a loopback address"},
		{name: "reverse: loopback upstream, listener on all addresses", args: []string{"--mode", "reverse", "--upstream", "127.0.0.1:21", "--listen", "0.0.0.0:21"}, wantErr: "is a loopback address, but clients connect from outside (--listen 0.0.0.0:21)"},
		{name: "reverse: loopback upstream, one listener outside", args: []string{"--mode", "reverse", "--upstream", "[::1]:21", "--listen", "127.0.0.1:2100,[2001:db8::5]:21"}, wantErr: "(--listen [2001:db8::5]:21)"},
		// Clients on this host itself (scripts/check-deploy.sh) may use one.
		{name: "reverse: loopback upstream and listener", args: []string{"--mode", "reverse", "--upstream", "127.0.0.1:2100", "--listen", "127.0.0.1:21"}},
		{name: "reverse: upstream on this host's interface", args: []string{"--mode", "reverse", "--upstream", "10.0.0.1:21", "--listen", "203.0.113.5:21"}},
		{name: "wildcard listener in transparent mode", args: []string{"--listen", "0.0.0.0:2121"}, wantErr: "not a wildcard"},
		{name: "IPv6 wildcard listener in transparent mode", args: []string{"--listen", "[::]:2121"}, wantErr: "not a wildcard"},
		{name: "mapped wildcard listener in transparent mode", args: []string{"--listen", "[::ffff:0.0.0.0]:2121"}, wantErr: "not a wildcard"},
		{name: "empty item in a list in the file", file: "deny-commands: [STOR, ~]\n", wantErr: "deny-commands has an empty item"},
		{name: "upstream in transparent mode", args: []string{"--upstream", "ftp.internal:21"}, wantErr: "--upstream \"ftp.internal:21\" is for --mode reverse"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErr: "--log-level"},
		// Refused by nft's own checks (nft.Config.Validate), every problem
		// named, on one line.
		{name: "listener port 0", args: []string{"--listen", "127.0.0.1:0"}, wantErr: "nft: invalid config: tproxy IPv4 listener 127.0.0.1:0 must be an IPv4 address with a non-zero port"},
		{name: "IPv6 listener port 0", args: []string{"--listen", "[::1]:0"}, wantErr: "nft: invalid config: tproxy IPv6 listener [::1]:0"},
		{name: "both listeners port 0", args: []string{"--listen", "127.0.0.1:0,[::1]:0"}, wantErr: "non-zero port; tproxy IPv6 listener [::1]:0 must be"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := tc.args
			if tc.file != "" {
				file := filepath.Join(t.TempDir(), "ftpgate.yaml")
				if err := os.WriteFile(file, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append([]string{"--config", file}, args...)
			}
			o, err := parseOptions("run", args)
			if err == nil {
				_, _, err = o.validate()
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("%v: %v", args, err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("%v accepted, want an error with %q", args, tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("%v: %v, want an error with %q", args, err, tc.wantErr)
			}
		})
	}
}

func TestRestartOnly(t *testing.T) {
	running, err := parseOptions("run", nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want []string
	}{
		{nil, nil},
		{[]string{"--max-sessions", "5", "--deny-commands", "STOR", "--pinhole-timeout", "5s", "--tls", "passthrough"}, nil},
		{[]string{"--log-level", "debug", "--max-sessions", "5"}, []string{"--log-level"}},
		{[]string{"--listen", "127.0.0.1:2121"}, []string{"--listen"}},
		{[]string{"--ct-mark", "0x200", "--intercept-port", "2121", "--status-endpoint=false"}, []string{"--ct-mark", "--intercept-port", "--status-endpoint"}},
		{[]string{"--fwmark", "2", "--route-table", "200", "--shutdown-grace", "1s"}, []string{"--fwmark", "--route-table", "--shutdown-grace"}},
	}
	for _, tc := range tests {
		o, err := parseOptions("run", tc.args)
		if err != nil {
			t.Fatal(err)
		}
		if got := restartOnly(running, o); !slices.Equal(got, tc.want) {
			t.Errorf("%v: restartOnly = %v, want %v", tc.args, got, tc.want)
		}
	}
}
