package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

func TestWaitForStop(t *testing.T) {
	tests := []struct {
		name    string
		signals []os.Signal
		want    os.Signal
		reloads int
	}{
		{"SIGTERM", []os.Signal{syscall.SIGTERM}, syscall.SIGTERM, 0},
		{"SIGINT", []os.Signal{syscall.SIGINT}, syscall.SIGINT, 0},
		{"reloads, then SIGTERM", []os.Signal{syscall.SIGHUP, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGHUP}, syscall.SIGTERM, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sigs := make(chan os.Signal, len(tc.signals))
			for _, s := range tc.signals {
				sigs <- s
			}
			reloads := 0
			if got := waitForStop(sigs, func() { reloads++ }); got != tc.want || reloads != tc.reloads {
				t.Errorf("waitForStop = %v after %d reloads, want %v after %d", got, reloads, tc.want, tc.reloads)
			}
		})
	}
}

// blockingServer is a proxy.Server whose sessions never end by themselves.
type blockingServer struct {
	mu     sync.Mutex
	endErr error // why Shutdown's context ended
}

func (s *blockingServer) Shutdown(ctx context.Context) {
	<-ctx.Done()
	s.mu.Lock()
	s.endErr = ctx.Err()
	s.mu.Unlock()
}

func TestDrain(t *testing.T) {
	tests := []struct {
		name    string
		grace   time.Duration
		signals []os.Signal // sent during the drain
		wantEnd error       // how the sessions' grace ended
		wantLog []string
	}{
		{"grace runs out", 50 * time.Millisecond, nil, context.DeadlineExceeded, nil},
		{"second SIGTERM closes sessions now", time.Hour, []os.Signal{syscall.SIGTERM}, context.Canceled, []string{"second signal"}},
		{"second SIGINT closes sessions now", time.Hour, []os.Signal{syscall.SIGINT}, context.Canceled, []string{"second signal"}},
		// The SIGTERM after it ends the drain: a SIGHUP alone would have to
		// race a short grace.
		{"SIGHUP does not cut the grace short", time.Hour, []os.Signal{syscall.SIGHUP, syscall.SIGTERM}, context.Canceled, []string{"SIGHUP ignored", "second signal"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			sigs := make(chan os.Signal, len(tc.signals))
			for _, s := range tc.signals {
				sigs <- s
			}
			srv := &blockingServer{}
			done := make(chan struct{})
			go func() {
				drain(srv, tc.grace, sigs, log)
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("drain did not return")
			}
			if !errors.Is(srv.endErr, tc.wantEnd) {
				t.Errorf("sessions' grace ended with %v, want %v", srv.endErr, tc.wantEnd)
			}
			for _, want := range tc.wantLog {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("log %q lacks %q", logs.String(), want)
				}
			}
		})
	}
}

// TestSdNotify: with Type=notify systemd waits for READY=1 on $NOTIFY_SOCKET
// before it counts the daemon as started (and runs ExecReload).
func TestSdNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	for _, state := range []string{daemon.SdNotifyReady, daemon.SdNotifyStopping} {
		sdNotify(log, state)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		if err != nil || string(buf[:n]) != state {
			t.Errorf("systemd got %q, %v; want %q", buf[:n], err, state)
		}
	}
	if logs.Len() > 0 {
		t.Errorf("logged %q", logs.String())
	}

	// Outside systemd: nothing to tell, nothing logged.
	t.Setenv("NOTIFY_SOCKET", "")
	sdNotify(log, daemon.SdNotifyReady)
	if logs.Len() > 0 {
		t.Errorf("without NOTIFY_SOCKET: logged %q", logs.String())
	}
}

// What 'ftpgate status' says of a daemon that does not serve /status yet:
// starting, or serving it is off (also while starting: off, not starting).
func TestStatusNotServed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		served bool
		want   string
	}{
		{"starting", true, "still starting"},
		{"endpoint off", false, "--status-endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(statusOnceWired(http.NotFoundHandler(), func() bool { return false }, tc.served))
			defer srv.Close()
			err := statusCmd([]string{"--metrics-listen", strings.TrimPrefix(srv.URL, "http://")}, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("statusCmd: %v, want it to say %q", err, tc.want)
			}
		})
	}
}

// While the daemon starts, /status answers 503 (what it reports does not
// exist yet) and the rest of the endpoint answers as usual.
func TestStatusOnceWired(t *testing.T) {
	var wired atomic.Bool
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("inner " + r.URL.Path)) })
	h := statusOnceWired(inner, wired.Load, true)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get("/status"); code != http.StatusServiceUnavailable {
		t.Errorf("/status while starting: %d, want 503", code)
	}
	if code, body := get("/healthz"); code != http.StatusOK || body != "inner /healthz" {
		t.Errorf("/healthz while starting: %d %q", code, body)
	}
	wired.Store(true)
	if code, body := get("/status"); code != http.StatusOK || body != "inner /status" {
		t.Errorf("/status once wired: %d %q", code, body)
	}
}
