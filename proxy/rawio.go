package proxy

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawIOConn reads and writes a TCP connection with raw system calls on its
// non-blocking socket, waiting in Go's network poller as net.Conn does.
//
// Why: net.Conn's Read and Write enter the runtime's syscall state, and the
// first system call after the daemon was idle wakes the runtime's monitor
// thread (sysmon), which then polls every 20 µs until all is idle again. A
// control connection is idle between every two lines, so that is one or two
// extra thread wakeups per relayed line — measured at a quarter of the
// daemon's CPU time per session. On a non-blocking socket read and write
// return at once (data, or EAGAIN and we wait in the poller), so they need
// not hand the scheduler's P to another thread. Deadlines, Close and
// addresses are the embedded net.Conn's.
type rawIOConn struct {
	net.Conn
	rc syscall.RawConn
}

// withRawIO wraps c when it is a TCP connection; anything else (a test's
// net.Pipe) is returned as it is. Under the race detector it wraps nothing:
// the syscall package tells the detector that I/O orders the goroutines on
// either side of a connection, and raw system calls would not.
func withRawIO(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok || raceEnabled {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawIOConn{Conn: c, rc: rc}
}

func (c *rawIOConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case unix.EAGAIN:
			return false // wait in the poller
		case unix.EINTR:
			return false // cannot happen on a non-blocking socket; retry after a poll
		}
		n, errno = int(r), e
		return true
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *rawIOConn) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		var n int
		var errno syscall.Errno
		rest := p[written:]
		err := c.rc.Write(func(fd uintptr) bool {
			r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
			if e == unix.EAGAIN || e == unix.EINTR {
				return false // send buffer full: wait until writable
			}
			n, errno = int(r), e
			return true
		})
		if err == nil && errno != 0 {
			err = errno
		}
		if err != nil {
			return written, c.opError("write", err)
		}
		written += n
	}
	return written, nil
}

func (c *rawIOConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
