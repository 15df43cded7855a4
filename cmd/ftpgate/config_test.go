package main

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

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

type failingGate struct{}

func (failingGate) Open(context.Context, proxy.Flow, time.Duration) (proxy.Pinhole, error) {
	return nil, errors.New("netlink: no buffer space")
}

func TestCountingGate(t *testing.T) {
	var ops []string
	g := countingGate{failingGate{}, func(op string) { ops = append(ops, op) }}
	if _, err := g.Open(context.Background(), proxy.Flow{}, time.Second); err == nil {
		t.Fatal("error swallowed")
	}
	if len(ops) != 1 || ops[0] != "open_pinhole" {
		t.Fatalf("counted %v, want [open_pinhole]", ops)
	}
}
