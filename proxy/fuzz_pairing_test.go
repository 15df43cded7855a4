package proxy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pairingShapes are the ways the server of FuzzReplyPairing answers a
// command: each ends in exactly one final reply, tagged t<n> with the number
// of the command the server received, except the over-long one, whose text
// ftpgate replaces.
var pairingShapes = []string{
	"200 t%d\r\n",
	"150 go\r\n226 t%d\r\n",
	"211-x\r\n 227 Entering Passive Mode (127,0,0,1,195,80)\r\n211 t%d\r\n",
	"214-" + strings.Repeat("a", 5000) + "\r\n214 t%d\r\n",
	"150 " + strings.Repeat("b", 5000) + "\r\n226 t%d\r\n",
	"200 " + strings.Repeat("c", 5000) + " t%d\r\n",
}

var pairingTag = regexp.MustCompile(` t(\d+)$`)

// FuzzReplyPairing: with a server that answers every command it receives
// with exactly one final reply, the client gets exactly one final reply per
// command line it sent, and the server's in the order the server got them
// (ftpgate's own answers stand in for the commands it kept).
func FuzzReplyPairing(f *testing.F) {
	f.Add([]byte("USER a\nPASV\nHELP\nNOOP\nSTAT\nRETR x\n"), []byte{0, 1, 2, 3, 4, 5})
	f.Add([]byte("EPSV ALL\nPASV\nREIN\nPASV\nPORT 127,0,0,1,195,80\nEPRT |1|127.0.0.1|50000|\n"), []byte{0, 3})
	f.Add([]byte("AUTH TLS\nPBSZ 0\nFOO\tBAR\n x\n\nRETR a\n200 not a command\nLPRT 1\n"), []byte{1, 4})
	f.Add([]byte("NOOP "+strings.Repeat("x", 5000)+"\nNOOP\nABOR\n"), []byte{5})
	f.Fuzz(func(t *testing.T, script, shapes []byte) {
		var cmds []string
		for _, line := range strings.Split(string(script), "\n") {
			line = strings.Map(func(r rune) rune {
				if r < 0x20 || r > 0x7e {
					return -1 // printable ASCII only: the Telnet layer is FuzzLineReader's
				}
				return r
			}, line)
			if verb, _ := ParseCommand(line); verb == "QUIT" || len(cmds) == 40 {
				continue // QUIT ends the session
			}
			cmds = append(cmds, line)
		}
		if len(shapes) == 0 {
			shapes = []byte{0}
		}
		received := 0
		h := newHarness(t, "", func(string) string {
			shape := pairingShapes[int(shapes[received%len(shapes)])%len(pairingShapes)]
			received++
			return fmt.Sprintf(shape, received)
		})
		h.send(cmds...)

		var finals []string
		multi := "" // "ddd " ends the multi-line reply in progress
		// Generous: a bound exceeded under the fuzzer's own load would be
		// saved as a crasher that does not reproduce.
		h.client.SetReadDeadline(time.Now().Add(30 * time.Second))
		for len(finals) < len(cmds) {
			line, err := h.r.ReadString('\n')
			if err != nil {
				t.Fatalf("%d commands %q: got %d final replies %q, then %v\nlog:\n%s", len(cmds), cmds, len(finals), finals, err, h.logs.String())
			}
			line = strings.TrimRight(line, "\r\n")
			switch {
			case multi != "":
				if strings.HasPrefix(line, multi) {
					multi = ""
					finals = append(finals, line)
				}
			case len(line) >= 4 && line[3] == '-':
				multi = line[:3] + " "
			case strings.HasPrefix(line, "1"):
				// preliminary
			default:
				finals = append(finals, line)
			}
		}
		// The i-th final reply, if the server's, answers the i-th command.
		got := h.server.received()
		last := 0
		for i, r := range finals {
			if m := pairingTag.FindStringSubmatch(r); m != nil {
				n, _ := strconv.Atoi(m[1])
				if n <= last || n > len(got) || got[n-1] != cmds[i] {
					t.Fatalf("commands %q: final reply %d is %q, the server's answer to %q (its command %d of %q)", cmds, i, r, got[min(n, len(got))-1], n, got)
				}
				last = n
			}
		}
		// Nothing more: one final reply per command.
		h.client.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if extra, err := h.r.ReadString('\n'); err == nil {
			t.Fatalf("commands %q: a reply more than commands sent: %q after %q", cmds, extra, finals)
		}
	})
}
