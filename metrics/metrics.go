// Package metrics holds ftpgate's Prometheus collectors and its HTTP endpoint.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftpgate/ftpgate/proxy"
)

const namespace = "ftpgate"

// knownVerbs bounds the verb label: anything else is counted as "other".
var knownVerbs = []string{
	"USER", "PASS", "ACCT", "CWD", "CDUP", "QUIT",
	"REIN", "PORT", "PASV", "TYPE", "STRU", "MODE",
	"RETR", "STOR", "STOU", "APPE", "ALLO", "REST",
	"RNFR", "RNTO", "ABOR", "DELE", "RMD", "MKD",
	"PWD", "LIST", "NLST", "SITE", "SYST", "STAT",
	"HELP", "NOOP", "FEAT", "OPTS", "EPRT", "EPSV",
	"LPRT", "LPSV", "AUTH", "PBSZ", "PROT", "SIZE",
	"MDTM", "MLSD", "MLST", "XPWD", "XCWD", "XMKD",
	"XRMD", "CCC", "HOST", "LANG", "CLNT",
}

// openLatencyBuckets are the bounds of pinhole_open_latency_seconds: fine
// below 1 ms (the target), with bounds exactly at 1 ms and at 10 ms
// (FtpgateSlowPinholes alerts on the share above the le="0.01" bucket), so
// that neither is read by interpolating inside a bucket.
var openLatencyBuckets = []float64{
	50e-6, 100e-6, 200e-6, 300e-6, 400e-6, 500e-6, 700e-6,
	0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
	0.1, 0.25, 0.5, 1,
}

// Metrics implements proxy.Observer and counts the firewall's pinhole lifecycle.
type Metrics struct {
	sessions        prometheus.Counter
	sessionsActive  prometheus.Gauge
	sessionDuration prometheus.Histogram
	commands        *prometheus.CounterVec
	replies         *prometheus.CounterVec
	rewrites        *prometheus.CounterVec
	refusals        *prometheus.CounterVec
	pinholesOpened  *prometheus.CounterVec
	pinholesEnded   *prometheus.CounterVec
	openLatency     prometheus.Histogram
	tls             *prometheus.CounterVec
	upstreamFailed  prometheus.Counter
	upstreamRedials prometheus.Counter
	nftErrors       *prometheus.CounterVec
	dataConns       *prometheus.CounterVec
	dataBytes       *prometheus.CounterVec
	// Resolved once: commands and replies are counted on every line.
	byVerb  map[string]prometheus.Counter
	byClass [5]prometheus.Counter
}

// Options describe the daemon the metrics belong to.
type Options struct {
	Mode             string        // "transparent" or "reverse": the mode label of session metrics
	Version          string        // for ftpgate_build_info
	ActivePinholes   func() int    // source of the open-pinholes gauge; may be nil
	Realtime         func() bool   // whether the daemon runs at a real-time priority; may be nil
	LostEvents       func() uint64 // times the kernel dropped conntrack events so far; may be nil
	RacedConnections func() uint64 // raced second connections through one-shot pinholes found so far; may be nil
	EventsListening  func() bool   // whether the conntrack event listener runs; may be nil
}

// New creates the collectors and registers them.
func New(reg prometheus.Registerer, o Options) *Metrics {
	if o.Mode == "" {
		o.Mode = "transparent"
	}
	mode := prometheus.Labels{"mode": o.Mode}
	m := &Metrics{
		sessions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sessions_total",
			Help: "FTP control sessions accepted.", ConstLabels: mode,
		}),
		sessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sessions_active",
			Help: "FTP control sessions currently open.", ConstLabels: mode,
		}),
		sessionDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "session_duration_seconds",
			Help:    "Duration of FTP control sessions.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10), ConstLabels: mode,
		}),
		upstreamFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_connect_failures_total",
			Help: "Connections to FTP servers that failed or timed out.",
		}),
		upstreamRedials: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_greeting_redials_total",
			Help: "Second connections to an FTP server that had not started its greeting in time (a full accept queue drops handshakes).",
		}),
		nftErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "nftables_errors_total",
			Help: "Failed nftables/netlink operations, by operation.",
		}, []string{"operation"}),
		dataConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "data_connections_total",
			Help: "Finished data connections admitted by ftpgate, by the direction of the transfer (from conntrack accounting; unknown when both byte counters are 0: accounting is off).",
		}, []string{"direction"}),
		dataBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "data_bytes_total",
			Help: "Bytes carried by admitted data connections, by direction (kernel conntrack accounting; data never passes through ftpgate).",
		}, []string{"direction"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "commands_total",
			Help: "FTP commands read from clients, by verb (unknown verbs as other).",
		}, []string{"verb"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "replies_total",
			Help: "FTP replies read from servers, by class (1xx..5xx).",
		}, []string{"class"}),
		rewrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "rewrites_total",
			Help: "Negotiation lines rewritten, by kind (PORT, EPRT, 227, 229).",
		}, []string{"kind"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "refusals_total",
			Help: "Commands and replies refused, by reason.",
		}, []string{"reason"}),
		pinholesOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "pinholes_opened_total",
			Help: "Data-connection pinholes installed, by family and direction.",
		}, []string{"family", "direction"}),
		pinholesEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "pinholes_closed_total",
			Help: "Pinholes that ended, by family, direction and result: used by their data connection, expired (their --pinhole-timeout ran out first) or revoked (closed unused: their session ended, the server refused the PORT, a newer opening replaced them, or ftpgate stopped).",
		}, []string{"family", "direction", "result"}),
		openLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "pinhole_open_latency_seconds",
			Help:    "Time from the firewall request for a pinhole to the kernel's acknowledgement.",
			Buckets: openLatencyBuckets,
		}),
		tls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "tls_sessions_total",
			Help: "AUTH TLS/SSL requests, by action (refused or passthrough).",
		}, []string{"action"}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "ftpgate's version; always 1.", ConstLabels: prometheus.Labels{"version": o.Version, "mode": o.Mode},
	})
	buildInfo.Set(1)
	reg.MustRegister(buildInfo, m.upstreamFailed, m.upstreamRedials, m.nftErrors, m.dataConns, m.dataBytes, m.tls, m.sessions, m.sessionsActive, m.sessionDuration, m.commands, m.replies,
		m.rewrites, m.refusals, m.pinholesOpened, m.pinholesEnded, m.openLatency)
	if o.Realtime != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "realtime_scheduling",
			Help: "1 while the daemon runs at a real-time priority (--rt-priority, or set by systemd); 0 otherwise, also after it left it because a thread ran too long without pause.",
		}, func() float64 {
			if o.Realtime() {
				return 1
			}
			return 0
		}))
	}
	if o.ActivePinholes != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "pinholes_active",
			Help: "Pinholes currently open in the kernel.",
		}, func() float64 { return float64(o.ActivePinholes()) }))
	}
	if o.LostEvents != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "conntrack_events_lost_total",
			Help: "Times the kernel dropped conntrack events because ftpgate's event socket was full (ENOBUFS): pinholes used meanwhile count as expired and their data connections are not counted.",
		}, func() float64 { return float64(o.LostEvents()) }))
	}
	if o.RacedConnections != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "pinhole_raced_connections_total",
			Help: "Second connections whose opening SYN raced the first through a one-shot pinhole; ftpgate cuts each by deleting its conntrack entry and logs an error when it cannot.",
		}, func() float64 { return float64(o.RacedConnections()) }))
	}
	if o.EventsListening != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "conntrack_events_listening",
			Help: "1 while the conntrack event listener runs; 0 if it could not start or stopped on a socket error: used pinholes then count as expired, data connections are not counted and raced connections are not cut until ftpgate restarts.",
		}, func() float64 {
			if o.EventsListening() {
				return 1
			}
			return 0
		}))
	}
	m.byVerb = map[string]prometheus.Counter{"other": m.commands.WithLabelValues("other")}
	for _, v := range knownVerbs {
		m.byVerb[v] = m.commands.WithLabelValues(v)
	}
	for i := range m.byClass {
		m.byClass[i] = m.replies.WithLabelValues(strconv.Itoa(i+1) + "xx")
	}
	for _, op := range []string{"open_pinhole", "close_pinhole"} {
		m.nftErrors.WithLabelValues(op)
	}
	for _, dir := range []string{clientToServer, serverToClient} {
		m.dataConns.WithLabelValues(dir)
		m.dataBytes.WithLabelValues(dir)
	}
	m.dataConns.WithLabelValues(unknownDirection) // no bytes: nothing to add to data_bytes_total
	// Pre-create the bounded series so that rates start at zero, not absent.
	for _, r := range proxy.Reasons {
		m.refusals.WithLabelValues(string(r))
	}
	for _, kind := range rewriteKinds {
		m.rewrites.WithLabelValues(kind)
	}
	m.tls.WithLabelValues("refused")
	m.tls.WithLabelValues("passthrough")
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, dir := range []string{"passive", "active"} {
			m.pinholesOpened.WithLabelValues(fam, dir)
			for _, result := range []string{"used", "expired", "revoked"} {
				m.pinholesEnded.WithLabelValues(fam, dir, result)
			}
		}
	}
	return m
}

func family(f proxy.Flow) string {
	if f.IPv6() {
		return "ipv6"
	}
	return "ipv4"
}

func (m *Metrics) SessionStarted() { m.sessions.Inc(); m.sessionsActive.Inc() }

func (m *Metrics) SessionEnded(d time.Duration) {
	m.sessionsActive.Dec()
	m.sessionDuration.Observe(d.Seconds())
}

func (m *Metrics) Command(verb string) {
	c, ok := m.byVerb[verb]
	if !ok {
		c = m.byVerb["other"]
	}
	c.Inc()
}

func (m *Metrics) Reply(code int) {
	if code < 100 || code > 599 {
		return
	}
	m.byClass[code/100-1].Inc()
}

func (m *Metrics) Rewrite(kind string) { m.rewrites.WithLabelValues(kind).Inc() }
func (m *Metrics) Refused(r proxy.Reason) {
	m.refusals.WithLabelValues(string(r)).Inc()
	if r == proxy.ReasonUpstream {
		m.upstreamFailed.Inc()
	}
}

// UpstreamRedial counts a second connection racing a server's missing greeting.
func (m *Metrics) UpstreamRedial() { m.upstreamRedials.Inc() }

// NFTError counts a failed nftables or netlink operation.
func (m *Metrics) NFTError(operation string) { m.nftErrors.WithLabelValues(operation).Inc() }

const (
	clientToServer = "client_to_server"
	serverToClient = "server_to_client"
	// Both byte counters 0: conntrack accounting (nf_conntrack_acct) is off,
	// since with it on even an empty transfer counts its handshake.
	unknownDirection = "unknown"
)

// rewriteKinds are the kinds the proxy passes to Rewrite: the verb of a
// rewritten PORT/EPRT and the code of a rewritten 227/229.
var rewriteKinds = []string{"PORT", "EPRT", "227", "229"}

// DataConnectionEnded counts a finished data connection of flow f with the
// kernel's byte counters of its original and reply directions. In a passive
// flow the client opened it (original = client to server); in an active one
// the server did. With both counters 0 (accounting off) the direction is
// unknown.
func (m *Metrics) DataConnectionEnded(f proxy.Flow, origBytes, replyBytes uint64) {
	up, down := origBytes, replyBytes
	if f.Dir == proxy.Active {
		up, down = replyBytes, origBytes
	}
	dir := serverToClient
	switch {
	case up == 0 && down == 0:
		dir = unknownDirection
	case up > down:
		dir = clientToServer
	}
	m.dataConns.WithLabelValues(dir).Inc()
	m.dataBytes.WithLabelValues(clientToServer).Add(float64(up))
	m.dataBytes.WithLabelValues(serverToClient).Add(float64(down))
}

func (m *Metrics) PinholeOpened(f proxy.Flow, latency time.Duration) {
	m.pinholesOpened.WithLabelValues(family(f), f.Dir.String()).Inc()
	m.openLatency.Observe(latency.Seconds())
}

// PinholeEnded is the firewall's callback for a pinhole that ended; result
// is "used", "expired" or "revoked" (nft.PinholeEnd's String).
func (m *Metrics) PinholeEnded(f proxy.Flow, result string) {
	m.pinholesEnded.WithLabelValues(family(f), f.Dir.String(), result).Inc()
}

func (m *Metrics) TLS(action string) { m.tls.WithLabelValues(action).Inc() }
