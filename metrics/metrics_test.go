package metrics

import (
	"io"
	"net/http/httptest"
	"net/netip"
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
	m := New(reg, func() int { return 3 })
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
	if got := testutil.ToFloat64(m.sessionsActive); got != 0 {
		t.Errorf("active sessions = %v, want 0", got)
	}
}

func TestHandlerEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, nil)
	var ready atomic.Bool
	srv := httptest.NewServer(Handler(reg, ready.Load))
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
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "ftpgate_refusals_total{reason=\"bounce_address\"} 0") {
		t.Errorf("/metrics = %d, missing pre-initialised refusal series:\n%s", code, body)
	}
}
