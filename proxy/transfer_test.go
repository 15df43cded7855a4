package proxy

import (
	"strings"
	"testing"
)

func TestSizeFrom150(t *testing.T) {
	for line, want := range map[string]int64{
		"150 Opening BINARY mode data connection for random.bin (1048576 bytes).": 1048576,
		"150 Opening BINARY mode data connection for a (b) (0 bytes).":            0,
		"150 Here comes the directory listing.":                                   -1,
		"150 Opening (x bytes)":                                                   -1,
		"150 Opening (-5 bytes)":                                                  -1,
		"150 (":                                                                   -1,
	} {
		if got := sizeFrom150(line); got != want {
			t.Errorf("sizeFrom150(%q) = %d, want %d", line, got, want)
		}
	}
}

func TestSessionLogsTransfers(t *testing.T) {
	h := newHarness(t, "", func(cmd string) string {
		switch cmd {
		case "RETR big.iso":
			return "150 Opening BINARY mode data connection for big.iso (1234 bytes).\r\n226 Transfer complete.\r\n"
		case "STOR up.txt":
			return "150 Ok to send data.\r\n226 Transfer complete.\r\n"
		}
		return defaultRespond(cmd)
	})
	h.send("USER anonymous", "PASS hunter2", "RETR big.iso", "STOR up.txt", "QUIT")
	for _, want := range []string{"331", "230", "150", "226", "150", "226", "221"} {
		h.expect(want)
	}
	if !waitLog(h, "session end") {
		t.Fatalf("no session end line:\n%s", h.logs)
	}
	logs := h.logs.String()
	for _, want := range []string{"user=anonymous", "big.iso", "download", "1234", "up.txt", "upload"} {
		if !strings.Contains(logs, want) {
			t.Errorf("session log lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "hunter2") {
		t.Error("password logged")
	}
}

// waitLog waits until the session log contains s; false if it never does.
func waitLog(h *harness, s string) bool {
	return eventually(func() bool { return strings.Contains(h.logs.String(), s) })
}
