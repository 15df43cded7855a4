package main

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSetNice renices a child process (this test binary again) and checks
// every thread, including ones started afterwards, has the value.
func TestSetNice(t *testing.T) {
	if os.Getenv("FTPGATE_TEST_NICE_CHILD") == "1" {
		if err := setNice(7); err != nil {
			t.Fatal(err)
		}
		// New threads inherit it: start some (locked goroutines force them).
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				if p, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err != nil || 20-p != 7 {
					t.Errorf("new thread: getpriority = %d, %v; want nice 7", p, err)
				}
			}()
		}
		wg.Wait()
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			// The raw syscall returns 20-nice.
			if p, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err != nil || 20-p != 7 {
				t.Errorf("thread %d: getpriority = %d, %v; want nice 7", tid, p, err)
			}
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSetNice$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FTPGATE_TEST_NICE_CHILD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestNiceRange(t *testing.T) {
	for _, n := range []string{"-21", "20"} {
		o, err := parseOptions("run", []string{"--nice", n})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.proxyConfig(); err == nil {
			t.Errorf("--nice %s accepted", n)
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
