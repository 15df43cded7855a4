package nft

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain removes the namespaces newNS leaves behind when a run is cut short
// (t.Cleanup does not run on SIGKILL, the -test.timeout panic or a signal):
// before the tests, those of earlier runs whose process is gone; on SIGINT or
// SIGTERM, this run's, and then it exits non-zero. A namespace whose pid is
// alive belongs to a running test binary and is never touched, nor is the root
// namespace.
func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		deleteNamespaces("its process is gone", func(pid int) bool {
			err := syscall.Kill(pid, 0)
			return err != nil && err != syscall.EPERM
		})
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigc
		nsCreate.Lock() // kept until exit: newNS creates no more
		deleteNamespaces(fmt.Sprint(s), func(pid int) bool { return pid == os.Getpid() })
		os.Exit(128 + int(s.(syscall.Signal)))
	}()
	os.Exit(m.Run())
}

// deleteNamespaces deletes the namespaces named by newNS whose pid sel accepts.
// The processes inside are killed first: a namespace lives on, unnamed, while
// a process is in it. A namespace gone meanwhile (a test's own cleanup,
// racing the signal handler) is no error.
func deleteNamespaces(why string, sel func(pid int) bool) {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		m := nsNameRe.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if pid, err := strconv.Atoi(m[1]); err != nil || !sel(pid) {
			continue
		}
		fmt.Fprintf(os.Stderr, "nft: deleting namespace %s (%s)\n", e.Name(), why)
		for range 50 {
			out, _ := exec.Command("ip", "netns", "pids", e.Name()).Output()
			killed := false
			for _, f := range strings.Fields(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					killed = true
				}
			}
			if !killed {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput()
		if _, serr := os.Stat("/run/netns/" + e.Name()); err != nil && serr == nil {
			fmt.Fprintf(os.Stderr, "nft: ip netns del %s: %v: %s\n", e.Name(), err, out)
		}
	}
}
