package nft

import (
	"net/netip"
	"strings"
	"testing"
)

// TestConfigValidate: Validate accepts what the defaults complete and
// refuses, naming each problem, what New and Ruleset refuse.
func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string // one line per problem; nil = valid
	}{
		{name: "zero value (all defaults)", cfg: Config{}},
		{name: "only an IPv6 listener", cfg: Config{Intercept: true, TProxy6: netip.MustParseAddrPort("[::1]:3000")}},
		{name: "mark outside its mask", cfg: Config{CTMark: 0x300, CTMask: 0x100}, want: []string{"ct mark 0x300 has bits outside the ct mask 0x100"}},
		{name: "port 0", cfg: Config{InterceptPorts: []uint16{21, 0}}, want: []string{"intercept port 0"}},
		{name: "system route table", cfg: Config{RouteTable: 254}, want: []string{"route table 254 is one of the system tables"}},
		{name: "two problems", cfg: Config{TProxy4: netip.MustParseAddrPort("[::1]:2121"), RouteTable: -1},
			want: []string{"tproxy IPv4 listener [::1]:2121", "route table -1 is out of range"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want an error with %q", tc.want)
			}
			lines := strings.Split(strings.TrimPrefix(err.Error(), "nft: invalid config: "), "\n")
			if !strings.HasPrefix(err.Error(), "nft: invalid config: ") || len(lines) != len(tc.want) {
				t.Fatalf("Validate = %q, want \"nft: invalid config: \" and %d line(s)", err, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("line %d = %q, want %q in it", i+1, lines[i], w)
				}
			}
			// Ruleset refuses the same configs.
			if rs := Ruleset(tc.cfg); !strings.HasPrefix(rs, "# nft: invalid config") {
				t.Errorf("Ruleset accepted a config Validate refuses: %.80q", rs)
			}
		})
	}
}
