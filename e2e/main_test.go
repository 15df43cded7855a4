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
// cmd/ftpgate does not exist or does not compile; ftpgateMissing then says why.
var ftpgateBin, ftpgateMissing string

// requireFtpgate returns the binary. Without one the test fails where the
// suite is meant to run in full (root or CI, see mustRun) and skips elsewhere.
func requireFtpgate(t testing.TB) string {
	t.Helper()
	if ftpgateBin == "" {
		if mustRun() {
			t.Fatalf("no ftpgate binary: %s", ftpgateMissing)
		}
		t.Skipf("no ftpgate binary: %s", ftpgateMissing)
	}
	return ftpgateBin
}

// mustRun reports whether missing prerequisites (root, tools, the ftpgate
// binary) fail the tests instead of skipping them: as root, where the whole
// suite can run, and in CI (CI set and not "false" or "0"), where a skipped
// suite would pass unnoticed.
func mustRun() bool {
	if os.Geteuid() == 0 {
		return true
	}
	switch os.Getenv("CI") {
	case "", "false", "0":
		return false
	}
	return true
}

// goCommand is the go command that builds cmd/ftpgate: $GO when set (the
// Makefile passes its GO), else "go" from PATH, which under `go test` is the
// toolchain running the tests (go test puts its GOROOT/bin first in PATH).
func goCommand() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(plainRelayEnv); spec != "" {
		os.Exit(plainRelayMain(spec)) // the benchmark's setup (e), not a test run
	}
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
	ftpgateBin, ftpgateMissing = buildFtpgate(tmp)
	if ftpgateBin == "" && mustRun() {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: every test that runs ftpgate will fail: %s\n", ftpgateMissing)
	}

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

// buildFtpgate builds ../cmd/ftpgate into dir and returns the binary path,
// or "" and why not (the compiler's output goes to stderr once, here).
func buildFtpgate(dir string) (bin, why string) {
	src := filepath.Join("..", "cmd", "ftpgate")
	ents, err := os.ReadDir(src)
	hasGo := false
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".go") && !strings.HasSuffix(e.Name(), "_test.go") {
			hasGo = true
		}
	}
	if err != nil || !hasGo {
		return "", "cmd/ftpgate has no Go files"
	}
	bin = filepath.Join(dir, "ftpgate")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	goCmd := goCommand()
	out, err := exec.CommandContext(ctx, goCmd, "build", "-o", bin, "./"+filepath.ToSlash(src)).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %s build ./cmd/ftpgate: %v\n%s\n", goCmd, err, out)
		return "", fmt.Sprintf("building it failed (%s build ./cmd/ftpgate: %v; the compiler's output is at the start of the e2e output); fix the build, then rerun", goCmd, err)
	}
	return bin, ""
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
