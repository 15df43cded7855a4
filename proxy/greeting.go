package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dialGreeted connects to the server and returns once the server has started
// to speak (its greeting), has closed the connection, or has failed it.
//
// Why not just wait: a server whose accept queue is full drops the last ACK
// of a handshake. ftpgate's side is then established, the server's is not,
// and nothing is ever retransmitted, because an FTP server speaks first: the
// session would wait for a greeting until a timeout. vsftpd's compiled-in
// backlog of 32 does this under a burst of connections. So if no greeting has
// started after Config.GreetingRedial, a second connection races the first
// and whichever server side speaks first is kept; a slow but live server
// loses nothing but an extra connection that is closed at once. After
// Config.DialTimeout without a word on either, the session is refused.
func (s *session) dialGreeted() (net.Conn, error) {
	first, err := s.srv.dial(s)
	if err != nil {
		return nil, s.dialRefused(err)
	}
	deadline := time.Now().Add(s.cfg.DialTimeout)
	redial := time.Now().Add(s.cfg.GreetingRedial)
	if redial.Before(deadline) {
		if awaitGreeting(s.ctx, first, redial) {
			return first, nil
		}
		if s.ctx.Err() == nil {
			s.cfg.Observer.UpstreamRedial()
			s.log.Warn("no greeting from the FTP server yet: connecting a second time in parallel",
				"server", first.RemoteAddr().String(), "after", s.cfg.GreetingRedial)
			second, err := s.srv.dial(s)
			if err == nil {
				return s.raceGreetings(first, second, deadline)
			}
			// Not a refusal (yet): the first connection may still greet.
			s.log.Warn("second connection to the FTP server failed: waiting on the first", "err", err)
		}
	}
	if awaitGreeting(s.ctx, first, deadline) {
		return first, nil
	}
	first.Close()
	return nil, s.noGreeting()
}

// raceGreetings keeps whichever of a and b is greeted first, closing the other.
func (s *session) raceGreetings(a, b net.Conn, deadline time.Time) (net.Conn, error) {
	greeted := make(chan net.Conn, 2)
	for _, c := range []net.Conn{a, b} {
		go func() {
			if awaitGreeting(s.ctx, c, deadline) {
				greeted <- c
			} else {
				greeted <- nil
			}
		}()
	}
	winner := <-greeted
	if winner == nil {
		winner = <-greeted
	}
	for _, c := range []net.Conn{a, b} {
		if c != winner {
			c.Close() // ends its await, if still running
		}
	}
	if winner == nil {
		return nil, s.noGreeting()
	}
	return winner, nil
}

// dialError is a failed dial: the refusal it is counted as and logged with,
// once it decides the session (a failed second dial does not), and what the
// client is told.
type dialError struct {
	reason Reason
	msg    string
	args   []any
	reply  string
}

func (e *dialError) Error() string { return e.reply }

// dialRefused counts and logs err, a dial's failure, as the session's
// refusal and returns it; a dial cut short by a shutdown is no refusal.
func (s *session) dialRefused(err error) error {
	if s.ctx.Err() != nil {
		return errShuttingDown
	}
	var de *dialError
	if errors.As(err, &de) {
		s.refused(de.reason, de.msg, de.args...)
	} else {
		s.refused(ReasonUpstream, "cannot reach server", "err", err)
	}
	return err
}

var errShuttingDown = errors.New("ftpgate is shutting down")

// noGreeting counts, logs and describes a server that never spoke.
func (s *session) noGreeting() error {
	if s.ctx.Err() != nil {
		return errShuttingDown
	}
	s.refused(ReasonUpstream, "FTP server sent no greeting", "timeout", s.cfg.DialTimeout)
	return fmt.Errorf("the FTP server sent no greeting within %v", s.cfg.DialTimeout)
}

// awaitGreeting waits until c has something to read, has reached its end or
// has failed, without consuming anything (MSG_PEEK): true unless the deadline
// passed, ctx ended or c was closed first. A connection without a socket (a
// test's net.Pipe) counts as greeted at once.
func awaitGreeting(ctx context.Context, c net.Conn, deadline time.Time) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return false
	}
	defer c.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	// A raw system call, as in rawio.go: the socket is non-blocking, and
	// unix.Recvfrom would enter the runtime's syscall state and wake sysmon.
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		return e != unix.EAGAIN && e != unix.EINTR
	})
	// rc.Read's own error is the deadline or a closed connection; a
	// failed socket (reset, EOF) ends the wait with nil, for the relay to
	// read and report.
	return err == nil
}
