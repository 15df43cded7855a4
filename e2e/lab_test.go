package e2e

// The lab: three network namespaces wired client --veth-- gateway --veth-- server,
// IPv4 and IPv6, with vsftpd in the server namespace and an optional host
// firewall in the gateway namespace.
//
// Safety: nothing here touches the root network namespace. Links are created
// directly inside the lab namespaces (`ip -n <ns> link add ... peer ... netns
// <other>`), sysctls are written from inside the namespaces, and all addresses
// are in 10.77.0.0/16 and fd77::/16. Every namespace and process is removed in
// t.Cleanup (which also runs when the test panics); namespaces left behind by a
// killed test binary are swept by TestMain on the next run.
//
// A typical ftpgate test:
//
//	l := NewLab(t)
//	l.HostFirewall(t, true) // default drop + the ct-mark line
//	srv := l.StartVsftpd(t)
//	gw := l.Gateway.StartDaemon(t, filepath.Join(l.Dir, "ftpgate.log"), requireFtpgate(t), "run", ...)
//	// wait for readiness, e.g. l.Gateway.WaitTCP(ctx, gw, "127.0.0.1:<metrics>", nil)
//	RunMatrix(t, AllCases(), 6, func(ctx context.Context, c Case) ([]byte, error) {
//		return c.Client.Get(ctx, l.Client, l.ServerIP(c.Family), RandomFile, c.Mode)
//	}, func(t *testing.T, c Case, r Result) { /* compare r.Data with srv.Files[RandomFile] */ })
//
// Set E2E_KEEP_DIR=/some/dir to keep a failed lab's configs and logs.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// labPrefix is the prefix of every namespace created by this test binary:
// "fg<pid>x<counter>-{c,g,s}". The pid makes concurrent test binaries disjoint
// and lets TestMain recognise namespaces of dead runs.
var labPrefix = fmt.Sprintf("fg%dx", os.Getpid())

// labNSRe matches namespaces created by this harness in any run; group 1 is the pid.
var labNSRe = regexp.MustCompile(`^fg([0-9]+)x[0-9]+-[cgs]$`)

var labSeq atomic.Int64

// Interface names inside the lab namespaces (they are per-namespace, so they
// never clash between labs or with the host).
const (
	ClientIf   = "eth0" // in the client ns, towards the gateway
	GwClientIf = "cli0" // in the gateway ns, towards the client
	GwServerIf = "srv0" // in the gateway ns, towards the server
	ServerIf   = "eth0" // in the server ns, towards the gateway
)

// NS is one network namespace of a lab, addressed by its name under /run/netns.
type NS struct{ Name string }

// Cmd returns `ip netns exec <ns> name args...`. The caller starts it.
func (ns *NS) Cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Run runs name args... inside the namespace (bounded to 30 s) and returns its
// combined output; it fails the test with that output on error.
func (ns *NS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := ns.Cmd(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("netns %s: %s %s: %v\n%s", ns.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Do runs fn on a locked OS thread switched into the namespace and switches
// back afterwards. Sockets created by fn stay in the namespace, so an
// in-process client can dial from it; everything else fn starts (goroutines)
// runs in whatever namespace its thread is in — keep fn to socket creation.
// If switching back fails, or fn panics, the thread is left locked so the Go
// runtime destroys it instead of reusing it in the wrong namespace.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread unless the thread is verifiably back home.
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("netns %s: get current namespace: %w", ns.Name, err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(filepath.Join("/run/netns", ns.Name))
		if err != nil {
			errc <- fmt.Errorf("netns %s: open: %w", ns.Name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("netns %s: setns: %w", ns.Name, err)
			return
		}
		ferr := func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("netns %s: panic in Do: %v", ns.Name, r)
				}
			}()
			return fn()
		}()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("netns %s: restore namespace: %w (fn: %v)", ns.Name, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext dials network/address from inside the namespace.
func (ns *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Lab is client --veth-- gateway --veth-- server.
type Lab struct {
	Name                    string // namespaces are Name+"-c", Name+"-g", Name+"-s"
	Client, Gateway, Server *NS
	N                       int // subnet index: client side 10.77.N.0/24, server side 10.77.N+1.0/24

	ClientIP4, GwClientIP4, GwServerIP4, ServerIP4 netip.Addr // 10.77.N.2, 10.77.N.1, 10.77.N+1.1, 10.77.N+1.2
	ClientIP6, GwClientIP6, GwServerIP6, ServerIP6 netip.Addr // fd77:N::2, fd77:N::1, fd77:N+1::1, fd77:N+1::2 (N in hex)

	Dir string // per-lab temp dir: configs, logs, files
}

// ClientIP, ServerIP return the client's / server's address of the family (4 or 6).
func (l *Lab) ClientIP(family int) netip.Addr {
	if family == 6 {
		return l.ClientIP6
	}
	return l.ClientIP4
}

func (l *Lab) ServerIP(family int) netip.Addr {
	if family == 6 {
		return l.ServerIP6
	}
	return l.ServerIP4
}

// live labs, for the emergency sweep in TestMain (signals, test timeout).
var (
	liveMu   sync.Mutex
	liveLabs = map[string]*Lab{}
)

// labTools are the commands the labs run, with the Debian package of each.
var labTools = []struct{ bin, pkg string }{
	{"ip", "iproute2"}, {"ss", "iproute2"}, {"nft", "nftables"}, {"vsftpd", "vsftpd"}, {"sysctl", "procps"},
	{"curl", "curl"}, {"lftp", "lftp"}, {"python3", "python3"}, {"conntrack", "conntrack"},
}

// requireLabEnv checks that the lab can run here: root and labTools. When it
// cannot, the test fails where the suite is meant to run in full (as root,
// or in CI: see mustRun) and skips elsewhere.
func requireLabEnv(t testing.TB) {
	t.Helper()
	stop := t.Skipf
	if mustRun() {
		stop = t.Fatalf
	}
	if os.Geteuid() != 0 {
		stop("e2e lab needs root (network namespaces, nftables): run the tests as root, e.g. sudo env PATH=\"$PATH\" make test")
	}
	var missing, pkgs []string
	for _, tool := range labTools {
		if _, err := exec.LookPath(tool.bin); err != nil {
			missing = append(missing, tool.bin)
			pkgs = append(pkgs, tool.pkg)
		}
	}
	if len(missing) > 0 {
		stop("e2e lab needs %s in PATH: install with 'make deps' (as root) or apt-get install %s",
			strings.Join(missing, ", "), strings.Join(pkgs, " "))
	}
}

// NewLab builds a fresh lab; t.Cleanup tears it down.
func NewLab(t *testing.T) *Lab {
	t.Helper()
	requireLabEnv(t)
	seq := labSeq.Add(1)
	n := 2 + 2*int((int64(os.Getpid())+seq)%120) // even, 2..240; n+1 <= 241
	l := &Lab{
		Name:    fmt.Sprintf("%s%d", labPrefix, seq),
		N:       n,
		Dir:     t.TempDir(),
		Client:  &NS{},
		Gateway: &NS{},
		Server:  &NS{},
	}
	l.Client.Name, l.Gateway.Name, l.Server.Name = l.Name+"-c", l.Name+"-g", l.Name+"-s"
	a4 := func(net, host int) netip.Addr { return netip.AddrFrom4([4]byte{10, 77, byte(net), byte(host)}) }
	a6 := func(net, host int) netip.Addr {
		return netip.MustParseAddr(fmt.Sprintf("fd77:%x::%x", net, host))
	}
	l.ClientIP4, l.GwClientIP4, l.GwServerIP4, l.ServerIP4 = a4(n, 2), a4(n, 1), a4(n+1, 1), a4(n+1, 2)
	l.ClientIP6, l.GwClientIP6, l.GwServerIP6, l.ServerIP6 = a6(n, 2), a6(n, 1), a6(n+1, 1), a6(n+1, 2)

	liveMu.Lock()
	liveLabs[l.Name] = l
	liveMu.Unlock()
	t.Cleanup(func() {
		l.keepOnFailure(t)
		if err := l.destroy(); err != nil {
			t.Errorf("lab %s teardown: %v", l.Name, err)
		}
		liveMu.Lock()
		delete(liveLabs, l.Name)
		liveMu.Unlock()
	})

	ip := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("lab %s: ip %s: %v\n%s", l.Name, strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range l.namespaces() {
		ip("netns", "add", ns.Name)
	}
	for _, ns := range l.namespaces() {
		// Before any interface exists, so every interface inherits them:
		// no DAD (addresses usable at once, no 1-2 s tentative phase).
		sysctl(t, ns, true, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		ip("-n", ns.Name, "link", "set", "lo", "up")
	}
	ip("-n", l.Client.Name, "link", "add", ClientIf, "type", "veth", "peer", "name", GwClientIf, "netns", l.Gateway.Name)
	ip("-n", l.Server.Name, "link", "add", ServerIf, "type", "veth", "peer", "name", GwServerIf, "netns", l.Gateway.Name)

	addr := func(ns *NS, dev string, a netip.Addr, bits int) {
		t.Helper()
		args := []string{"-n", ns.Name, "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", dev}
		if a.Is6() {
			args = append(args, "nodad")
		}
		ip(args...)
	}
	addr(l.Client, ClientIf, l.ClientIP4, 24)
	addr(l.Client, ClientIf, l.ClientIP6, 64)
	addr(l.Gateway, GwClientIf, l.GwClientIP4, 24)
	addr(l.Gateway, GwClientIf, l.GwClientIP6, 64)
	addr(l.Gateway, GwServerIf, l.GwServerIP4, 24)
	addr(l.Gateway, GwServerIf, l.GwServerIP6, 64)
	addr(l.Server, ServerIf, l.ServerIP4, 24)
	addr(l.Server, ServerIf, l.ServerIP6, 64)
	ip("-n", l.Client.Name, "link", "set", ClientIf, "up")
	ip("-n", l.Gateway.Name, "link", "set", GwClientIf, "up")
	ip("-n", l.Gateway.Name, "link", "set", GwServerIf, "up")
	ip("-n", l.Server.Name, "link", "set", ServerIf, "up")
	ip("-n", l.Client.Name, "route", "add", "default", "via", l.GwClientIP4.String())
	ip("-n", l.Client.Name, "-6", "route", "add", "default", "via", l.GwClientIP6.String())
	ip("-n", l.Server.Name, "route", "add", "default", "via", l.GwServerIP4.String())
	ip("-n", l.Server.Name, "-6", "route", "add", "default", "via", l.GwServerIP6.String())

	sysctl(t, l.Gateway, true, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	sysctl(t, l.Gateway, false, "net.netfilter.nf_conntrack_acct=1")
	return l
}

// keepOnFailure copies l.Dir (configs, logs) to $E2E_KEEP_DIR/<lab name>
// when the test failed, for post-mortems (t.TempDir is removed afterwards).
func (l *Lab) keepOnFailure(t testing.TB) {
	dst := os.Getenv("E2E_KEEP_DIR")
	if dst == "" || !t.Failed() {
		return
	}
	dst = filepath.Join(dst, l.Name)
	if err := os.CopyFS(dst, os.DirFS(l.Dir)); err != nil {
		t.Logf("keep lab dir: %v", err)
		return
	}
	t.Logf("lab %s files kept in %s", l.Name, dst)
}

func (l *Lab) namespaces() []*NS { return []*NS{l.Client, l.Gateway, l.Server} }

// sysctl writes key=value settings inside ns (via /proc/sys, which reflects the
// namespace of the writing process — `ip netns exec` guarantees that).
func sysctl(t testing.TB, ns *NS, must bool, kvs ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Cmd(ctx, "sysctl", append([]string{"-q", "-w"}, kvs...)...).CombinedOutput()
	if err != nil {
		if must {
			t.Fatalf("netns %s: sysctl %v: %v\n%s", ns.Name, kvs, err, out)
		}
		t.Logf("netns %s: sysctl %v (ignored): %v %s", ns.Name, kvs, err, bytes.TrimSpace(out))
	}
}

// destroy kills every process still inside the lab namespaces and deletes them.
// Safe to call more than once.
func (l *Lab) destroy() error {
	var errs []error
	for _, ns := range l.namespaces() {
		if ns.Name == "" {
			continue
		}
		if err := deleteNetns(ns.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deleteNetns kills the processes in the namespace (by pid, as listed by
// `ip netns pids`) and removes it. A missing namespace is not an error.
func deleteNetns(name string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for attempt := 0; attempt < 50; attempt++ {
		pids := netnsPids(name)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "del", name).CombinedOutput()
	if err != nil {
		if _, serr := os.Stat(filepath.Join("/run/netns", name)); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("ip netns del %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

func netnsPids(name string) []int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// listNetns returns the names of all named network namespaces.
func listNetns() ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// ---------------------------------------------------------------- nftables

// Nft loads ruleset (nft -f syntax) inside the gateway namespace. The file is
// kept in l.Dir for post-mortems.
func (l *Lab) Nft(t testing.TB, name, ruleset string) {
	t.Helper()
	path := filepath.Join(l.Dir, name)
	if err := os.WriteFile(path, []byte(ruleset), 0o600); err != nil {
		t.Fatal(err)
	}
	l.Gateway.Run(t, "nft", "-f", path)
}

// HostFirewallOpts selects optional parts of the gateway's host ruleset.
type HostFirewallOpts struct {
	CtMarkLine   bool // "ct mark & 0x100 == 0x100 accept" before the drops (what ftpgate needs)
	KernelHelper bool // attach nf_conntrack_ftp to port 21 (the in-kernel baseline)
}

// HostFirewall installs a default-drop host ruleset (table inet host) in the
// gateway namespace: forwarded FTP control (tcp dport 21) and established /
// related traffic pass, everything else — in particular every data connection —
// is dropped unless something (ftpgate, the kernel helper) admits it.
func (l *Lab) HostFirewall(t testing.TB, ctMarkLine bool) {
	t.Helper()
	l.HostFirewallWith(t, HostFirewallOpts{CtMarkLine: ctMarkLine})
}

// HostFirewallWith is HostFirewall with all options.
func (l *Lab) HostFirewallWith(t testing.TB, o HostFirewallOpts) {
	t.Helper()
	l.Nft(t, "host.nft", HostRuleset(o))
}

// HostRuleset renders the host ruleset for o.
func HostRuleset(o HostFirewallOpts) string {
	var b strings.Builder
	mark := ""
	if o.CtMarkLine {
		mark = "\t\tct mark & 0x100 == 0x100 accept\n"
	}
	b.WriteString("table inet host\ndelete table inet host\n") // idempotent reload
	b.WriteString("table inet host {\n")
	if o.KernelHelper {
		b.WriteString("\tct helper ftp-std {\n\t\ttype \"ftp\" protocol tcp\n\t\tl3proto inet\n\t}\n")
		b.WriteString("\tchain prerouting {\n\t\ttype filter hook prerouting priority filter; policy accept;\n")
		b.WriteString("\t\ttcp dport 21 ct helper set \"ftp-std\"\n\t}\n")
	}
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n")
	b.WriteString("\t\tiif lo accept\n")
	b.WriteString("\t\tct state established,related accept\n")
	b.WriteString(mark)
	b.WriteString("\t\tmeta l4proto icmp accept\n")
	b.WriteString("\t\tmeta l4proto ipv6-icmp accept\n") // neighbour discovery
	b.WriteString("\t}\n")
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n")
	b.WriteString("\t\tct state established,related accept\n")
	b.WriteString(mark)
	b.WriteString("\t\ttcp dport 21 accept\n")
	b.WriteString("\t\tmeta l4proto icmp accept\n")
	b.WriteString("\t\tmeta l4proto ipv6-icmp accept\n")
	b.WriteString("\t}\n}\n")
	return b.String()
}

// Conntrack runs `conntrack args...` in the gateway namespace and returns its
// output (conntrack prints a summary line on stderr; that is kept).
func (l *Lab) Conntrack(t testing.TB, args ...string) string {
	t.Helper()
	return l.Gateway.Run(t, "conntrack", args...)
}

// ---------------------------------------------------------------- daemons

// Daemon is a long-running process in a namespace. It runs in its own process
// group, dies with the test binary (PDEATHSIG), and is stopped in t.Cleanup.
type Daemon struct {
	Cmd    *exec.Cmd
	Log    string        // its stdout and stderr
	Exited chan struct{} // closed when it has exited; then Err is valid
	err    error
}

// Err is the result of Wait, once Exited is closed.
func (d *Daemon) Err() error {
	<-d.Exited
	return d.err
}

// Running reports whether the process has not exited yet.
func (d *Daemon) Running() bool {
	select {
	case <-d.Exited:
		return false
	default:
		return true
	}
}

// Signal sends sig to the daemon's process group.
func (d *Daemon) Signal(sig syscall.Signal) error {
	return syscall.Kill(-d.Cmd.Process.Pid, sig)
}

// Stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs
// it. It returns Wait's error (nil, or e.g. "signal: terminated").
func (d *Daemon) Stop(grace time.Duration) error {
	if d.Running() {
		_ = d.Signal(syscall.SIGTERM)
		select {
		case <-d.Exited:
		case <-time.After(grace):
		}
	}
	// The group may hold children even when the leader is gone.
	_ = d.Signal(syscall.SIGKILL)
	select {
	case <-d.Exited:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("pid %d did not exit after SIGKILL", d.Cmd.Process.Pid)
	}
	return d.err
}

// StartDaemon starts `name args...` in the namespace with stdout and stderr
// appended to logPath; t.Cleanup stops it (SIGTERM, 3 s, SIGKILL).
func (ns *NS) StartDaemon(t testing.TB, logPath, name string, args ...string) *Daemon {
	t.Helper()
	return ns.startDaemon(t, logPath, false, name, args...)
}

// startDaemon: with stdinToLog, fd 0 is the log file too (vsftpd writes its
// "500 OOPS" startup errors to fd 0, the would-be inetd control connection).
func (ns *NS) startDaemon(t testing.TB, logPath string, stdinToLog bool, name string, args ...string) *Daemon {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if stdinToLog {
		cmd.Stdin = logf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("netns %s: start %s: %v", ns.Name, name, err)
	}
	d := &Daemon{Cmd: cmd, Log: logPath, Exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.Exited)
	}()
	t.Cleanup(func() {
		if err := d.Stop(3 * time.Second); err != nil && d.Running() {
			t.Errorf("netns %s: stop %s: %v", ns.Name, name, err)
		}
		// Anything that left the process group dies with the lab teardown.
	})
	return d
}

// WaitTCP dials addr from the namespace until check (given the fresh
// connection, with a 2 s deadline) succeeds, ctx ends, or d (if not nil)
// exits. For "is the daemon up yet".
func (ns *NS) WaitTCP(ctx context.Context, d *Daemon, addr string, check func(net.Conn) error) error {
	var lastErr error
	for {
		if d != nil && !d.Running() {
			return fmt.Errorf("%s exited while waiting for %s: %v", d.Cmd.Args[4], addr, d.Err())
		}
		lastErr = func() error {
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			c, err := ns.DialContext(dctx, "tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			if check == nil {
				return nil
			}
			return check(c)
		}()
		if lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v (last: %v)", addr, ctx.Err(), lastErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ---------------------------------------------------------------- vsftpd

// Vsftpd is a running vsftpd in the server namespace.
type Vsftpd struct {
	Root      string            // anon_root (mode 0555, owned by root)
	Files     map[string][]byte // files in Root: name -> content
	UploadDir string            // Root/upload, writable by the ftp user
	Log       string            // vsftpd_log_file (transfers and, with log_ftp_protocol, the protocol)
	Stderr    string            // vsftpd's fds 0, 1, 2 ("500 OOPS: ..." goes to fd 0!)
	Conf      string
	Daemon    *Daemon
}

// Well-known files served by StartVsftpd.
const (
	SmallFile  = "small.txt"
	RandomFile = "random.bin"
	UploadSub  = "upload"
	PasvMin    = 40000
	PasvMax    = 40100
)

// StartVsftpd starts vsftpd in the server namespace (port 21, IPv4+IPv6,
// anonymous, passive and active mode) and waits until it answers 220.
func (l *Lab) StartVsftpd(t testing.TB) *Vsftpd {
	t.Helper()
	return l.startVsftpd(t, l.Server, netip.AddrPortFrom(l.ServerIP4, 21))
}

// startVsftpd starts vsftpd in ns on every address, on the port of wait, and
// waits until it answers 220 there.
func (l *Lab) startVsftpd(t testing.TB, ns *NS, wait netip.AddrPort) *Vsftpd {
	t.Helper()
	ftpUser, err := user.Lookup("ftp")
	if err != nil {
		t.Fatalf("vsftpd needs the 'ftp' user (created by the Debian vsftpd package): %v", err)
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Fatalf("vsftpd needs the 'nobody' user (nopriv_user): %v", err)
	}
	uid, _ := strconv.Atoi(ftpUser.Uid)
	gid, _ := strconv.Atoi(ftpUser.Gid)

	base := filepath.Join(l.Dir, "vsftpd")
	v := &Vsftpd{
		Root:   filepath.Join(base, "root"),
		Files:  map[string][]byte{},
		Log:    filepath.Join(base, "vsftpd.log"),
		Stderr: filepath.Join(base, "vsftpd.stderr"),
		Conf:   filepath.Join(base, "vsftpd.conf"),
	}
	v.UploadDir = filepath.Join(v.Root, UploadSub)
	empty := filepath.Join(base, "empty")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(v.UploadDir, 0o755))
	must(os.MkdirAll(empty, 0o755))
	// anon uploads run as the ftp user; the root itself must not be writable
	// (vsftpd: "refusing to run with writable root inside chroot()").
	must(os.Chown(v.UploadDir, uid, gid))
	must(os.Chmod(v.UploadDir, 0o755))

	v.Files[SmallFile] = []byte("hello from vsftpd via ftpgate\n")
	rnd := make([]byte, 1<<20)
	_, _ = rand.Read(rnd)
	v.Files[RandomFile] = rnd
	for name, data := range v.Files {
		// anon_world_readable_only=YES: downloadable files must be world-readable.
		must(os.WriteFile(filepath.Join(v.Root, name), data, 0o644))
	}
	must(os.Chmod(v.Root, 0o555))

	conf := strings.Join([]string{
		"listen=NO",
		"listen_ipv6=YES", // one AF_INET6 socket, dual stack (v4 clients appear as ::ffff:a.b.c.d)
		fmt.Sprintf("listen_port=%d", wait.Port()),
		"background=NO", // foreground: we own the process and kill it in cleanup
		"anonymous_enable=YES",
		"no_anon_password=YES",
		"anon_root=" + v.Root,
		"local_enable=NO",
		"write_enable=YES",
		"anon_upload_enable=YES",
		"anon_mkdir_write_enable=NO",
		"anon_other_write_enable=NO",
		"ftp_username=ftp",
		"nopriv_user=nobody",
		"pasv_enable=YES",
		fmt.Sprintf("pasv_min_port=%d", PasvMin),
		fmt.Sprintf("pasv_max_port=%d", PasvMax),
		"port_enable=YES",
		"connect_from_port_20=YES",
		// Defaults, stated because ftpgate must satisfy them: the data connection
		// must come from / go to the control connection's peer address.
		"pasv_promiscuous=NO",
		"port_promiscuous=NO",
		// Fail fast when a data connection is blocked (defaults are 60/60/300 s).
		// Debian builds vsftpd with max_per_ip 50: the 64-client benchmark
		// and soak would get "421 There are too many connections from your
		// internet address". Unlimited, as upstream's default.
		"max_per_ip=0",
		"max_clients=0",
		"connect_timeout=5",
		"accept_timeout=5",
		"data_connection_timeout=30",
		"idle_session_timeout=60",
		"seccomp_sandbox=NO", // breaks in some containers
		// No extra PID/IPC/net namespaces for session processes: they stay in the
		// lab namespace, so `ip netns pids` finds (and cleanup kills) all of them.
		"isolate=NO",
		"isolate_network=NO",
		"secure_chroot_dir=" + empty,
		"xferlog_enable=YES",
		"xferlog_std_format=NO",
		"log_ftp_protocol=YES",
		"vsftpd_log_file=" + v.Log,
		"dirmessage_enable=NO",
		"use_localtime=NO",
		"ssl_enable=NO",
		"ftpd_banner=ftpgate e2e vsftpd",
		"",
	}, "\n")
	must(os.WriteFile(v.Conf, []byte(conf), 0o600))

	d := ns.startDaemon(t, v.Stderr, true, "vsftpd", v.Conf)
	v.Daemon = d

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = ns.WaitTCP(ctx, d, wait.String(), func(c net.Conn) error {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("read banner: %w", err)
		}
		if !strings.HasPrefix(line, "220") {
			return fmt.Errorf("banner %q", line)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("vsftpd: %v\n%s", err, v.Diag())
	}
	return v
}

// Diag returns vsftpd's stderr and the tail of its log, for failure messages.
func (v *Vsftpd) Diag() string {
	var b strings.Builder
	if out, _ := os.ReadFile(v.Stderr); len(out) > 0 {
		fmt.Fprintf(&b, "--- vsftpd stderr:\n%s\n", out)
	}
	if out, _ := os.ReadFile(v.Log); len(out) > 0 {
		if len(out) > 4000 {
			out = out[len(out)-4000:]
		}
		fmt.Fprintf(&b, "--- vsftpd log (tail):\n%s\n", out)
	}
	return b.String()
}

// Uploaded returns the content of upload/<name>.
func (v *Vsftpd) Uploaded(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(v.UploadDir, name))
}
