package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inChild reports whether this process is the child runChild started for
// the test name.
func inChild(name string) bool { return os.Getenv("FTPGATE_TEST_CHILD") == name }

// runChild runs test name again in a child process (this test binary), so
// that the scheduling changes it makes stay out of the test process.
func runChild(t *testing.T, name string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "FTPGATE_TEST_CHILD="+name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
}

// startNice is the nice value the process runs at (inherited from whoever
// started the tests). Without CAP_SYS_NICE a process cannot go below it, and
// leaving real-time scheduling keeps it, so the tests aim at or above it.
func startNice(t *testing.T) int {
	t.Helper()
	p, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	return 20 - p // the raw system call returns 20-nice
}

// startThreads starts n new threads (locked goroutines force them) and runs
// check on each.
func startThreads(n int, check func()) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			check()
		}()
	}
	wg.Wait()
}

// TestSetNice renices a child process and checks every thread, including
// ones started afterwards, has the value.
func TestSetNice(t *testing.T) {
	if !inChild(t.Name()) {
		runChild(t, t.Name())
		return
	}
	nice := max(7, startNice(t))
	if err := setNice(nice); err != nil {
		t.Fatal(err)
	}
	startThreads(4, func() {
		if p, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err != nil || 20-p != nice {
			t.Errorf("new thread: getpriority = %d, %v; want nice %d", p, err, nice)
		}
	})
	forEachThread(func(tid int) error {
		// The raw syscall returns 20-nice.
		p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err == unix.ESRCH {
			return nil // a startThreads thread ending: locked goroutines end theirs
		}
		if err != nil || 20-p != nice {
			t.Errorf("thread %d: getpriority = %d, %v; want nice %d", tid, p, err, nice)
		}
		return nil
	})
}

// wantPolicy checks that every thread of the process has policy, priority
// and nice value.
func wantPolicy(t *testing.T, policy, prio uint32, nice int32) {
	t.Helper()
	forEachThread(func(tid int) error {
		a, err := unix.SchedGetAttr(tid, 0)
		// getpriority: sched_getattr reports no nice value for real-time threads.
		p, perr := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err == unix.ESRCH || perr == unix.ESRCH {
			return nil // a startThreads thread ending between the two calls
		}
		if err != nil || perr != nil || a.Policy != policy || a.Priority != prio || int32(20-p) != nice {
			t.Errorf("thread %d: sched_getattr = %+v, %v, getpriority %d, %v; want policy %d priority %d nice %d", tid, a, err, p, perr, policy, prio, nice)
		}
		return nil
	})
}

// TestSetRealtime puts a child process under SCHED_RR, checks every thread
// (new ones too) has it, then leaves it: normal scheduling, the nice value
// kept.
func TestSetRealtime(t *testing.T) {
	if !inChild(t.Name()) {
		runChild(t, t.Name())
		return
	}
	nice := max(5, startNice(t))
	if err := setNice(nice); err != nil {
		t.Fatal(err)
	}
	if err := setRealtime(3); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("no real-time scheduling here (not root, or no CAP_SYS_NICE): %v", err)
		}
		t.Fatal(err)
	}
	if !strings.Contains(fmt.Sprint(setRealtime(100)), "--rt-priority 100") {
		t.Error("setRealtime(100) error does not name the flag")
	}
	startThreads(4, func() {
		if !isRealtime() {
			t.Error("new thread: not real-time")
		}
	})
	wantPolicy(t, unix.SCHED_RR, 3, int32(nice))
	if err := leaveRealtime(); err != nil {
		t.Fatal(err)
	}
	wantPolicy(t, unix.SCHED_NORMAL, 0, int32(nice))
}

// TestRealtimeGuard runs a child at real-time priority with a 20 ms budget
// and spins: the kernel's SIGXCPU must bring every thread back to normal
// scheduling, with a log line, and the spin ends.
func TestRealtimeGuard(t *testing.T) {
	if !inChild(t.Name()) {
		runChild(t, t.Name())
		return
	}
	// One P: the spinning goroutine's thread never blocks, and the guard
	// still runs when the runtime preempts the spin.
	runtime.GOMAXPROCS(1)
	nice := startNice(t)
	var g realtimeGuard
	var logged syncBuffer // the guard logs from its goroutine
	log := slog.New(slog.NewTextHandler(&logged, nil))
	if err := g.start(log, 20*time.Millisecond); err != nil || g.on.Load() {
		t.Fatalf("guard at normal priority: armed %v, %v; want not armed, no error", g.on.Load(), err)
	}
	if err := setRealtime(1); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("no real-time scheduling here (not root, or no CAP_SYS_NICE): %v", err)
		}
		t.Fatal(err)
	}
	if err := g.start(log, 20*time.Millisecond); err != nil || !g.on.Load() {
		t.Fatalf("guard at real-time priority: armed %v, %v", g.on.Load(), err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_RTTIME, &lim); err != nil || lim.Cur != 20000 {
		t.Errorf("RLIMIT_RTTIME = %+v, %v; want soft limit 20000 µs", lim, err)
	}
	// Bounded: a real-time spin on one CPU, for the budget (or 5 s at most).
	deadline := time.Now().Add(5 * time.Second)
	for g.on.Load() && time.Now().Before(deadline) {
	}
	if g.on.Load() {
		leaveRealtime()
		t.Fatal("still real-time 5 s into a spin with a 20 ms budget")
	}
	for time.Now().Before(deadline) && !strings.Contains(logged.String(), "level=ERROR") {
		time.Sleep(time.Millisecond)
	}
	wantPolicy(t, unix.SCHED_NORMAL, 0, int32(nice))
	if !strings.Contains(logged.String(), "real-time priority") {
		t.Errorf("log = %q, want a line saying why real-time scheduling ended", logged.String())
	}
}

// TestSchedRanges: scheduling values outside the kernel's range are refused.
func TestSchedRanges(t *testing.T) {
	for _, tc := range []struct{ flag, value string }{
		{"--nice", "-21"}, {"--nice", "20"},
		{"--rt-priority", "-1"}, {"--rt-priority", "100"},
	} {
		o, err := parseOptions("run", []string{tc.flag, tc.value})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.proxyConfig(); err == nil {
			t.Errorf("%s %s accepted", tc.flag, tc.value)
		}
	}
}

func TestSetProcs(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(prev)

	runtime.GOMAXPROCS(3)
	t.Setenv("GOMAXPROCS", "3")
	setProcs(1, false) // the default does not override the environment
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("default --procs with GOMAXPROCS=3 set: GOMAXPROCS %d, want 3", got)
	}
	setProcs(1, true)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("--procs 1: GOMAXPROCS %d, want 1", got)
	}
	os.Unsetenv("GOMAXPROCS")
	setProcs(2, false)
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Errorf("default --procs 2 without GOMAXPROCS: GOMAXPROCS %d, want 2", got)
	}
	setProcs(0, true)
	if got := runtime.GOMAXPROCS(0); got < 1 {
		t.Errorf("--procs 0: GOMAXPROCS %d", got)
	}
}

func TestProcsOption(t *testing.T) {
	o, err := parseOptions("run", nil)
	if err != nil || o.procs != 1 || o.procsSet {
		t.Fatalf("no --procs: %+v %v, want procs 1, not set", o.procs, err)
	}
	t.Setenv("FTPGATE_PROCS", "4")
	o, err = parseOptions("run", nil)
	if err != nil || o.procs != 4 || !o.procsSet {
		t.Fatalf("FTPGATE_PROCS=4: procs %d set %v, %v", o.procs, o.procsSet, err)
	}
	o, _ = parseOptions("run", []string{"--procs", "-1"})
	if _, err := o.proxyConfig(); err == nil {
		t.Error("--procs -1 accepted")
	}
}

func TestSysmonPolls(t *testing.T) {
	tests := []struct {
		godebug string
		want    bool
	}{
		{"", false},
		{sysmonPollGODEBUG, true},
		{"schedtrace=1000", true},
		{"schedtrace=0", false},
		{"madvdontneed=1," + sysmonPollGODEBUG, true},
		{sysmonPollGODEBUG + ",schedtrace=0", false},   // the last one wins
		{sysmonPollGODEBUG + ",schedtrace=junk", true}, // the runtime skips invalid values
		{"schedtrace=99999999999", false},              // out of int32: skipped
		{"xschedtrace=5", false},
	}
	for _, tc := range tests {
		if got := sysmonPolls(tc.godebug); got != tc.want {
			t.Errorf("sysmonPolls(%q) = %v, want %v", tc.godebug, got, tc.want)
		}
	}
}

func TestWithSysmonPoll(t *testing.T) {
	tests := []struct {
		env  []string
		want []string
	}{
		{[]string{"PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=" + sysmonPollGODEBUG}},
		{[]string{"GODEBUG=", "A=1"}, []string{"A=1", "GODEBUG=" + sysmonPollGODEBUG}},
		{[]string{"GODEBUG=madvdontneed=1", "A=1"}, []string{"A=1", "GODEBUG=madvdontneed=1," + sysmonPollGODEBUG}},
		{[]string{"GODEBUG=schedtrace=0"}, []string{"GODEBUG=schedtrace=0," + sysmonPollGODEBUG}},
	}
	for _, tc := range tests {
		got := withSysmonPoll(tc.env)
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("withSysmonPoll(%q) = %q, want %q", tc.env, got, tc.want)
		}
		if !sysmonPolls(strings.TrimPrefix(got[len(got)-1], "GODEBUG=")) {
			t.Errorf("withSysmonPoll(%q): sysmon would not poll", tc.env)
		}
	}
}

// TestExecWithSysmonPoll executes a child process again the way --sysmon-poll
// does and checks that, idle, the runtime's monitor thread keeps waking (a
// deeply asleep one would not switch at all while the process sleeps).
func TestExecWithSysmonPoll(t *testing.T) {
	if !inChild(t.Name()) {
		runChild(t, t.Name())
		return
	}
	if !sysmonPolls(os.Getenv("GODEBUG")) {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGHUP)
		sigs <- syscall.SIGHUP            // a pending reload does not stop the exec
		t.Fatal(execWithSysmonPoll(sigs)) // returns only on failure
	}
	// Until run's signal.Notify, a SIGHUP must not end the new image.
	if !sigIgnored(t, syscall.SIGHUP) {
		t.Error("SIGHUP not ignored after the exec")
	}
	// Polling sysmon wakes ~100 times a second, a deeply asleep one about
	// never: a low bar tells them apart even on a starved machine.
	before := contextSwitches(t)
	time.Sleep(time.Second)
	if n := contextSwitches(t) - before; n < 5 {
		t.Errorf("%d context switches in 1 s idle with GODEBUG=%s; want sysmon polling (~100)", n, os.Getenv("GODEBUG"))
	}
}

// A stop signal caught before the exec ends the start-up there.
func TestExecWithSysmonPollStopPending(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	sigs <- syscall.SIGHUP
	sigs <- syscall.SIGTERM
	if err := execWithSysmonPoll(sigs); err != nil {
		t.Fatalf("execWithSysmonPoll with a SIGTERM pending = %v, want nil without executing", err)
	}
}

// sigIgnored reports whether the process ignores sig (SigIgn in
// /proc/self/status, a hex mask with bit sig-1).
func sigIgnored(t *testing.T, sig syscall.Signal) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return mask&(1<<(uint(sig)-1)) != 0
		}
	}
	t.Fatal("no SigIgn in /proc/self/status")
	return false
}

// contextSwitches sums the voluntary and involuntary context switches of
// every thread of the process.
func contextSwitches(t *testing.T) int {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/status")
		if err != nil {
			continue // exited meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 2 && strings.HasSuffix(f[0], "ctxt_switches:") {
				v, _ := strconv.Atoi(f[1])
				n += v
			}
		}
	}
	return n
}
