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

	// One read and one write may run at once (different goroutines); each
	// side keeps its call's state here, so that the callbacks, made once,
	// do not allocate per call.
	rd, wr rawOp
	rdFn   func(uintptr) bool
	wrFn   func(uintptr) bool
}

// rawOp is one side's pending system call: its buffer and its outcome.
type rawOp struct {
	buf   []byte
	n     int
	errno syscall.Errno
}

// do runs one read or write system call for op; false means "not ready,
// wait in the poller".
func (op *rawOp) do(trap, fd uintptr) bool {
	r, _, e := unix.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&op.buf[0])), uintptr(len(op.buf)))
	if e == unix.EAGAIN || e == unix.EINTR {
		// EINTR cannot happen on a non-blocking socket; if it did, the
		// poller retries.
		return false
	}
	op.n, op.errno = int(r), e
	return true
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
	return newRawIOConn(c, rc)
}

func newRawIOConn(c net.Conn, rc syscall.RawConn) *rawIOConn {
	r := &rawIOConn{Conn: c, rc: rc}
	r.rdFn = func(fd uintptr) bool { return r.rd.do(unix.SYS_READ, fd) }
	r.wrFn = func(fd uintptr) bool { return r.wr.do(unix.SYS_WRITE, fd) }
	return r
}

func (c *rawIOConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rd = rawOp{buf: p}
	err := c.rc.Read(c.rdFn)
	n, errno := c.rd.n, c.rd.errno
	c.rd.buf = nil
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
		c.wr = rawOp{buf: p[written:]}
		err := c.rc.Write(c.wrFn)
		n, errno := c.wr.n, c.wr.errno
		c.wr.buf = nil
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

// setOOBInline makes c keep TCP urgent data in the stream. Clients send
// ABOR's Telnet Synch, or the whole "ABOR\r\n" (Python's ftplib), as urgent
// data; without it the kernel takes the urgent byte out of the stream and
// the line arrives garbled. (Linux refuses it on a listening socket, so it is
// set per connection, with a raw system call: see rawIOConn.)
func setOOBInline(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil // not a socket (a test's pipe)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	on := int32(1)
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_OOBINLINE,
			uintptr(unsafe.Pointer(&on)), unsafe.Sizeof(on), 0)
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// sendUrgent sends b with MSG_OOB: TCP marks its last byte as urgent. A
// connection without a socket (a test's pipe) gets b as ordinary data.
func sendUrgent(c net.Conn, b []byte) error {
	var rc syscall.RawConn
	switch c := c.(type) {
	case *rawIOConn:
		rc = c.rc
	case syscall.Conn:
		var err error
		if rc, err = c.SyscallConn(); err != nil {
			return err
		}
	default:
		_, err := c.Write(b)
		return err
	}
	var serr error
	err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, unix.MSG_OOB, nil)
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return serr
}
