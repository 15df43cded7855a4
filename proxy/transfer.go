package proxy

import (
	"strconv"
	"strings"
	"time"
)

// maxLoggedTransfers bounds what a session keeps for its end-of-session log.
const maxLoggedTransfers = 100

// Transfer is one file or listing transfer, as the control channel shows it.
type Transfer struct {
	File      string `json:"file"`
	Direction string `json:"direction"` // download, upload or listing
	Bytes     int64  `json:"bytes"`     // from the server's 150 reply; -1 if it did not say
	Duration  string `json:"duration"`
	Reply     int    `json:"reply"` // the final reply code (226 on success)
}

// transferDirection names what a command transfers, "" for other commands.
func transferDirection(verb string) string {
	switch verb {
	case "RETR":
		return "download"
	case "STOR", "STOU", "APPE":
		return "upload"
	case "LIST", "NLST", "MLSD":
		return "listing"
	}
	return ""
}

// sizeFrom150 reads "(1234 bytes)" from a 150 reply, as vsftpd and others
// announce a download's size; -1 when absent.
func sizeFrom150(line string) int64 {
	open := strings.LastIndexByte(line, '(')
	if open < 0 {
		return -1
	}
	num, rest, ok := strings.Cut(line[open+1:], " ")
	if !ok || !strings.HasPrefix(rest, "bytes") {
		return -1
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// transferDone records a finished transfer command.
func (s *session) transferDone(p pendingCmd, code int) {
	if len(s.transfers) >= maxLoggedTransfers {
		s.moreTransfers++
		return
	}
	s.transfers = append(s.transfers, Transfer{
		File: p.arg, Direction: transferDirection(p.verb), Bytes: p.size,
		Duration: time.Since(p.start).Round(time.Millisecond).String(), Reply: code,
	})
}
