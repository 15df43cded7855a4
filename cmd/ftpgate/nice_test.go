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
