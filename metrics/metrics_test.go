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
	m.PinholeEnded(f, true)
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
