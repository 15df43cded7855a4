package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// setNice gives every thread of the process the nice value n. Linux keeps
// the value per thread and a new thread inherits its creator's, so renicing
// the threads that exist (twice, for any created meanwhile) covers the
// process for good. Like conntrackd's Nice setting: a gateway helper whose
// CPU use is small but sits on the path of every FTP negotiation should not
// wait behind bulk work for a CPU.
func setNice(n int) error {
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("--nice %d: list threads: %w", n, err)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil && err != unix.ESRCH {
				hint := ""
				if err == unix.EACCES || err == unix.EPERM {
					hint = " — a negative nice value needs CAP_SYS_NICE; under systemd set Nice= in the unit instead"
				}
				return fmt.Errorf("--nice %d: %w%s", n, err, hint)
			}
		}
	}
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
