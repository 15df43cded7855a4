package nft

import (
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// withoutNetAdmin runs fn on a thread whose effective capabilities lack
// CAP_NET_ADMIN (capabilities are per thread; netlink checks the creds of
// the socket's opener), then restores them.
func withoutNetAdmin(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("capget: %v", err)
	}
	orig := data
	data[0].Effective &^= 1 << unix.CAP_NET_ADMIN
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("capset: %v", err)
	}
	defer func() {
		if err := unix.Capset(&hdr, &orig[0]); err != nil {
			t.Fatalf("restore capabilities: %v", err) // thread stays locked and dies
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

func TestNewWithoutCapNetAdmin(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "caps")
	ns.do(t, func() {
		withoutNetAdmin(t, func() {
			fw, err := New(Config{}, nil)
			if err == nil {
				fw.Close()
				t.Fatal("New without CAP_NET_ADMIN succeeded")
			}
			t.Logf("New: %v", err)
			if !strings.HasPrefix(err.Error(), "nftables: ") || !strings.Contains(err.Error(), "inet ftpgate") ||
				!strings.Contains(err.Error(), "operation not permitted — run as root or with CAP_NET_ADMIN") {
				t.Errorf("New error %q does not say what failed and what to do", err)
			}
			out := Check(Config{})
			for _, f := range out {
				t.Log(f)
			}
			if len(out) == 0 || out[0].OK || !strings.Contains(out[0].Fix, "CAP_NET_ADMIN") {
				t.Errorf("Check does not report the missing capability first: %v", out)
			}
		})
	})
	if tables := ns.exec(t, "nft", "list", "tables"); strings.TrimSpace(tables) != "" {
		t.Errorf("tables left behind:\n%s", tables)
	}
}
