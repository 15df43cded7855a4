package e2e

// The performance comparison behind `make bench`: ftpgate against the
// kernel's own FTP helper (nf_conntrack_ftp, `ct helper` type "ftp"), side by
// side, alternating the setups round after round so that machine noise hits
// all of them alike.
//
// Setups, each in a lab of its own, built once and kept for the whole run:
//
//	routed       routing only, no host firewall at all
//	helper       the default-drop host ruleset + `ct helper set "ftp-std"` on port 21
//	transparent  the default-drop host ruleset (with the ct-mark line) + ftpgate run
//	reverse      the reverse-mode host ruleset + ftpgate run --mode reverse; clients
//	             connect to the gateway's client-side address
//	relay        routing only + a plain Go relay of the control connection on the
//	             gateway (relay_test.go): the floor of a userspace relay's CPU,
//	             the reference for ftpgate's; no targets
//
// Each visit: a warm-up, then N sessions (login, PASV/EPSV/PORT/EPRT round
// robin, RETR of a 4 KiB file, QUIT; IPv4) at each concurrency level, then
// RETRs of a 1 GiB sparse file spliced to /dev/null. ftpgate's CPU time comes
// from /proc/<pid>/stat, its pinhole-open latency from its histogram, both
// per cell. Afterwards: RSS per idle control session (10,000 of them, through
// ftpgate to a tiny in-process server) and the nft package's
// BenchmarkPinholeChurn.
//
// Nothing here asserts a time: the figures are printed with their targets and
// PASS/MISS, and written as JSON to bench/results/. It runs only with
// FTPGATE_BENCH=1 (see bench/README.md for the knobs).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Setup names, in the order of the issue: (a) .. (d), then the reference (e).
const (
	setupRouted      = "routed"
	setupHelper      = "helper"
	setupTransparent = "transparent"
	setupReverse     = "reverse"
	setupRelay       = "relay"
)

var allSetups = []string{setupRouted, setupHelper, setupTransparent, setupReverse, setupRelay}

// daemonSetups are the setups with a process on the gateway whose CPU is
// measured: ftpgate's two modes and the plain relay.
var daemonSetups = []string{setupTransparent, setupReverse, setupRelay}

var setupTitle = map[string]string{
	setupRouted:      "(a) routed, no firewall",
	setupHelper:      "(b) kernel ct helper ftp",
	setupTransparent: "(c) ftpgate transparent",
	setupReverse:     "(d) ftpgate reverse",
	setupRelay:       "(e) plain Go relay",
}

// Targets of the issue.
const (
	targetRateRatio     = 0.95     // sessions/s ftpgate / helper >=
	targetLatRatio      = 1.10     // p50, p99 ftpgate / helper <=
	targetThruRatio     = 0.98     // 1 GiB MiB/s ftpgate / helper >=
	targetCPUPerSession = 100e-6   // seconds <=
	targetPinholeP99    = 1e-3     // seconds <=
	targetChurn         = 5000     // pinholes/s >=
	targetIdleBytes     = 32 << 10 // bytes per idle session <=
)

const benchFile = "bench-4k.bin"
const benchBigFile = "bench-big.bin"

// BenchConfig is what a run measured; every field has an env knob.
type BenchConfig struct {
	Rounds       int      `json:"rounds"`            // FTPGATE_BENCH_ROUNDS
	Sessions     int      `json:"sessions_per_cell"` // FTPGATE_BENCH_SESSIONS
	Concurrency  []int    `json:"concurrency"`       // FTPGATE_BENCH_CONCURRENCY
	BigMiB       int      `json:"big_mib"`           // FTPGATE_BENCH_BIG_MIB (0: skip)
	BigReps      int      `json:"big_reps"`          // FTPGATE_BENCH_BIG_REPS: transfers per visit, the best counts
	IdleSessions int      `json:"idle_sessions"`     // FTPGATE_BENCH_IDLE (0: skip)
	ChurnTime    string   `json:"churn_benchtime"`   // FTPGATE_BENCH_CHURN ("0": skip)
	Setups       []string `json:"setups"`            // FTPGATE_BENCH_SETUPS
	CellMaxS     int      `json:"cell_max_s"`        // FTPGATE_BENCH_CELL_MAX: a cell stops taking sessions after this many seconds
	BudgetS      int      `json:"budget_s"`          // FTPGATE_BENCH_BUDGET: no new round starts that would end after this many seconds
	Nice         int      `json:"nice"`              // FTPGATE_BENCH_NICE: ftpgate's --nice (default -10, as the shipped systemd unit's Nice=)
	RTPriority   int      `json:"rt_priority"`       // FTPGATE_BENCH_RT: ftpgate's --rt-priority (default 1, as the unit's CPUSchedulingPolicy=rr, CPUSchedulingPriority=1; 0: off)
	SysmonPoll   bool     `json:"sysmon_poll"`       // FTPGATE_BENCH_SYSMON_POLL: ftpgate's --sysmon-poll (default 1, the tuning for a busy gateway; 0: off)
	RoundsDone   int      `json:"rounds_done"`
	Modes        []Mode   `json:"modes"`
	Family       int      `json:"family"`
	FileBytes    int      `json:"file_bytes"`
}

func benchEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(strings.TrimSpace(os.Getenv(name))); err == nil && v >= 0 {
		return v
	}
	return def
}

func loadBenchConfig() BenchConfig {
	c := BenchConfig{
		Rounds:       max(1, benchEnvInt("FTPGATE_BENCH_ROUNDS", 3)),
		Sessions:     max(1, benchEnvInt("FTPGATE_BENCH_SESSIONS", 300)),
		CellMaxS:     max(1, benchEnvInt("FTPGATE_BENCH_CELL_MAX", 12)),
		BudgetS:      max(1, benchEnvInt("FTPGATE_BENCH_BUDGET", 480)),
		Concurrency:  []int{1, 8, 64},
		BigMiB:       benchEnvInt("FTPGATE_BENCH_BIG_MIB", 1024),
		BigReps:      max(1, benchEnvInt("FTPGATE_BENCH_BIG_REPS", 3)),
		IdleSessions: benchEnvInt("FTPGATE_BENCH_IDLE", 10000),
		ChurnTime:    "3s",
		Nice:         -10,
		RTPriority:   benchEnvInt("FTPGATE_BENCH_RT", 1),
		SysmonPoll:   benchEnvInt("FTPGATE_BENCH_SYSMON_POLL", 1) != 0,
		Setups:       allSetups,
		Modes:        Modes,
		Family:       4,
		FileBytes:    4096,
	}
	if n, err := strconv.Atoi(strings.TrimSpace(os.Getenv("FTPGATE_BENCH_NICE"))); err == nil && n >= -20 && n <= 19 {
		c.Nice = n
	}
	if v := os.Getenv("FTPGATE_BENCH_CONCURRENCY"); v != "" {
		var cs []int
		for _, f := range strings.Split(v, ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
				cs = append(cs, n)
			}
		}
		if len(cs) > 0 {
			c.Concurrency = cs
		}
	}
	if v := os.Getenv("FTPGATE_BENCH_CHURN"); v != "" {
		c.ChurnTime = v
	}
	if v := os.Getenv("FTPGATE_BENCH_SETUPS"); v != "" {
		var ss []string
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); slices.Contains(allSetups, f) {
				ss = append(ss, f)
			}
		}
		if len(ss) > 0 {
			c.Setups = ss
		}
	}
	return c
}

// ---------------------------------------------------------------- results

// CellResult is one (setup, round, concurrency) measurement.
type CellResult struct {
	Setup       string  `json:"setup"`
	Round       int     `json:"round"`
	Concurrency int     `json:"concurrency"`
	Sessions    int     `json:"sessions"` // completed successfully
	Failed      int     `json:"failed"`
	Seconds     float64 `json:"seconds"`
	Rate        float64 `json:"sessions_per_s"`
	P50ms       float64 `json:"p50_ms"`
	P99ms       float64 `json:"p99_ms"`
	FirstError  string  `json:"first_error,omitempty"`
	// ftpgate setups: the daemon's user+sys CPU over the cell, and the
	// cell's share of its pinhole-latency histogram.
	DaemonCPUSeconds  float64  `json:"daemon_cpu_s,omitempty"`
	DaemonUserSeconds float64  `json:"daemon_user_cpu_s,omitempty"`       // the user-space part of DaemonCPUSeconds
	DaemonCtxSwitch   int64    `json:"daemon_context_switches,omitempty"` // voluntary + involuntary, all threads
	PinholeBuckets    []bucket `json:"pinhole_latency_buckets,omitempty"`
	FirewallErrors    float64  `json:"firewall_errors,omitempty"`
}

// BigResult is one large RETR.
type BigResult struct {
	Setup   string  `json:"setup"`
	Round   int     `json:"round"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	MiBps   float64 `json:"mib_per_s"`
	// ftpgate's own CPU during the transfer (the data must not pass through it).
	DaemonCPUSeconds float64 `json:"daemon_cpu_s"`
	Error            string  `json:"error,omitempty"`
}

type bucket struct {
	LE    float64 `json:"le"` // +Inf as math.MaxFloat64
	Count float64 `json:"count"`
}

// SummaryRow is one line of the session table: medians over rounds and the
// median of the per-round ratios to the kernel helper (0: not available).
type SummaryRow struct {
	Setup       string  `json:"setup"`
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"sessions_per_s"`
	RateRatio   float64 `json:"sessions_per_s_ratio"`
	P50ms       float64 `json:"p50_ms"`
	P50Ratio    float64 `json:"p50_ratio"`
	P50DeltaMs  float64 `json:"p50_delta_ms"` // median over rounds of p50 - helper's p50
	P99ms       float64 `json:"p99_ms"`
	P99Ratio    float64 `json:"p99_ratio"`
	Failed      int     `json:"failed"`
}

// ThroughputRow summarises the large RETRs of a setup.
type ThroughputRow struct {
	Setup  string  `json:"setup"`
	MiBps  float64 `json:"mib_per_s"`
	Ratio  float64 `json:"ratio"`
	Failed int     `json:"failed"`
}

// DaemonRow summarises ftpgate per mode and concurrency (0: all cells).
type DaemonRow struct {
	Setup         string  `json:"setup"`
	Concurrency   int     `json:"concurrency"`
	Sessions      int     `json:"sessions"`
	CPUPerSessUs  float64 `json:"cpu_per_session_us"`
	UserPerSessUs float64 `json:"user_cpu_per_session_us"` // of which in user space (ftpgate's code, the Go runtime)
	CtxSwPerSess  float64 `json:"context_switches_per_session"`
	PinholeOpens  float64 `json:"pinhole_opens"`
	PinholeP50us  float64 `json:"pinhole_open_p50_us"`
	PinholeP99us  float64 `json:"pinhole_open_p99_us"`
	PinholeP99Max float64 `json:"pinhole_open_p99_bucket_le_us"` // upper bound of the bucket holding p99
	FirewallErrs  float64 `json:"firewall_errors"`
	// OverRelayUs is CPU per session above the plain relay's at the same
	// concurrency (ftpgate rows, when setup (e) ran): what ftpgate's own
	// work costs beyond relaying lines.
	OverRelayUs *float64 `json:"cpu_per_session_over_relay_us,omitempty"`
}

// IdleResult is the idle-session memory figure.
type IdleResult struct {
	Mode             string  `json:"mode"`
	Sessions         int     `json:"sessions"`
	Requested        int     `json:"requested"` // more than Sessions when RLIMIT_NOFILE capped it
	RSSBeforeKiB     int64   `json:"rss_before_kib"`
	RSSAfterKiB      int64   `json:"rss_after_kib"`
	BytesPerSession  float64 `json:"rss_bytes_per_session"`
	HeapPerSession   float64 `json:"heap_inuse_bytes_per_session"`
	GoroutinesPerSes float64 `json:"goroutines_per_session"`
	FDsPerSession    float64 `json:"fds_per_session"`
	OpenSeconds      float64 `json:"open_seconds"`
	Error            string  `json:"error,omitempty"`
}

// ChurnResult is BenchmarkPinholeChurn's outcome.
type ChurnResult struct {
	PinholesPerS float64 `json:"pinholes_per_s"`
	NsPerOp      float64 `json:"ns_per_op"`
	Output       string  `json:"output,omitempty"`
	Error        string  `json:"error,omitempty"`
}

// Figure is one figure checked against its target (informational).
type Figure struct {
	Name   string  `json:"name"`
	Setup  string  `json:"setup,omitempty"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Target string  `json:"target"`
	Result string  `json:"result"` // PASS, MISS or n/a
}

// MachineInfo describes where the run happened.
type MachineInfo struct {
	Host      string `json:"host"`
	NProc     int    `json:"nproc"`
	Kernel    string `json:"kernel"`
	CPU       string `json:"cpu"`
	MemTotal  string `json:"mem_total"`
	GoVersion string `json:"go_version"`
	Commit    string `json:"commit,omitempty"`
	// GetpidNs is the cost of one trivial system call here: ftpgate's CPU per
	// session is mostly system calls, so it scales with this (bare metal:
	// ~50-100 ns; nested or paravirtualised VMs: 10-30x that).
	GetpidNs float64 `json:"getpid_ns"`
}

// BenchReport is the JSON written to bench/results/.
type BenchReport struct {
	Started    time.Time         `json:"started"`
	LoadStart  string            `json:"loadavg_start"` // /proc/loadavg: other work on the machine adds noise
	LoadEnd    string            `json:"loadavg_end"`
	Seconds    float64           `json:"seconds"`
	Machine    MachineInfo       `json:"machine"`
	Config     BenchConfig       `json:"config"`
	Sessions   []SummaryRow      `json:"sessions"`
	Throughput []ThroughputRow   `json:"throughput"`
	Daemon     []DaemonRow       `json:"daemon"`
	Idle       *IdleResult       `json:"idle,omitempty"`
	Churn      *ChurnResult      `json:"churn,omitempty"`
	Figures    []Figure          `json:"figures"`
	Skipped    map[string]string `json:"skipped_setups,omitempty"`
	Cells      []CellResult      `json:"raw_cells"`
	Big        []BigResult       `json:"raw_big"`
	Table      string            `json:"table"`
}

// ---------------------------------------------------------------- the test

func TestBenchCompare(t *testing.T) {
	if os.Getenv("FTPGATE_BENCH") != "1" {
		t.Skip("benchmark comparison: set FTPGATE_BENCH=1 (make bench)")
	}
	requireLabEnv(t)
	requireFtpgate(t)
	b := runBench(t, loadBenchConfig())
	fmt.Print("\n" + b.rep.Table)
	b.writeJSON()
}

// TestBenchSmoke runs the comparison in miniature, so that `make test` keeps
// `make bench` working: every setup builds, every data mode completes through
// it, each daemon's CPU is read, and the report renders. It asserts no figure.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("the benchmark's labs: not in -short")
	}
	requireLabEnv(t)
	requireFtpgate(t)
	cfg := loadBenchConfig()
	cfg.Rounds, cfg.Sessions, cfg.Concurrency = 1, 8, []int{1, 4}
	cfg.BigMiB, cfg.IdleSessions, cfg.ChurnTime = 16, 100, "0"
	cfg.BigReps, cfg.Setups = 1, allSetups
	if out, err := exec.Command("chrt", "--rr", "1", "true").CombinedOutput(); err != nil {
		t.Logf("no real-time scheduling here (%v: %s): ftpgate and the relay run without it", err, bytes.TrimSpace(out))
		cfg.RTPriority = 0
	}
	b := runBench(t, cfg)
	t.Log("\n" + b.rep.Table)
	if len(b.rep.Skipped) > 0 {
		t.Errorf("setups skipped: %v", b.rep.Skipped)
	}
	for _, c := range b.rep.Cells {
		if c.Failed > 0 || c.Sessions != cfg.Sessions {
			t.Errorf("%s c=%d: %d sessions, %d failed (first: %s)", c.Setup, c.Concurrency, c.Sessions, c.Failed, c.FirstError)
		}
	}
	for _, r := range b.rep.Big {
		if r.Error != "" {
			t.Errorf("%s: big RETR: %s", r.Setup, r.Error)
		}
	}
	var daemons []string
	for _, r := range b.rep.Daemon {
		if r.Concurrency == 0 && r.CtxSwPerSess > 0 {
			daemons = append(daemons, r.Setup)
		}
	}
	if !slices.Equal(daemons, daemonSetups) {
		t.Errorf("context switches read for %v, want %v", daemons, daemonSetups)
	}
	if i := b.rep.Idle; i == nil || i.Error != "" || i.Sessions != cfg.IdleSessions {
		t.Errorf("idle sessions: %+v", i)
	}
	for _, s := range allSetups {
		if !strings.Contains(b.rep.Table, setupTitle[s]) {
			t.Errorf("table lacks %q", setupTitle[s])
		}
	}
}

// runBench builds the labs, measures every round and summarises.
func runBench(t *testing.T, cfg BenchConfig) *benchRun {
	b := &benchRun{t: t, cfg: cfg, rep: &BenchReport{Started: time.Now(), Config: cfg, Machine: machineInfo(),
		Skipped: map[string]string{}, LoadStart: loadavg()}}
	b.logf("machine: %s, %d CPUs, kernel %s, %s, getpid %.0f ns, load %s", b.rep.Machine.CPU, b.rep.Machine.NProc,
		b.rep.Machine.Kernel, b.rep.Machine.GoVersion, b.rep.Machine.GetpidNs, b.rep.LoadStart)
	b.logf("config: %d rounds x setups %v x concurrency %v, %d sessions per cell, big file %d MiB, %d idle sessions, churn %s",
		cfg.Rounds, cfg.Setups, cfg.Concurrency, cfg.Sessions, cfg.BigMiB, cfg.IdleSessions, cfg.ChurnTime)

	b.newLabs()
	budget := time.Duration(cfg.BudgetS) * time.Second
	var lastRound time.Duration
	for r := 0; r < cfg.Rounds; r++ {
		if r > 0 && time.Since(b.rep.Started)+lastRound > budget {
			b.logf("time budget (%v, FTPGATE_BENCH_BUDGET) would be exceeded: stopping after %d of %d rounds", budget, r, cfg.Rounds)
			break
		}
		roundStart := time.Now()
		// Rotate the order each round: every setup runs early and late.
		order := make([]string, 0, len(b.setups))
		for i := range b.setups {
			order = append(order, b.setups[(i+r)%len(b.setups)])
		}
		b.logf("round %d/%d: %v", r+1, cfg.Rounds, order)
		for _, s := range order {
			b.visit(s, r)
		}
		lastRound = time.Since(roundStart)
		b.rep.Config.RoundsDone = r + 1
	}
	b.stopLabs()

	if cfg.IdleSessions > 0 {
		b.rep.Idle = b.idleMemory(cfg.IdleSessions)
	}
	if cfg.ChurnTime != "0" && cfg.ChurnTime != "" {
		b.rep.Churn = b.churn(cfg.ChurnTime)
	}
	b.rep.LoadEnd = loadavg()
	b.summarise()
	b.rep.Seconds = time.Since(b.rep.Started).Seconds()
	b.rep.Table = b.table()
	return b
}

type benchRun struct {
	t   *testing.T
	cfg BenchConfig
	rep *BenchReport

	setups []string             // cfg.Setups minus the unavailable ones
	labs   map[string]*setupLab // one lab per setup
}

// setupLab is the lab of one setup: configured once, measured every round.
type setupLab struct {
	name   string
	lab    *Lab
	srv    *Vsftpd
	gate   *Gate      // nil without ftpgate
	relay  *Daemon    // the plain relay of setup (e)
	target netip.Addr // where clients connect
}

func (b *benchRun) logf(format string, args ...any) {
	b.t.Helper()
	b.t.Logf("bench %s: "+format, append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// newLabs builds one lab per setup. Each keeps its ruleset, vsftpd and
// ftpgate for the whole run: visits only drive load, so no setup inherits
// another's conntrack entries or TIME_WAIT sockets (ftpgate's transparent
// sockets outlive the process by 60 s; a routed setup measured right after
// it in the same lab had connections time out).
func (b *benchRun) newLabs() {
	t := b.t
	b.labs = map[string]*setupLab{}
	b.setups = nil
	var bigFile string
	for _, s := range b.cfg.Setups {
		l := NewLab(t)
		if s == setupHelper {
			check := filepath.Join(l.Dir, "helper-check.nft")
			os.WriteFile(check, []byte(HostRuleset(HostFirewallOpts{CtMarkLine: true, KernelHelper: true})), 0o600)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, err := l.Gateway.Cmd(ctx, "nft", "-c", "-f", check).CombinedOutput()
			cancel()
			if err != nil {
				b.rep.Skipped[s] = fmt.Sprintf("kernel FTP helper not usable: %v: %s", err, strings.TrimSpace(string(out)))
				b.logf("skipping %s: %s", s, b.rep.Skipped[s])
				continue
			}
		}
		sl := &setupLab{name: s, lab: l, target: l.ServerIP4}
		ftpgateArgs := []string{"--log-level", "warn", "--max-sessions-per-client", "4096", "--max-sessions", "8192",
			"--nice", strconv.Itoa(b.cfg.Nice), "--rt-priority", strconv.Itoa(b.cfg.RTPriority),
			"--sysmon-poll=" + strconv.FormatBool(b.cfg.SysmonPoll)}
		switch s {
		case setupHelper:
			l.HostFirewallWith(t, HostFirewallOpts{CtMarkLine: true, KernelHelper: true})
		case setupTransparent:
			l.HostFirewall(t, true)
		case setupReverse:
			l.Nft(t, "host.nft", ReverseHostRuleset)
			ftpgateArgs = append(ftpgateArgs, "--mode", "reverse",
				"--listen", netip.AddrPortFrom(l.GwClientIP4, 21).String(),
				"--upstream", netip.AddrPortFrom(l.ServerIP4, 21).String(),
				"--passive-ports", "50000-50999")
			sl.target = l.GwClientIP4
		case setupRelay:
			l.Nft(t, "plainrelay.nft", plainRelayRuleset(l))
			sl.target = l.GwClientIP4
		}
		sl.srv = l.StartVsftpd(t)
		// Protocol logging is a debugging aid that costs vsftpd a write per
		// line; transfers are still logged (xferlog).
		vsftpdExtra := []string{"log_ftp_protocol=NO"}
		if s == setupRelay {
			vsftpdExtra = append(vsftpdExtra, plainRelayVsftpd...)
		}
		RestartVsftpd(t, l, sl.srv, vsftpdExtra...)
		payload := make([]byte, b.cfg.FileBytes)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		if err := os.WriteFile(filepath.Join(sl.srv.Root, benchFile), payload, 0o644); err != nil {
			t.Fatal(err)
		}
		if b.cfg.BigMiB > 0 {
			dst := filepath.Join(sl.srv.Root, benchBigFile)
			if bigFile == "" {
				// Sparse: no disk, and vsftpd sendfile()s page-cache zero pages.
				f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
				if err != nil {
					t.Fatal(err)
				}
				if err := f.Truncate(int64(b.cfg.BigMiB) << 20); err != nil {
					t.Fatal(err)
				}
				f.Close()
				// Read it once, so that no setup pays for filling the page cache.
				if f, err := os.Open(dst); err == nil {
					io.Copy(io.Discard, f)
					f.Close()
				}
				bigFile = dst
			} else if err := os.Link(bigFile, dst); err != nil {
				// One inode for every lab: one copy in the page cache.
				t.Fatalf("link the big file: %v", err)
			}
		}
		if s == setupTransparent || s == setupReverse {
			if v := os.Getenv("FTPGATE_BENCH_GOMAXPROCS"); v != "" {
				os.Setenv("GOMAXPROCS", v) // the daemon's only: this process has read its own
			}
			sl.gate = l.StartFtpgate(t, ftpgateArgs...)
			os.Unsetenv("GOMAXPROCS")
		}
		if s == setupRelay {
			sl.relay = b.startPlainRelay(l)
		}
		b.labs[s] = sl
		b.setups = append(b.setups, s)
	}
}

// stopLabs stops the daemons early (the labs themselves go in t.Cleanup) so
// that the idle-memory lab has the machine to itself.
func (b *benchRun) stopLabs() {
	for _, sl := range b.labs {
		if sl.gate != nil {
			_ = sl.gate.Stop(10 * time.Second)
		}
		if sl.relay != nil {
			_ = sl.relay.Stop(3 * time.Second)
		}
		_ = sl.srv.Daemon.Stop(3 * time.Second)
	}
}

// visit measures setup s once.
func (b *benchRun) visit(s string, round int) {
	sl := b.labs[s]
	l, target := sl.lab, sl.target

	// Warm-up: caches, vsftpd's first forks, ftpgate's heap and goroutines.
	wc := min(8, slices.Max(b.cfg.Concurrency))
	if warm := b.runCell(sl, round, wc, 4*wc); warm.Failed > 0 {
		b.logf("%-12s warm-up: %d failed: %s", s, warm.Failed, warm.FirstError)
	}

	var pid int
	switch {
	case sl.gate != nil:
		pid = sl.gate.Cmd.Process.Pid
	case sl.relay != nil:
		pid = sl.relay.Cmd.Process.Pid
	}
	for _, c := range b.cfg.Concurrency {
		// The metrics scrapes cost ftpgate CPU too: they stay outside the
		// CPU window.
		var m0 string
		var user0, sys0 float64
		var cs0 int64
		if sl.gate != nil {
			m0 = sl.gate.Metrics(b.t)
		}
		if pid != 0 {
			user0, sys0 = procCPUTimes(pid)
			cs0 = procContextSwitches(pid)
		}
		res := b.runCell(sl, round, c, b.cfg.Sessions)
		if pid != 0 {
			user1, sys1 := procCPUTimes(pid)
			res.DaemonCPUSeconds = user1 + sys1 - user0 - sys0
			res.DaemonUserSeconds = user1 - user0
			res.DaemonCtxSwitch = procContextSwitches(pid) - cs0
		}
		if sl.gate != nil {
			m1 := sl.gate.Metrics(b.t)
			res.PinholeBuckets = subBuckets(parseBuckets(m1, pinholeHistogram), parseBuckets(m0, pinholeHistogram))
			res.FirewallErrors = metricValue(m1, fwErrSeries) - metricValue(m0, fwErrSeries)
			if b.cfg.RTPriority > 0 && metricValue(m1, "ftpgate_realtime_scheduling") != 1 {
				b.logf("%-12s r%d c=%-3d NOTE: ftpgate is not at real-time priority (left it, see its log): the figures are for normal scheduling", s, round+1, c)
			}
		}
		b.rep.Cells = append(b.rep.Cells, res)
		msg := ""
		if pid != 0 && res.Sessions > 0 {
			msg = fmt.Sprintf("  %.0f µs CPU/session", 1e6*res.DaemonCPUSeconds/float64(res.Sessions))
			if sl.gate != nil {
				p99, _ := bucketQuantile(res.PinholeBuckets, 0.99)
				msg += fmt.Sprintf(", pinhole p99 %.0f µs", 1e6*p99)
			}
		}
		if res.Failed > 0 {
			msg += fmt.Sprintf("  %d FAILED, first: %s", res.Failed, res.FirstError)
		}
		b.logf("%-12s r%d c=%-3d %6.1f sessions/s  p50 %7.2f ms  p99 %8.2f ms%s", s, round+1, c, res.Rate, res.P50ms, res.P99ms, msg)
	}

	if b.cfg.BigMiB > 0 {
		r := BigResult{Setup: s, Round: round}
		want := int64(b.cfg.BigMiB) << 20
		// Best of BigReps: a transfer takes under a second, so one burst of
		// other work on the machine would otherwise decide the figure.
		for range b.cfg.BigReps {
			var cpu0 float64
			if pid != 0 {
				cpu0 = procCPUSeconds(pid)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			d, n, err := benchBigGet(ctx, l.Client, target, benchBigFile)
			cancel()
			if err == nil && n != want {
				err = fmt.Errorf("got %d bytes, want %d", n, want)
			}
			if err != nil {
				r.Error = err.Error()
				b.logf("%-12s r%d big RETR FAILED: %v", s, round+1, err)
				continue
			}
			if mibps := float64(n) / (1 << 20) / d.Seconds(); mibps > r.MiBps {
				r.MiBps, r.Bytes, r.Seconds = mibps, n, d.Seconds()
				if pid != 0 {
					r.DaemonCPUSeconds = procCPUSeconds(pid) - cpu0
				}
			}
		}
		if r.MiBps > 0 {
			r.Error = ""
			b.logf("%-12s r%d %d MiB RETR: best of %d %.0f MiB/s (ftpgate CPU %.3f s)", s, round+1, b.cfg.BigMiB, b.cfg.BigReps, r.MiBps, r.DaemonCPUSeconds)
		}
		b.rep.Big = append(b.rep.Big, r)
	}
}

const (
	pinholeHistogram = "ftpgate_pinhole_open_latency_seconds_bucket"
	fwErrSeries      = `ftpgate_refusals_total{reason="firewall_error"}`
)

// combos are the modes sessions cycle through (all over IPv4).
func (b *benchRun) combos() []Mode { return b.cfg.Modes }

// runCell runs n sessions, c at a time, and times each.
func (b *benchRun) runCell(sl *setupLab, round int, c, n int) CellResult {
	l, s, target := sl.lab, sl.name, sl.target
	modes := b.combos()
	durs := make([]time.Duration, n)
	ok := make([]bool, n)
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr string
	var errOnce sync.Once
	// Bounded: a cell never runs longer than this, whatever happens.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	stopAt := start.Add(time.Duration(b.cfg.CellMaxS) * time.Second)
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if time.Now().After(stopAt) {
					return // the cell's time is up: rate over what completed
				}
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				m := modes[i%len(modes)]
				sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
				t0 := time.Now()
				got, err := miniFTP(sctx, l.Client, l.ClientIP4, target, benchFile, m)
				d := time.Since(t0)
				scancel()
				if err == nil && len(got) != b.cfg.FileBytes {
					err = fmt.Errorf("got %d bytes, want %d", len(got), b.cfg.FileBytes)
				}
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = fmt.Sprintf("%s: %v", m, err) })
					continue
				}
				durs[i], ok[i] = d, true
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var good []time.Duration
	for i := range durs {
		if ok[i] {
			good = append(good, durs[i])
		}
	}
	slices.Sort(good)
	res := CellResult{Setup: s, Round: round, Concurrency: c, Sessions: len(good), Failed: int(failed.Load()),
		Seconds: elapsed.Seconds(), FirstError: firstErr}
	if len(good) > 0 {
		res.Rate = float64(len(good)) / elapsed.Seconds()
		res.P50ms = durQuantile(good, 0.50).Seconds() * 1e3
		res.P99ms = durQuantile(good, 0.99).Seconds() * 1e3
	}
	return res
}

// durQuantile is the nearest-rank quantile of sorted durations.
func durQuantile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// benchBigGet downloads file in PASV mode and splices the data to /dev/null
// (it never enters this process's memory). It returns the time from sending
// RETR to the end of the data, and the byte count.
func benchBigGet(ctx context.Context, ns *NS, server netip.Addr, file string) (time.Duration, int64, error) {
	c, err := ns.DialContext(ctx, "tcp", netip.AddrPortFrom(server, 21).String())
	if err != nil {
		return 0, 0, fmt.Errorf("control: %w", err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	ctl := &benchCtl{c: c, r: bufio.NewReader(c)}
	if _, err := ctl.cmd("", "220"); err != nil {
		return 0, 0, err
	}
	if rep, err := ctl.cmd("USER anonymous", ""); err != nil {
		return 0, 0, err
	} else if strings.HasPrefix(rep, "331") {
		if _, err := ctl.cmd("PASS bench@", "230"); err != nil {
			return 0, 0, err
		}
	}
	if _, err := ctl.cmd("TYPE I", "200"); err != nil {
		return 0, 0, err
	}
	rep, err := ctl.cmd("PASV", "227")
	if err != nil {
		return 0, 0, err
	}
	m := re227.FindStringSubmatch(rep)
	if m == nil {
		return 0, 0, fmt.Errorf("bad 227 %q", rep)
	}
	var a [6]byte
	for i := range a {
		n, _ := strconv.Atoi(m[i+1])
		a[i] = byte(n)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), uint16(a[4])<<8|uint16(a[5]))
	data, err := ns.DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return 0, 0, fmt.Errorf("data connect %s: %w", ap, err)
	}
	defer data.Close()
	data.SetDeadline(deadline)
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	defer devnull.Close()
	start := time.Now()
	if _, err := ctl.cmd("RETR "+file, "150"); err != nil {
		return 0, 0, err
	}
	// *os.File.ReadFrom splices from the TCP socket: zero copy.
	n, err := io.Copy(devnull, data)
	d := time.Since(start)
	if err != nil {
		return d, n, fmt.Errorf("data: %w", err)
	}
	if _, err := ctl.cmd("", "226"); err != nil {
		return d, n, err
	}
	ctl.cmd("QUIT", "221")
	return d, n, nil
}

// benchCtl is a minimal control connection returning errors (no testing.T).
type benchCtl struct {
	c net.Conn
	r *bufio.Reader
}

func (b *benchCtl) cmd(line, want string) (string, error) {
	if line != "" {
		if _, err := b.c.Write([]byte(line + "\r\n")); err != nil {
			return "", err
		}
	}
	for {
		l, err := b.r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("%s: %w", line, err)
		}
		if len(l) >= 4 && l[3] == ' ' {
			l = strings.TrimRight(l, "\r\n")
			if !strings.HasPrefix(l, want) {
				return l, fmt.Errorf("%s: got %q, want %s", line, l, want)
			}
			return l, nil
		}
	}
}

// ---------------------------------------------------------------- /proc

// procCPUSeconds returns utime+stime of pid (all threads) in seconds.
func procCPUSeconds(pid int) float64 {
	user, sys := procCPUTimes(pid)
	return user + sys
}

// procCPUTimes returns utime and stime of pid (all threads) in seconds.
func procCPUTimes(pid int) (user, sys float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	const userHZ = 100 // USER_HZ: 100 on every Linux architecture Go supports
	return ut / userHZ, st / userHZ
}

// procContextSwitches returns the context switches (voluntary and not) of
// every thread of pid: each is a sleep and a wakeup, the unit of cost of a
// userspace relay.
func procContextSwitches(pid int) int64 {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	var n int64
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				c, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += c
			}
		}
	}
	return n
}

// procStatusKiB returns a "VmXxx:" value of /proc/<pid>/status in KiB.
func procStatusKiB(pid int, key string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// ---------------------------------------------------------------- metrics text

var bucketRe = regexp.MustCompile(`le="([^"]+)"\}\s+(\S+)`)

// parseBuckets reads the cumulative buckets of a histogram from /metrics text.
func parseBuckets(text, name string) []bucket {
	var out []bucket
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		m := bucketRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		le := math.MaxFloat64
		if m[1] != "+Inf" {
			le, _ = strconv.ParseFloat(m[1], 64)
		}
		c, _ := strconv.ParseFloat(m[2], 64)
		out = append(out, bucket{LE: le, Count: c})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LE < out[j].LE })
	return out
}

// metricValue returns a series' value from /metrics text (0 if absent).
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return 0
}

// bucketQuantile is Prometheus' histogram_quantile over cumulative buckets;
// it also returns the upper bound of the bucket the quantile falls in.
func bucketQuantile(bs []bucket, q float64) (v, le float64) {
	if len(bs) == 0 || bs[len(bs)-1].Count == 0 {
		return 0, 0
	}
	total := bs[len(bs)-1].Count
	rank := q * total
	prevLE, prevCount := 0.0, 0.0
	for _, b := range bs {
		if b.Count >= rank {
			if b.LE == math.MaxFloat64 {
				return prevLE, b.LE
			}
			if b.Count == prevCount {
				return b.LE, b.LE
			}
			return prevLE + (b.LE-prevLE)*(rank-prevCount)/(b.Count-prevCount), b.LE
		}
		prevLE, prevCount = b.LE, b.Count
	}
	return prevLE, prevLE
}

// addBuckets sums cumulative bucket counts of identical layouts.
func addBuckets(sum, add []bucket) []bucket {
	if sum == nil {
		return append([]bucket(nil), add...)
	}
	for i := range sum {
		if i < len(add) && add[i].LE == sum[i].LE {
			sum[i].Count += add[i].Count
		}
	}
	return sum
}

// subBuckets returns a - b of identical layouts (a histogram's growth).
func subBuckets(a, b []bucket) []bucket {
	out := append([]bucket(nil), a...)
	for i := range out {
		if i < len(b) && b[i].LE == out[i].LE {
			out[i].Count -= b[i].Count
		}
	}
	return out
}

// ---------------------------------------------------------------- idle memory

// idleServer greets and then holds every connection until closed.
type idleServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	n     atomic.Int64
}

func startIdleServer(t *testing.T, l *Lab) *idleServer {
	t.Helper()
	s := &idleServer{}
	if err := l.Server.Do(func() error {
		var err error
		s.ln, err = net.Listen("tcp", ":21")
		return err
	}); err != nil {
		t.Fatalf("idle server: %v", err)
	}
	go func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.n.Add(1)
			go func() {
				c.Write([]byte("220 idle bench server\r\n"))
				io.Copy(io.Discard, c) // until the peer or close() ends it
				c.Close()
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *idleServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
}

// raiseNoFile raises RLIMIT_NOFILE of this process (and so of the daemons it
// starts from now on) towards n and returns the soft limit in force; the old
// limit is restored in t.Cleanup. Raising the hard limit needs
// CAP_SYS_RESOURCE, which a container may not grant: then the soft limit goes
// up to the hard one only.
func raiseNoFile(t *testing.T, n uint64) uint64 {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	if old.Cur >= n {
		return old.Cur
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	lim := syscall.Rlimit{Cur: n, Max: max(old.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		return n
	}
	lim = syscall.Rlimit{Cur: old.Max, Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("setrlimit NOFILE %d: %v", old.Max, err)
	}
	return old.Max
}

func (b *benchRun) idleMemory(n int) *IdleResult {
	t := b.t
	requested := n
	// This process holds both ends' sockets outside ftpgate (client and
	// server: 2 per session), ftpgate its two.
	if lim := raiseNoFile(t, uint64(2*n+1024)); uint64(2*n+1024) > lim {
		capped := int(lim-1024) / 2
		b.logf("idle: RLIMIT_NOFILE is %d and cannot be raised (no CAP_SYS_RESOURCE?): %d sessions instead of %d", lim, capped, n)
		n = capped
	}
	b.logf("idle: %d control sessions through ftpgate (transparent) to an in-process server", n)
	l := NewLab(t)
	l.HostFirewall(t, true)
	srv := startIdleServer(t, l)
	g := l.StartFtpgate(t, "--log-level", "warn",
		"--max-sessions", strconv.Itoa(2*n), "--max-sessions-per-client", strconv.Itoa(2*n))
	pid := g.Cmd.Process.Pid
	res := &IdleResult{Mode: "transparent", Sessions: n, Requested: requested}

	open := func(count, parallel int) ([]net.Conn, error) {
		conns := make([]net.Conn, count)
		var next atomic.Int64
		var firstErr error
		var errOnce sync.Once
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		var wg sync.WaitGroup
		for range parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= count || ctx.Err() != nil {
						return
					}
					err := func() error {
						dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
						defer dcancel()
						c, err := l.Client.DialContext(dctx, "tcp", netip.AddrPortFrom(l.ServerIP4, 21).String())
						if err != nil {
							return err
						}
						c.SetReadDeadline(time.Now().Add(15 * time.Second))
						line, err := bufio.NewReader(c).ReadString('\n')
						c.SetReadDeadline(time.Time{})
						if err != nil || !strings.HasPrefix(line, "220") {
							c.Close()
							return fmt.Errorf("greeting %q: %v", line, err)
						}
						conns[i] = c
						return nil
					}()
					if err != nil {
						errOnce.Do(func() { firstErr = fmt.Errorf("connection %d: %w", i, err) })
						cancel()
						return
					}
				}
			}()
		}
		wg.Wait()
		return conns, firstErr
	}
	closeAll := func(conns []net.Conn) {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	settle := func(want float64) bool {
		return waitFor(30*time.Second, func() bool { return g.MetricSum(t, "ftpgate_sessions_active", nil) == want })
	}

	// Warm up: the first sessions grow the heap and the runtime's pools.
	warm, err := open(200, 16)
	closeAll(warm)
	if err != nil {
		res.Error = "warm-up: " + err.Error()
		return res
	}
	settle(0)
	time.Sleep(time.Second)
	m0 := g.Metrics(t)
	res.RSSBeforeKiB = procStatusKiB(pid, "VmRSS")
	fd0 := openFDs(pid)

	start := time.Now()
	conns, err := open(n, 64)
	res.OpenSeconds = time.Since(start).Seconds()
	defer closeAll(conns)
	if err != nil {
		res.Error = err.Error()
		b.logf("idle: FAILED: %v", err)
		return res
	}
	if !settle(float64(n)) {
		res.Error = fmt.Sprintf("sessions_active %v, want %d", g.MetricSum(t, "ftpgate_sessions_active", nil), n)
	}
	time.Sleep(2 * time.Second) // let ftpgate's goroutines park and the scavenger settle
	m1 := g.Metrics(t)
	res.RSSAfterKiB = procStatusKiB(pid, "VmRSS")
	fd1 := openFDs(pid)
	res.BytesPerSession = float64(res.RSSAfterKiB-res.RSSBeforeKiB) * 1024 / float64(n)
	res.HeapPerSession = (metricValue(m1, "go_memstats_heap_inuse_bytes") - metricValue(m0, "go_memstats_heap_inuse_bytes")) / float64(n)
	res.GoroutinesPerSes = (metricValue(m1, "go_goroutines") - metricValue(m0, "go_goroutines")) / float64(n)
	res.FDsPerSession = float64(fd1-fd0) / float64(n)
	b.logf("idle: %d sessions opened in %.1f s; ftpgate RSS %d -> %d KiB = %.0f B/session (heap in use %.0f B, %.1f goroutines, %.1f fds per session); server holds %d",
		n, res.OpenSeconds, res.RSSBeforeKiB, res.RSSAfterKiB, res.BytesPerSession, res.HeapPerSession, res.GoroutinesPerSes, res.FDsPerSession, srv.n.Load()-200)

	closeAll(conns)
	conns = nil
	if !settle(0) {
		b.logf("idle: sessions still active after closing: %v", g.MetricSum(t, "ftpgate_sessions_active", nil))
	}
	_ = g.Stop(10 * time.Second)
	srv.close()
	return res
}

// ---------------------------------------------------------------- churn

var (
	churnRateRe = regexp.MustCompile(`([0-9.e+]+) pinholes/s`)
	churnNsRe   = regexp.MustCompile(`([0-9.e+]+) ns/op`)
)

// churn runs the nft package's BenchmarkPinholeChurn (its own namespace).
func (b *benchRun) churn(benchtime string) *ChurnResult {
	b.logf("churn: go test -bench BenchmarkPinholeChurn -benchtime %s ./nft", benchtime)
	goBin := os.Getenv("FTPGATE_BENCH_GO")
	if goBin == "" {
		goBin = "go"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"test", "-count=1", "-run", "^$", "-bench", "^BenchmarkPinholeChurn$", "-benchtime", benchtime}
	if p := os.Getenv("FTPGATE_BENCH_CHURN_CPUPROFILE"); p != "" {
		args = append(args, "-cpuprofile", p)
	}
	cmd := exec.CommandContext(ctx, goBin, append(args, "./nft")...)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	res := &ChurnResult{Output: strings.TrimSpace(string(out))}
	if err != nil {
		res.Error = err.Error()
		b.logf("churn: FAILED: %v\n%s", err, out)
		return res
	}
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, "BenchmarkPinholeChurn") {
			continue
		}
		if m := churnRateRe.FindStringSubmatch(line); m != nil {
			res.PinholesPerS, _ = strconv.ParseFloat(m[1], 64)
		}
		if m := churnNsRe.FindStringSubmatch(line); m != nil {
			res.NsPerOp, _ = strconv.ParseFloat(m[1], 64)
		}
		res.Output = strings.TrimSpace(line)
	}
	if res.PinholesPerS == 0 {
		res.Error = "no pinholes/s in the benchmark output"
	}
	b.logf("churn: %.0f pinholes/s (%.0f ns per open+close)", res.PinholesPerS, res.NsPerOp)
	return res
}

// ---------------------------------------------------------------- summary

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// pairedRatio is the median over rounds of value(setup, round) /
// value(helper, same round); 0 when no round has both.
func pairedRatio(vals, base map[int]float64) float64 {
	var rs []float64
	for r, v := range vals {
		if bv, ok := base[r]; ok && bv > 0 && v > 0 {
			rs = append(rs, v/bv)
		}
	}
	return median(rs)
}

// pairedDelta is the median over rounds of value - helper's value in the
// same round; 0 when no round has both.
func pairedDelta(vals, base map[int]float64) float64 {
	var ds []float64
	for r, v := range vals {
		if bv, ok := base[r]; ok {
			ds = append(ds, v-bv)
		}
	}
	return median(ds)
}

func (b *benchRun) summarise() {
	rep := b.rep
	type key struct {
		s string
		c int
	}
	rate, p50, p99 := map[key]map[int]float64{}, map[key]map[int]float64{}, map[key]map[int]float64{}
	failed := map[key]int{}
	for _, c := range rep.Cells {
		k := key{c.Setup, c.Concurrency}
		if rate[k] == nil {
			rate[k], p50[k], p99[k] = map[int]float64{}, map[int]float64{}, map[int]float64{}
		}
		failed[k] += c.Failed
		if c.Sessions > 0 {
			rate[k][c.Round], p50[k][c.Round], p99[k][c.Round] = c.Rate, c.P50ms, c.P99ms
		}
	}
	vals := func(m map[int]float64) []float64 {
		var v []float64
		for _, x := range m {
			v = append(v, x)
		}
		return v
	}
	rep.Sessions = nil
	for _, s := range b.setups {
		for _, c := range b.cfg.Concurrency {
			k, hk := key{s, c}, key{setupHelper, c}
			rep.Sessions = append(rep.Sessions, SummaryRow{
				Setup: s, Concurrency: c,
				Rate: median(vals(rate[k])), RateRatio: pairedRatio(rate[k], rate[hk]),
				P50ms: median(vals(p50[k])), P50Ratio: pairedRatio(p50[k], p50[hk]), P50DeltaMs: pairedDelta(p50[k], p50[hk]),
				P99ms: median(vals(p99[k])), P99Ratio: pairedRatio(p99[k], p99[hk]),
				Failed: failed[k],
			})
		}
	}

	thru := map[string]map[int]float64{}
	bigFailed := map[string]int{}
	for _, r := range rep.Big {
		if thru[r.Setup] == nil {
			thru[r.Setup] = map[int]float64{}
		}
		if r.Error != "" {
			bigFailed[r.Setup]++
			continue
		}
		thru[r.Setup][r.Round] = r.MiBps
	}
	rep.Throughput = nil
	if b.cfg.BigMiB > 0 {
		for _, s := range b.setups {
			rep.Throughput = append(rep.Throughput, ThroughputRow{Setup: s, MiBps: median(vals(thru[s])),
				Ratio: pairedRatio(thru[s], thru[setupHelper]), Failed: bigFailed[s]})
		}
	}

	rep.Daemon = nil
	for _, s := range daemonSetups {
		if !slices.Contains(b.setups, s) {
			continue
		}
		for _, conc := range append([]int{0}, b.cfg.Concurrency...) {
			row := DaemonRow{Setup: s, Concurrency: conc}
			var cpu, user float64
			var cs int64
			var bs []bucket
			for _, c := range rep.Cells {
				if c.Setup != s || (conc != 0 && c.Concurrency != conc) {
					continue
				}
				row.Sessions += c.Sessions
				cpu += c.DaemonCPUSeconds
				user += c.DaemonUserSeconds
				cs += c.DaemonCtxSwitch
				bs = addBuckets(bs, c.PinholeBuckets)
				row.FirewallErrs += c.FirewallErrors
			}
			if row.Sessions > 0 {
				row.CPUPerSessUs = 1e6 * cpu / float64(row.Sessions)
				row.UserPerSessUs = 1e6 * user / float64(row.Sessions)
				row.CtxSwPerSess = float64(cs) / float64(row.Sessions)
			}
			if len(bs) > 0 {
				row.PinholeOpens = bs[len(bs)-1].Count
				p50, _ := bucketQuantile(bs, 0.50)
				p99, le := bucketQuantile(bs, 0.99)
				row.PinholeP50us, row.PinholeP99us = 1e6*p50, 1e6*p99
				if le != math.MaxFloat64 {
					row.PinholeP99Max = 1e6 * le
				}
			}
			rep.Daemon = append(rep.Daemon, row)
		}
	}
	relayCPU := map[int]float64{}
	for _, r := range rep.Daemon {
		if r.Setup == setupRelay && r.CPUPerSessUs > 0 { // a ratio base: not a tick-less cell
			relayCPU[r.Concurrency] = r.CPUPerSessUs
		}
	}
	for i, r := range rep.Daemon {
		if base, ok := relayCPU[r.Concurrency]; ok && r.Setup != setupRelay && r.Sessions > 0 {
			over := math.Round(r.CPUPerSessUs-base) + 0 // + 0: no "-0"
			rep.Daemon[i].OverRelayUs = &over
		}
	}

	// Figures against the targets.
	rep.Figures = nil
	fig := func(name, setup string, v float64, unit string, target float64, atLeast bool, avail bool) {
		f := Figure{Name: name, Setup: setup, Value: v, Unit: unit}
		op := "<="
		if atLeast {
			op = ">="
		}
		f.Target = fmt.Sprintf("%s %s", op, fmtNum(target))
		switch {
		case !avail:
			f.Result = "n/a"
		case atLeast && v >= target, !atLeast && v <= target:
			f.Result = "PASS"
		default:
			f.Result = "MISS"
		}
		rep.Figures = append(rep.Figures, f)
	}
	for _, s := range []string{setupTransparent, setupReverse} {
		if !slices.Contains(b.setups, s) {
			continue
		}
		for _, row := range rep.Sessions {
			if row.Setup != s {
				continue
			}
			c := fmt.Sprintf(" (c=%d)", row.Concurrency)
			fig("sessions/s ratio to helper"+c, s, row.RateRatio, "x", targetRateRatio, true, row.RateRatio > 0)
			fig("session p50 ratio to helper"+c, s, row.P50Ratio, "x", targetLatRatio, false, row.P50Ratio > 0)
			fig("session p99 ratio to helper"+c, s, row.P99Ratio, "x", targetLatRatio, false, row.P99Ratio > 0)
		}
		for _, row := range rep.Throughput {
			if row.Setup == s {
				fig(fmt.Sprintf("%d MiB RETR throughput ratio to helper", b.cfg.BigMiB), s, row.Ratio, "x", targetThruRatio, true, row.Ratio > 0)
			}
		}
		for _, row := range rep.Daemon {
			if row.Setup == s && row.Concurrency == 0 {
				fig("ftpgate CPU per session (all cells)", s, row.CPUPerSessUs, "µs", targetCPUPerSession*1e6, false, row.Sessions > 0)
			}
		}
		for _, row := range rep.Daemon {
			if row.Setup == s && row.Concurrency != 0 {
				fig(fmt.Sprintf("pinhole open latency p99 (c=%d)", row.Concurrency), s, row.PinholeP99us, "µs", targetPinholeP99*1e6, false, row.PinholeOpens > 0)
			}
		}
	}
	if c := rep.Churn; c != nil {
		fig("pinhole churn (open+close)", "nft", c.PinholesPerS, "/s", targetChurn, true, c.Error == "")
	}
	if i := rep.Idle; i != nil {
		fig("RSS per idle control session", i.Mode, i.BytesPerSession/1024, "KiB", targetIdleBytes/1024, false, i.Error == "")
	}
}

func fmtNum(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func fmtRatio(v float64) string {
	if v == 0 {
		return "  n/a"
	}
	return fmt.Sprintf("%5.2f", v)
}

// table renders the report as text (printed and kept in the JSON).
func (b *benchRun) table() string {
	rep := b.rep
	var w strings.Builder
	m := rep.Machine
	fmt.Fprintf(&w, "ftpgate benchmark — %s — %s\n", rep.Started.Format(time.RFC3339), m.Host)
	fmt.Fprintf(&w, "machine: %d x %s, kernel %s, %s, %s; getpid() %.0f ns; load average %s at start, %s at end\n",
		m.NProc, m.CPU, m.Kernel, m.MemTotal, m.GoVersion, m.GetpidNs, rep.LoadStart, rep.LoadEnd)
	fmt.Fprintf(&w, "run: %d rounds (setup order rotated each round), %d sessions per cell, modes %v over IPv4, %d-byte RETR; ftpgate --nice %d --rt-priority %d --sysmon-poll=%t; %.0f s\n",
		rep.Config.RoundsDone, b.cfg.Sessions, b.cfg.Modes, b.cfg.FileBytes, b.cfg.Nice, b.cfg.RTPriority, b.cfg.SysmonPoll, rep.Seconds)
	fmt.Fprintf(&w, "medians over rounds; ratios = median over rounds of (setup / kernel helper in the same round)\n\n")
	for s, why := range rep.Skipped {
		fmt.Fprintf(&w, "SKIPPED %s: %s\n", s, why)
	}
	fmt.Fprintf(&w, "%-26s %5s %11s %6s %9s %6s %8s %9s %6s %6s\n", "setup", "conc", "sessions/s", "ratio", "p50 ms", "ratio", "Δp50 ms", "p99 ms", "ratio", "failed")
	for _, r := range rep.Sessions {
		delta := "     n/a"
		if r.Setup == setupHelper || r.P50Ratio != 0 {
			delta = fmt.Sprintf("%+8.2f", r.P50DeltaMs)
		}
		fmt.Fprintf(&w, "%-26s %5d %11.1f %6s %9.2f %6s %8s %9.2f %6s %6d\n", setupTitle[r.Setup], r.Concurrency,
			r.Rate, fmtRatio(r.RateRatio), r.P50ms, fmtRatio(r.P50Ratio), delta, r.P99ms, fmtRatio(r.P99Ratio), r.Failed)
	}
	if len(rep.Throughput) > 0 {
		fmt.Fprintf(&w, "\n%-26s %11s %6s %6s   (%d MiB sparse file, PASV, spliced to /dev/null; best of %d per visit)\n", "setup", "MiB/s", "ratio", "failed", b.cfg.BigMiB, b.cfg.BigReps)
		for _, r := range rep.Throughput {
			fmt.Fprintf(&w, "%-26s %11.0f %6s %6d\n", setupTitle[r.Setup], r.MiBps, fmtRatio(r.Ratio), r.Failed)
		}
	}
	if len(rep.Daemon) > 0 {
		fmt.Fprintf(&w, "\n%-26s %5s %9s %12s %9s %10s %9s %12s %17s %8s\n", "daemon on the gateway", "conc", "sessions", "CPU µs/sess", "of it user", "cswch/sess", "pinholes", "open p50 µs", "open p99 µs", "fw errs")
		for _, r := range rep.Daemon {
			conc := "all"
			if r.Concurrency != 0 {
				conc = strconv.Itoa(r.Concurrency)
			}
			opens, p50, p99, errs := "-", "-", "-", "-" // the plain relay opens nothing
			if r.Setup != setupRelay {
				opens, p50, p99, errs = fmtNum(r.PinholeOpens), fmt.Sprintf("%.0f", r.PinholeP50us), fmt.Sprintf("%.0f", r.PinholeP99us), fmtNum(r.FirewallErrs)
				if r.PinholeP99Max > 0 {
					p99 = fmt.Sprintf("%.0f (≤%.0f)", r.PinholeP99us, r.PinholeP99Max)
				}
			}
			fmt.Fprintf(&w, "%-26s %5s %9d %12.1f %9.1f %10.1f %9s %12s %17s %8s\n", setupTitle[r.Setup], conc, r.Sessions, r.CPUPerSessUs, r.UserPerSessUs, r.CtxSwPerSess, opens, p50, p99, errs)
		}
		for _, r := range rep.Daemon {
			if r.Concurrency == 0 && r.OverRelayUs != nil {
				over := *r.OverRelayUs
				fmt.Fprintf(&w, "%s: %+.0f µs CPU per session above the plain relay (%+.0f %%)\n", setupTitle[r.Setup], over,
					100*over/(r.CPUPerSessUs-over))
			}
		}
	}
	if i := rep.Idle; i != nil {
		capped := ""
		if i.Requested > i.Sessions {
			capped = fmt.Sprintf(" (of %d asked: RLIMIT_NOFILE)", i.Requested)
		}
		fmt.Fprintf(&w, "\nidle sessions (%s): %d%s, RSS %d -> %d KiB = %.1f KiB/session (Go heap in use %.1f KiB, %.1f goroutines, %.1f fds per session)%s\n",
			i.Mode, i.Sessions, capped, i.RSSBeforeKiB, i.RSSAfterKiB, i.BytesPerSession/1024, i.HeapPerSession/1024, i.GoroutinesPerSes, i.FDsPerSession, errSuffix(i.Error))
	}
	if c := rep.Churn; c != nil {
		fmt.Fprintf(&w, "pinhole churn (nft BenchmarkPinholeChurn): %.0f open+close/s, %.0f ns each%s\n", c.PinholesPerS, c.NsPerOp, errSuffix(c.Error))
	}
	fmt.Fprintf(&w, "\n%-46s %-12s %10s %-4s %12s  %s\n", "figure", "setup", "value", "", "target", "result")
	for _, f := range rep.Figures {
		fmt.Fprintf(&w, "%-46s %-12s %10s %-4s %12s  %s\n", f.Name, f.Setup, fmtNum(f.Value), f.Unit, f.Target, f.Result)
	}
	pass, miss := 0, 0
	for _, f := range rep.Figures {
		switch f.Result {
		case "PASS":
			pass++
		case "MISS":
			miss++
		}
	}
	fmt.Fprintf(&w, "targets: %d PASS, %d MISS (informational)\n", pass, miss)
	return w.String()
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return "  ERROR: " + e
}

func (b *benchRun) writeJSON() {
	dir := os.Getenv("FTPGATE_BENCH_OUT")
	switch {
	case dir == "":
		dir = filepath.Join("..", "bench", "results")
	case !filepath.IsAbs(dir):
		dir = filepath.Join("..", dir) // relative to the repository, not to e2e/ where go test runs
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Errorf("bench results: %v", err)
		return
	}
	host := b.rep.Machine.Host
	if host == "" {
		host = "unknown"
	}
	name := fmt.Sprintf("%s-%s.json", b.rep.Started.Format("2006-01-02T150405"), strings.ReplaceAll(host, "/", "_"))
	path := filepath.Join(dir, name)
	js, err := json.MarshalIndent(b.rep, "", "  ")
	if err != nil {
		b.t.Errorf("bench results: %v", err)
		return
	}
	if err := os.WriteFile(path, append(js, '\n'), 0o644); err != nil {
		b.t.Errorf("bench results: %v", err)
		return
	}
	abs, _ := filepath.Abs(path)
	b.logf("results written to %s", abs)
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func machineInfo() MachineInfo {
	m := MachineInfo{NProc: runtime.NumCPU(), GoVersion: runtime.Version()}
	const calls = 200000
	t0 := time.Now()
	for range calls {
		syscall.Getpid()
	}
	m.GetpidNs = float64(time.Since(t0).Nanoseconds()) / calls
	m.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if line, _, ok := strings.Cut(string(b), "\n"); ok {
			m.MemTotal = strings.Join(strings.Fields(line), " ")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "git", "-C", "..", "describe", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	return m
}
