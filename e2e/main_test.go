package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ftpgateBin is the ftpgate binary built once by TestMain, or "" when
// cmd/ftpgate does not exist or does not compile (tests needing it skip).
var ftpgateBin string

// requireFtpgate skips the test when the binary is not available.
func requireFtpgate(t testing.TB) string {
	t.Helper()
	if ftpgateBin == "" {
		t.Skip("ftpgate binary not built (cmd/ftpgate missing or not compiling)")
	}
	return ftpgateBin
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) (code int) {
	// `go test -list` (used by make fuzz to discover targets) only lists.
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	sweepStaleNamespaces()

	tmp, err := os.MkdirTemp("", "ftpgate-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	ftpgateBin = buildFtpgate(tmp)

	// Tear labs down on SIGINT/SIGTERM, and shortly before -test.timeout
	// would kill the binary (t.Cleanup does not run on that panic).
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigc
		fmt.Fprintf(os.Stderr, "e2e: %v: tearing down labs\n", s)
		emergencyTeardown()
		os.Exit(130)
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 10*time.Second {
			timer := time.AfterFunc(d-5*time.Second, func() {
				fmt.Fprintln(os.Stderr, "e2e: test timeout imminent: tearing down labs")
				emergencyTeardown()
			})
			defer timer.Stop()
		}
	}

	code = m.Run()

	// Nothing of ours may survive the run.
	names, err := listNetns()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: list namespaces:", err)
		return 1
	}
	var left []string
	for _, n := range names {
		if strings.HasPrefix(n, labPrefix) {
			left = append(left, n)
		}
	}
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: namespaces left behind: %v (removing them)\n", left)
		for _, n := range left {
			_ = deleteNetns(n)
		}
		if code == 0 {
			code = 1
		}
	}
	return code
}

// buildFtpgate builds ../cmd/ftpgate into dir and returns the binary path, or
// "" (with a log line) when it does not exist or does not compile yet.
func buildFtpgate(dir string) string {
	src := filepath.Join("..", "cmd", "ftpgate")
	ents, err := os.ReadDir(src)
	hasGo := false
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".go") && !strings.HasSuffix(e.Name(), "_test.go") {
			hasGo = true
		}
	}
	if err != nil || !hasGo {
		fmt.Fprintln(os.Stderr, "e2e: cmd/ftpgate has no Go files yet; ftpgate tests will skip")
		return ""
	}
	bin := filepath.Join(dir, "ftpgate")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./"+filepath.ToSlash(src)).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building cmd/ftpgate failed; ftpgate tests will skip: %v\n%s\n", err, out)
		return ""
	}
	return bin
}

// emergencyTeardown removes all labs still alive (signal or imminent timeout).
func emergencyTeardown() {
	liveMu.Lock()
	labs := make([]*Lab, 0, len(liveLabs))
	for _, l := range liveLabs {
		labs = append(labs, l)
	}
	liveMu.Unlock()
	for _, l := range labs {
		if err := l.destroy(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
		}
	}
}

// sweepStaleNamespaces deletes lab namespaces of earlier runs whose test
// binary is gone (killed by a timeout or SIGKILL before its cleanups ran).
func sweepStaleNamespaces() {
	if os.Geteuid() != 0 {
		return
	}
	names, _ := listNetns()
	for _, n := range names {
		m := labNSRe.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || err == syscall.EPERM {
			continue // that run is still alive
		}
		fmt.Fprintf(os.Stderr, "e2e: removing stale lab namespace %s (pid %d is gone)\n", n, pid)
		if err := deleteNetns(n); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
		}
	}
}
