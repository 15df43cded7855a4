package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// rawPair returns a rawIOConn and the plain peer of a loopback TCP connection.
func rawPair(t *testing.T) (*rawIOConn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	return newRawIOConn(c, rc), peer
}

func TestRawIOConn(t *testing.T) {
	c, peer := rawPair(t)

	// Lines both ways.
	if _, err := peer.Write([]byte("USER anonymous\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "USER anonymous\r\n" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if n, err := c.Write([]byte("331 ok\r\n")); n != 8 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	got := make([]byte, 8)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "331 ok\r\n" {
		t.Fatalf("peer read %q, %v", got, err)
	}

	// A write larger than the socket buffers completes while the peer
	// reads slowly (EAGAIN, then waiting until writable).
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	done := make(chan []byte)
	go func() {
		var r []byte
		b := make([]byte, 4096)
		for len(r) < len(big) {
			time.Sleep(time.Microsecond)
			n, err := peer.Read(b)
			if err != nil {
				break
			}
			r = append(r, b[:n]...)
		}
		done <- r
	}()
	if n, err := c.Write(big); n != len(big) || err != nil {
		t.Fatalf("large Write = %d, %v", n, err)
	}
	if r := <-done; !bytes.Equal(r, big) {
		t.Fatalf("peer got %d bytes, want the %d written", len(r), len(big))
	}

	// Deadlines apply.
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want ErrDeadlineExceeded", err)
	}
	c.SetReadDeadline(time.Time{})

	// The peer closing is EOF; Close unblocks a waiting Read.
	peer.Close()
	if _, err := c.Read(buf); err != io.EOF {
		t.Fatalf("Read after the peer closed: %v, want EOF", err)
	}
	c2, _ := rawPair(t)
	errc := make(chan error)
	go func() {
		_, err := c2.Read(buf[:1])
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c2.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read across Close: %v, want net.ErrClosed", err)
	}
}

func TestWithRawIOLeavesOthers(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if withRawIO(a) != a {
		t.Error("withRawIO wrapped a net.Pipe")
	}
}
