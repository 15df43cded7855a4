package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// forEachThread calls fn with the id of every thread of the process. Linux
// keeps scheduling settings per thread and a new thread inherits its
// creator's, so going over the threads that exist twice (for any created
// meanwhile) covers the process for good. A thread that exited meanwhile
// (ESRCH) is skipped.
func forEachThread(fn func(tid int) error) error {
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("list threads: %w", err)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := fn(tid); err != nil && err != unix.ESRCH {
				return err
			}
		}
	}
	return nil
}

// setNice gives every thread of the process the nice value n. Like
// conntrackd's Nice setting: a gateway helper whose CPU use is small but sits
// on the path of every FTP negotiation should not wait behind bulk work for
// a CPU.
func setNice(n int) error {
	err := forEachThread(func(tid int) error { return unix.Setpriority(unix.PRIO_PROCESS, tid, n) })
	if err != nil {
		hint := ""
		if err == unix.EACCES || err == unix.EPERM {
			hint = " — a nice value below the current one needs CAP_SYS_NICE; under systemd set Nice= in the unit instead"
		}
		return fmt.Errorf("--nice %d: %w%s", n, err, hint)
	}
	return nil
}

// rtBudget is how long a thread may run at a real-time priority without
// blocking before the kernel (RLIMIT_RTTIME) signals SIGXCPU and ftpgate
// leaves real-time scheduling: a proxy that needs a CPU for that long is
// overloaded or looping, and must not starve the gateway. Normal bursts are
// milliseconds.
const rtBudget = 200 * time.Millisecond

// setRealtime puts every thread of the process under SCHED_RR at priority
// prio. Under CPU contention a woken ftpgate thread otherwise waits behind
// the running tasks for their slice (milliseconds in the benchmark's
// 64-client runs, whatever the nice value); a real-time thread runs at the
// next preemption point. Threads keep their nice value for when they leave.
func setRealtime(prio int) error {
	err := forEachThread(func(tid int) error {
		return unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: unix.SCHED_RR, Priority: uint32(prio)}, 0)
	})
	if err != nil {
		hint := ""
		if err == unix.EPERM {
			hint = " — real-time scheduling needs CAP_SYS_NICE (and, on kernels with CONFIG_RT_GROUP_SCHED, a real-time budget for the cgroup); under systemd set CPUSchedulingPolicy=rr and CPUSchedulingPriority= in the unit instead, or run without --rt-priority"
		}
		return fmt.Errorf("--rt-priority %d: %w%s", prio, err, hint)
	}
	return nil
}

// isRealtime reports whether the calling thread runs under a real-time policy.
func isRealtime() bool {
	a, err := unix.SchedGetAttr(0, 0)
	return err == nil && (a.Policy == unix.SCHED_RR || a.Policy == unix.SCHED_FIFO)
}

// leaveRealtime moves every real-time thread of the process to normal
// scheduling, with the nice value it had. Needs no privilege.
func leaveRealtime() error {
	return forEachThread(func(tid int) error {
		a, err := unix.SchedGetAttr(tid, 0)
		if err != nil || (a.Policy != unix.SCHED_RR && a.Policy != unix.SCHED_FIFO) {
			return err
		}
		// sched_getattr reports no nice value for a real-time thread, but
		// the kernel keeps it: getpriority returns it (as 20 - nice).
		p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err != nil {
			return err
		}
		return unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: unix.SCHED_NORMAL, Nice: int32(20 - p)}, 0)
	})
}

// realtimeGuard watches a daemon that runs at a real-time priority, set by
// --rt-priority or from outside (systemd's CPUSchedulingPolicy=, chrt): it
// lowers RLIMIT_RTTIME to budget, so that the kernel sends SIGXCPU when a
// thread runs that long without blocking, and then leaves real-time
// scheduling for good, logs why and clears the flag behind the
// ftpgate_realtime_scheduling gauge. Like keepalived's RLIMIT_RTTIME guard,
// but degrading instead of dying.
type realtimeGuard struct {
	on atomic.Bool
}

// start arms the guard if the process runs at a real-time priority now.
func (g *realtimeGuard) start(log *slog.Logger, budget time.Duration) error {
	runtime.LockOSThread()
	rt := isRealtime()
	runtime.UnlockOSThread()
	if !rt {
		return nil
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_RTTIME, &lim); err != nil {
		return fmt.Errorf("real-time guard: RLIMIT_RTTIME: %w", err)
	}
	us := uint64(budget / time.Microsecond)
	if lim.Cur > us {
		lim.Cur = min(us, lim.Max)
		if err := unix.Setrlimit(unix.RLIMIT_RTTIME, &lim); err != nil {
			return fmt.Errorf("real-time guard: lower RLIMIT_RTTIME to %v: %w", budget, err)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGXCPU)
	g.on.Store(true)
	go func() {
		<-sig
		signal.Stop(sig) // later SIGXCPUs are ignored (the Go runtime's default)
		budget := time.Duration(lim.Cur) * time.Microsecond
		if err := leaveRealtime(); err != nil {
			log.Error("a thread ran at real-time priority without pause for longer than the budget, and leaving real-time scheduling failed: ftpgate stays at it, bounded only by the kernel's real-time throttling (allow it sched_setattr)",
				"budget", budget, "error", err)
			return
		}
		g.on.Store(false)
		log.Error("a thread ran at real-time priority without pause for longer than the budget; ftpgate now runs at normal priority until restarted (is it overloaded? see ftpgate_sessions_active and the CPU it uses)",
			"budget", budget)
	}()
	return nil
}

// setProcs applies --procs: GOMAXPROCS n, or the runtime's own default (one
// per CPU, within the cgroup's limit) for 0. Unless --procs was given, a
// GOMAXPROCS environment variable stays in force.
func setProcs(n int, given bool) {
	if !given && os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if n == 0 {
		runtime.SetDefaultGOMAXPROCS()
		return
	}
	runtime.GOMAXPROCS(n)
}

// sysmonPollGODEBUG keeps the Go runtime's monitor thread (sysmon) out of
// its deep sleep. Deeply asleep, it is woken by the first system call that
// enters the runtime's syscall state after the daemon was idle (accept,
// close, the netlink batch: a few per session), polls every 20 µs until the
// daemon is idle again and sleeps again: ~7 of the ~22 context switches of a
// session on the bench. The runtime has no switch for this but a schedule
// trace, which also keeps sysmon polling (backing off to every 10 ms when
// idle); one due every 2^31-1 ms prints a line at most every 24.8 days of
// uptime.
const sysmonPollGODEBUG = "schedtrace=2147483647"

// sysmonPolls reports whether the GODEBUG value godebug keeps sysmon polling,
// read as the runtime reads it at start: left to right, the last valid
// setting wins.
func sysmonPolls(godebug string) bool {
	on := false
	for _, field := range strings.Split(godebug, ",") {
		if v, ok := strings.CutPrefix(field, "schedtrace="); ok {
			if n, err := strconv.ParseInt(v, 10, 32); err == nil {
				on = n > 0
			}
		}
	}
	return on
}

// withSysmonPoll returns env with GODEBUG extended to keep sysmon polling;
// other GODEBUG settings stay.
func withSysmonPoll(env []string) []string {
	out := make([]string, 0, len(env)+1)
	godebug := sysmonPollGODEBUG
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			if v != "" {
				godebug = v + "," + sysmonPollGODEBUG
			}
			continue
		}
		out = append(out, kv)
	}
	return append(out, "GODEBUG="+godebug)
}

// execWithSysmonPoll applies --sysmon-poll: the runtime reads GODEBUG at
// start only, so the daemon executes itself again (same process, same
// arguments) with the setting added. On success it does not return; it
// returns nil, without executing, if sigs holds a stop signal (one caught
// by this image would be lost with it).
func execWithSysmonPoll(sigs <-chan os.Signal) error {
	// From here a stop signal takes its default action (the process ends,
	// as asked); one caught before is in sigs.
	signal.Reset(syscall.SIGINT, syscall.SIGTERM)
	for len(sigs) > 0 {
		if sig := <-sigs; sig != syscall.SIGHUP {
			return nil
		}
	}
	// An ignored signal stays ignored across exec, and Go keeps an inherited
	// SIG_IGN of SIGHUP until signal.Notify: until the new image listens, a
	// SIGHUP cannot end the daemon (systemd would count that as a clean
	// stop). It loses nothing: the new image reads the config after that.
	signal.Ignore(syscall.SIGHUP)
	err := syscall.Exec("/proc/self/exe", os.Args, withSysmonPoll(os.Environ()))
	return fmt.Errorf("--sysmon-poll: executing ftpgate again with GODEBUG=%s: %w; set GODEBUG=%s in its environment instead, or run without --sysmon-poll",
		sysmonPollGODEBUG, err, sysmonPollGODEBUG)
}
