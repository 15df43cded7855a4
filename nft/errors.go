package nft

import (
	"errors"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/proxy"
)

// ErrClosed is returned by Open after Close.
var ErrClosed = errors.New("nft: firewall is closed")

// ErrInterceptPort is returned (wrapped) by Open in transparent mode for a
// pinhole whose port is one of Config.InterceptPorts: the tproxy rule
// diverts every connection to such a port of a foreign address to
// ftpgate's listener, before any pinhole rule sees it. It is the proxy's
// ErrInterceptedPort, so that sessions count a refusal, not a failure.
var ErrInterceptPort = proxy.ErrInterceptedPort

// hint says what to do about a netlink error, or "" if there is nothing
// specific to say.
func hint(err error) string {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "run as root or with CAP_NET_ADMIN"
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT):
		return "the kernel lacks nf_tables (CONFIG_NF_TABLES) — load the nf_tables module or use a kernel with it"
	case errors.Is(err, unix.EOPNOTSUPP):
		return "the kernel does not support an expression or set type ftpgate needs — run `ftpgate check` to see which"
	case errors.Is(err, unix.ENFILE):
		return "the pinhole set is full (too many outstanding data connections) — retry later or lower the pinhole ttl"
	case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
		return "the kernel could not allocate memory or buffer space for the netlink request — retry; if it persists, check the host's free memory"
	}
	return ""
}

// opError reads "<subsystem>: <what>: <cause>[ — <what to do>]" and unwraps
// to the underlying error (so errors.Is(err, unix.EPERM) works).
type opError struct {
	msg string
	err error
}

func (e *opError) Error() string { return e.msg }
func (e *opError) Unwrap() error { return e.err }

// wrap formats "nftables: <what>: <cause> — <hint>".
func wrap(subsystem, what string, err error) error {
	return wrapHint(subsystem, what, err, hint(err))
}

func wrapHint(subsystem, what string, err error, h string) error {
	msg := subsystem + ": " + what + ": " + cause(err)
	if h != "" {
		msg += " — " + h
	}
	return &opError{msg: msg, err: err}
}

// cause trims the netlink plumbing from err's text: google/nftables reports
// "receive: NFT_MSG_NEWRULE: netlink receive: operation not supported".
func cause(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "receive: ")
	return strings.ReplaceAll(s, "netlink receive: ", "")
}
