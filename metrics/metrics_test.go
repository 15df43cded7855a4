package metrics

import (
	"io"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ftpgate/ftpgate/proxy"
)

func TestMetricsLintClean(t *testing.T) {
	reg := prometheus.NewRegistry()
	var realtime atomic.Bool
	realtime.Store(true)
	var lost, raced atomic.Uint64
	var listening atomic.Bool
	m := New(reg, Options{Mode: "reverse", Version: "test", ActivePinholes: func() int { return 3 }, Realtime: realtime.Load,
		LostEvents: lost.Load, RacedConnections: raced.Load, EventsListening: listening.Load})
	f := proxy.Flow{Src: netip.MustParseAddr("fd77::2"), Dst: netip.MustParseAddrPort("[fd77:1::2]:50000"), Dir: proxy.Passive}
	m.SessionStarted()
	m.Command("RETR")
	m.Command("XYZZY")
	m.Reply(227)
	m.Rewrite("227")
	m.Refused(proxy.ReasonBounce)
	m.PinholeOpened(f, 300*time.Microsecond)
	m.PinholeEnded(f, "used")
	m.PinholeEnded(f, "revoked")
	m.SessionEnded(2 * time.Second)
	m.NFTError("add element")
	m.Refused(proxy.ReasonUpstream)
	m.DataConnectionEnded(f, 100, 5000)
	active := proxy.Flow{Dir: proxy.Active}
	m.DataConnectionEnded(active, 7000, 60)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if got := testutil.ToFloat64(m.commands.WithLabelValues("other")); got != 1 {
		t.Errorf("unknown verb counted %v times as other, want 1", got)
	}
	if got := testutil.ToFloat64(m.pinholesEnded.WithLabelValues("ipv6", "passive", "used")); got != 1 {
		t.Errorf("used ipv6 passive pinholes = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.pinholesEnded.WithLabelValues("ipv6", "passive", "expired")); got != 0 {
		t.Errorf("a revoked pinhole counted as expired (%v): it would feed FtpgatePinholesMostlyExpired", got)
	}
	if got := testutil.ToFloat64(m.dataBytes.WithLabelValues("client_to_server")); got != 160 {
		t.Errorf("client-to-server bytes = %v, want 100 (passive original) + 60 (active reply)", got)
	}
	if got := testutil.ToFloat64(m.dataConns.WithLabelValues("server_to_client")); got != 2 {
		t.Errorf("server-to-client data connections = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.upstreamFailed); got != 1 {
		t.Errorf("upstream failures = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.sessionsActive); got != 0 {
		t.Errorf("active sessions = %v, want 0", got)
	}
	for _, on := range []bool{true, false} {
		realtime.Store(on)
		want := "0"
		if on {
			want = "1"
		}
		err := testutil.GatherAndCompare(reg, strings.NewReader(`# HELP ftpgate_realtime_scheduling 1 while the daemon runs at a real-time priority (--rt-priority, or set by systemd); 0 otherwise, also after it left it because a thread ran too long without pause.
# TYPE ftpgate_realtime_scheduling gauge
ftpgate_realtime_scheduling `+want+"\n"), "ftpgate_realtime_scheduling")
		if err != nil {
			t.Errorf("realtime %v: %v", on, err)
		}
	}
	for _, n := range []uint64{0, 7} {
		lost.Store(n)
		raced.Store(n + 1)
		want := strconv.FormatUint(n, 10)
		err := testutil.GatherAndCompare(reg, strings.NewReader(`# HELP ftpgate_conntrack_events_lost_total Times the kernel dropped conntrack events because ftpgate's event socket was full (ENOBUFS): pinholes used meanwhile count as expired and their data connections are not counted.
# TYPE ftpgate_conntrack_events_lost_total counter
ftpgate_conntrack_events_lost_total `+want+`
# HELP ftpgate_pinhole_raced_connections_total Second connections whose opening SYN raced the first through a one-shot pinhole; ftpgate cuts each by deleting its conntrack entry and logs an error when it cannot.
# TYPE ftpgate_pinhole_raced_connections_total counter
ftpgate_pinhole_raced_connections_total `+strconv.FormatUint(n+1, 10)+"\n"), "ftpgate_conntrack_events_lost_total", "ftpgate_pinhole_raced_connections_total")
		if err != nil {
			t.Errorf("lost %d, raced %d: %v", n, n+1, err)
		}
	}
	for _, on := range []bool{true, false} {
		listening.Store(on)
		want := "0"
		if on {
			want = "1"
		}
		err := testutil.GatherAndCompare(reg, strings.NewReader(`# HELP ftpgate_conntrack_events_listening 1 while the conntrack event listener runs; 0 if it could not start or stopped on a socket error: used pinholes then count as expired, data connections are not counted and raced connections are not cut until ftpgate restarts.
# TYPE ftpgate_conntrack_events_listening gauge
ftpgate_conntrack_events_listening `+want+"\n"), "ftpgate_conntrack_events_listening")
		if err != nil {
			t.Errorf("listening %v: %v", on, err)
		}
	}
}

func TestHandlerEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, Options{})
	var ready atomic.Bool
	srv := httptest.NewServer(Handler(reg, ready.Load, func() any { return map[string]int{"sessions": 2} }))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d, want 200", code)
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz before ready = %d, want 503", code)
	}
	ready.Store(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d, want 200", code)
	}
	if code, body := get("/status"); code != 200 || !strings.Contains(body, `"sessions": 2`) {
		t.Errorf("/status = %d %q", code, body)
	}
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "ftpgate_refusals_total{reason=\"bounce_address\"} 0") {
		t.Errorf("/metrics = %d, missing pre-initialised refusal series:\n%s", code, body)
	}
}

// scrape returns reg's /metrics page.
func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler(reg, nil, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics = %d", rec.Code)
	}
	return rec.Body.String()
}

// The alert and the 1 ms target read the bounds at 1 ms and 10 ms: they must
// exist exactly, spelt as the alert's le="0.01" matches them.
func TestOpenLatencyBuckets(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Options{})
	f := proxy.Flow{Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddrPort("192.0.2.2:50000"), Dir: proxy.Passive}
	for _, d := range []time.Duration{300 * time.Microsecond, 900 * time.Microsecond, 1000 * time.Microsecond,
		7 * time.Millisecond, 10 * time.Millisecond, 12 * time.Millisecond, 2 * time.Second} {
		m.PinholeOpened(f, d)
	}
	body := scrape(t, reg)
	expectLines(t, body,
		`ftpgate_pinhole_open_latency_seconds_bucket{le="5e-05"} 0`,
		`ftpgate_pinhole_open_latency_seconds_bucket{le="0.0003"} 1`,
		`ftpgate_pinhole_open_latency_seconds_bucket{le="0.0007"} 1`,
		`ftpgate_pinhole_open_latency_seconds_bucket{le="0.001"} 3`,
		`ftpgate_pinhole_open_latency_seconds_bucket{le="0.005"} 3`,
		`ftpgate_pinhole_open_latency_seconds_bucket{le="0.01"} 5`,
		`ftpgate_pinhole_open_latency_seconds_bucket{le="0.02"} 6`,
		`ftpgate_pinhole_open_latency_seconds_bucket{le="1"} 6`,
		`ftpgate_pinhole_open_latency_seconds_bucket{le="+Inf"} 7`,
		`ftpgate_pinhole_open_latency_seconds_count 7`,
	)
	if n := strings.Count(body, "ftpgate_pinhole_open_latency_seconds_bucket{"); n != len(openLatencyBuckets)+1 {
		t.Errorf("%d latency buckets, want %d and +Inf", n, len(openLatencyBuckets))
	}
	for i := 1; i < len(openLatencyBuckets); i++ {
		if openLatencyBuckets[i] <= openLatencyBuckets[i-1] {
			t.Errorf("bucket bounds not increasing at %v", openLatencyBuckets[i])
		}
	}
}

// Without conntrack accounting both byte counters are 0: the direction of
// the transfer is unknown, not a download.
func TestDataConnectionUnknownDirection(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Options{})
	if body := scrape(t, reg); !strings.Contains(body, `ftpgate_data_connections_total{direction="unknown"} 0`+"\n") {
		t.Errorf("direction=unknown not pre-initialised:\n%s", body)
	}
	passive := proxy.Flow{Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddrPort("192.0.2.2:50000"), Dir: proxy.Passive}
	active := proxy.Flow{Src: netip.MustParseAddr("192.0.2.2"), Dst: netip.MustParseAddrPort("192.0.2.1:50000"), Dir: proxy.Active}
	m.DataConnectionEnded(passive, 0, 0)
	m.DataConnectionEnded(active, 0, 0)
	m.DataConnectionEnded(passive, 0, 60) // a count of one side only still tells
	for dir, want := range map[string]float64{"unknown": 2, clientToServer: 0, serverToClient: 1} {
		if got := testutil.ToFloat64(m.dataConns.WithLabelValues(dir)); got != want {
			t.Errorf("data connections %s = %v, want %v", dir, got, want)
		}
	}
	for dir, want := range map[string]float64{clientToServer: 0, serverToClient: 60} {
		if got := testutil.ToFloat64(m.dataBytes.WithLabelValues(dir)); got != want {
			t.Errorf("data bytes %s = %v, want %v", dir, got, want)
		}
	}
	if body := scrape(t, reg); strings.Contains(body, `ftpgate_data_bytes_total{direction="unknown"}`) {
		t.Error("data_bytes_total has a direction=unknown series: there are no bytes to count")
	}
}

// Every bounded label value starts at 0, so that rates and panels start at
// zero instead of showing no data.
func TestPreinitialisedSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, Options{})
	body := scrape(t, reg)
	expectLines(t, body,
		`ftpgate_rewrites_total{kind="PORT"} 0`,
		`ftpgate_rewrites_total{kind="EPRT"} 0`,
		`ftpgate_rewrites_total{kind="227"} 0`,
		`ftpgate_rewrites_total{kind="229"} 0`,
		`ftpgate_nftables_errors_total{operation="open_pinhole"} 0`,
		`ftpgate_nftables_errors_total{operation="close_pinhole"} 0`,
		`ftpgate_data_connections_total{direction="client_to_server"} 0`,
		`ftpgate_data_connections_total{direction="server_to_client"} 0`,
		`ftpgate_data_connections_total{direction="unknown"} 0`,
		`ftpgate_pinholes_closed_total{direction="active",family="ipv6",result="expired"} 0`,
		`ftpgate_pinholes_closed_total{direction="active",family="ipv6",result="revoked"} 0`,
	)
}

// expectLines fails t for each line missing from a /metrics body.
func expectLines(t *testing.T, body string, lines ...string) {
	t.Helper()
	for _, want := range lines {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
