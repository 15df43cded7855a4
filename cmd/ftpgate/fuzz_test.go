package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftpgate/ftpgate/nft"
)

func FuzzParseMark(f *testing.F) {
	for _, s := range []string{"0x100/0x100", "0x100", "256/0xff00", "0x100/0x0ff", "0/0", "0x1/zz", "0b1/0o1", "/", "1/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mark, mask, err := parseMark(s)
		if err != nil {
			if mark != 0 || mask != 0 || !strings.HasPrefix(err.Error(), "--ct-mark ") {
				t.Fatalf("parseMark(%q) = %#x, %#x, %v", s, mark, mask, err)
			}
			return
		}
		if mark == 0 || mask == 0 || mark&^mask != 0 {
			t.Fatalf("parseMark(%q) = %#x, %#x: the value must be non-zero bits inside the mask", s, mark, mask)
		}
	})
}

// FuzzConfigFile feeds arbitrary --config files through everything the daemon
// does with settings before it touches the kernel. Any file is either refused
// with an error naming the setting or validates and yields a ruleset that
// renders.
func FuzzConfigFile(f *testing.F) {
	for _, s := range []string{
		"pinhole-timeout: 45s\nidle-timeout: 1m\nmax-sessions: 10\ndeny-commands: [STOR, DELE]\n",
		"mode: reverse\nupstream: 10.77.2.2:21\nlisten: [10.77.1.1:21, '[fd77::1]:21']\npassive-ports: 50000-50099\n",
		"ct-mark: 0x100/0x0ff\n",
		"intercept-port: [21, 0]\n",
		"listen: {a: b}\n",
		"config: other.yaml\n",
		"- a\n- b\n",
		"nice: -21\nprocs: -1\n",
		"log-format: xml\n",
		"{",
		"listen: []\nroute-table: 254\nfwmark: 4294967297\n",
		"dry-run: true\n",
		"passive-ports: 1000-3000\nmax-sessions: 0\n",
	} {
		f.Add([]byte(s))
	}
	file := filepath.Join(f.TempDir(), "ftpgate.yaml")
	f.Fuzz(func(t *testing.T, doc []byte) {
		if err := os.WriteFile(file, doc, 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := parseOptions("run", []string{"--config", file})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "--config ") {
				t.Fatalf("config error does not name --config: %v", err)
			}
			return
		}
		_, ncfg, err := o.validate()
		if err != nil {
			return
		}
		if rs := nft.Ruleset(ncfg); !strings.Contains(rs, "table inet ftpgate") {
			t.Fatalf("ruleset for a valid config lacks the table:\n%s", rs)
		}
	})
}
