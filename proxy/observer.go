package proxy

import "time"

// Reason names why ftpgate refused something. The set is closed so that metric
// labels stay bounded.
type Reason string

const (
	ReasonBounce        Reason = "bounce_address"    // PORT/EPRT names another host than the client
	ReasonServerAddress Reason = "server_address"    // 227 names another host than the server
	ReasonLowPort       Reason = "low_port"          // data port below 1024
	ReasonSyntax        Reason = "syntax"            // malformed PORT/EPRT/227/229
	ReasonByteRange     Reason = "byte_range"        // a PORT/227 number above 255
	ReasonFamily        Reason = "family"            // EPRT protocol/address family mismatch
	ReasonUnsolicited   Reason = "unsolicited_reply" // a reply with no pending command
	ReasonUnpaired      Reason = "unpaired_reply"    // 227/229 answering something else than PASV/EPSV
	ReasonLineTooLong   Reason = "line_too_long"     // a line above the cap
	ReasonControlChars  Reason = "control_chars"     // NUL or a lone CR inside a command
	ReasonUnsupported   Reason = "unsupported"       // LPRT, LPSV
	ReasonEPSVAll       Reason = "epsv_all"          // PORT/EPRT/PASV after EPSV ALL
	ReasonTLS           Reason = "tls"               // AUTH TLS/SSL refused; passthrough: AUTH not answered within the idle timeout
	ReasonFirewall      Reason = "firewall_error"    // the Gate failed to open
	ReasonUpstream      Reason = "upstream_error"    // the server could not be reached
	ReasonLoop          Reason = "loop"              // a connection to ftpgate's own listener
	ReasonNoPorts       Reason = "ports_exhausted"   // no free port in --passive-ports
	ReasonServerPorts   Reason = "server_port_range" // 227/229 outside --server-passive-ports
	ReasonCrossFamily   Reason = "cross_family"      // client and server speak different IP versions
	ReasonShutdown      Reason = "shutting_down"     // a connection while ftpgate stops
	ReasonMaxSessions   Reason = "max_sessions"      // --max-sessions reached
	ReasonMaxPerClient  Reason = "max_sessions_per_client"
	ReasonIdle          Reason = "idle_timeout"      // no complete command within --idle-timeout
	ReasonPendingCap    Reason = "pending_openings"  // an unused opening revoked for a newer one
	ReasonDenied        Reason = "denied_command"    // --deny-commands
	ReasonNotAnonymous  Reason = "not_anonymous"     // --anonymous-only
	ReasonWrongSide     Reason = "wrong_direction"   // a reply from the client or a command from the server
	ReasonBadVerb       Reason = "bad_verb"          // a verb that is not 3-8 letters/digits (first a letter), then a space or the line's end
	ReasonPipeline      Reason = "pipeline_overflow" // more than maxPipelined commands awaiting replies
	ReasonWriteFailed   Reason = "write_failed"      // a peer stopped reading: a write to it timed out or failed
	ReasonClientPorts   Reason = "client_ports"      // a client address holds its share of --passive-ports
	ReasonInterceptPort Reason = "intercept_port"    // the data port is one the gateway intercepts (--intercept-port)
)

// Reasons lists every Reason, for pre-initialising metric series.
var Reasons = []Reason{
	ReasonBounce, ReasonServerAddress, ReasonLowPort, ReasonSyntax, ReasonByteRange,
	ReasonFamily, ReasonUnsolicited, ReasonUnpaired, ReasonLineTooLong, ReasonControlChars,
	ReasonUnsupported, ReasonEPSVAll, ReasonTLS, ReasonFirewall, ReasonUpstream, ReasonLoop,
	ReasonNoPorts, ReasonServerPorts, ReasonCrossFamily, ReasonShutdown, ReasonMaxSessions,
	ReasonMaxPerClient, ReasonIdle, ReasonPendingCap, ReasonDenied, ReasonNotAnonymous, ReasonWrongSide,
	ReasonBadVerb, ReasonPipeline, ReasonWriteFailed, ReasonClientPorts, ReasonInterceptPort,
}

// Observer receives the session events that metrics count. The metrics
// package implements it; a nil Observer in Config means none.
type Observer interface {
	SessionStarted()
	SessionEnded(d time.Duration)
	Command(verb string)
	Reply(code int)
	Rewrite(kind string)
	Refused(r Reason)
	PinholeOpened(f Flow, latency time.Duration)
	// TLS counts AUTH TLS/SSL requests by what was done: "refused" or "passthrough".
	TLS(action string)
	// UpstreamRedial counts a second connection to a server that had not
	// started its greeting in time (see dialGreeted).
	UpstreamRedial()
}

type nopObserver struct{}

func (nopObserver) SessionStarted()                   {}
func (nopObserver) SessionEnded(time.Duration)        {}
func (nopObserver) Command(string)                    {}
func (nopObserver) Reply(int)                         {}
func (nopObserver) Rewrite(string)                    {}
func (nopObserver) Refused(Reason)                    {}
func (nopObserver) PinholeOpened(Flow, time.Duration) {}
func (nopObserver) TLS(string)                        {}
func (nopObserver) UpstreamRedial()                   {}
