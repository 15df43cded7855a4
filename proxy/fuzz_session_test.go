package proxy

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// addrConn gives one end of a net.Pipe real-looking addresses.
type addrConn struct {
	net.Conn
	local, remote netip.AddrPort
}

func (c addrConn) LocalAddr() net.Addr  { return net.TCPAddrFromAddrPort(c.local) }
func (c addrConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

var (
	fuzzClient = netip.MustParseAddrPort("10.77.1.2:40000")
	fuzzServer = netip.MustParseAddrPort("10.77.2.2:21")
)

// runScripted runs one in-memory session: the client sends fromClient, the
// server greets and then sends fromServer; it returns the flows opened.
func runScripted(t testing.TB, mode Mode, fromClient, fromServer []byte) []Flow {
	gate := &fakeGate{}
	// No script waits for the idle timeout; a short one could expire in a
	// stall between extending the deadline and reading data already there.
	srv := NewServer(Config{Mode: mode, IdleTimeout: time.Minute, PassivePorts: PortRange{50000, 50010}}, gate)
	srvEnd, proxyUp := net.Pipe()
	srv.dial = func(*session) (net.Conn, error) {
		return addrConn{proxyUp, netip.MustParseAddrPort("10.77.2.1:33000"), fuzzServer}, nil
	}
	cliEnd, proxyDown := net.Pipe()
	down := addrConn{proxyDown, fuzzServer, fuzzClient}
	if mode == Reverse {
		down.local = netip.MustParseAddrPort("10.77.1.1:21")
	}
	sess := srv.newSession(down, netip.MustParseAddrPort("127.0.0.1:2121"))
	done := make(chan struct{})
	go func() {
		sess.run()
		srv.wg.Done()
		close(done)
	}()
	go func() {
		srvEnd.Write([]byte("220 fuzz\r\n"))
		srvEnd.Write(fromServer)
		io.Copy(io.Discard, srvEnd)
	}()
	go io.Copy(io.Discard, cliEnd)
	cliEnd.Write(fromClient)
	cliEnd.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("session did not end")
	}
	srvEnd.Close()
	return gate.Flows()
}

// FuzzSession drives the whole rewrite path with arbitrary bytes from both
// sides. Whatever arrives, every opening must be one the policy allows.
func FuzzSession(f *testing.F) {
	f.Add([]byte("USER a\r\nPASV\r\nEPSV\r\nPORT 10,77,1,2,195,80\r\n"), []byte("331 x\r\n227 (10,77,2,2,195,80)\r\n229 (|||50000|)\r\n200 ok\r\n"), false)
	f.Add([]byte("PORT 10,77,9,9,195,80\r\nEPRT |1|10.77.1.2|80|\r\n"), []byte("227 (10,77,9,9,195,80)\r\n"), false)
	f.Add([]byte("HELP\r\nPASV\r\n"), []byte("214-x\r\n227 (10,77,2,2,195,80)\r\n214 y\r\n227 (10,77,2,2,0,21)\r\n"), true)
	f.Add([]byte("EPSV ALL\r\nPASV\r\nEPRT |1|10.77.1.2|50000|\r\n"), []byte("200 ok\r\n229 (|||50000|)\r\n"), true)
	f.Add([]byte("\xff\xf4PO\xff\xffRT 10,77,1,2,195,80\r\n"), []byte("200 x\n227 (10,77,2,2,195,80\n"), false)
	f.Fuzz(func(t *testing.T, fromClient, fromServer []byte, reverse bool) {
		mode := Transparent
		if reverse {
			mode = Reverse
		}
		for _, fl := range runScripted(t, mode, fromClient, fromServer) {
			if fl.Dst.Port() < 1024 || (fl.Target.IsValid() && fl.Target.Port() < 1024) {
				t.Fatalf("opened a privileged port: %v", fl)
			}
			switch {
			case fl.Dir == Passive && fl.Src != fuzzClient.Addr():
				t.Fatalf("passive opening for another client: %v", fl)
			case fl.Dir == Passive && mode == Transparent && fl.Dst.Addr() != fuzzServer.Addr():
				t.Fatalf("passive opening to another server: %v", fl)
			case fl.Dir == Passive && mode == Reverse && fl.Target.Addr() != fuzzServer.Addr():
				t.Fatalf("passive NAT to another server: %v", fl)
			case fl.Dir == Active && fl.Src != fuzzServer.Addr():
				t.Fatalf("active opening from another host: %v", fl)
			case fl.Dir == Active && mode == Transparent && fl.Dst.Addr() != fuzzClient.Addr():
				t.Fatalf("active opening to a third party: %v", fl)
			case fl.Dir == Active && mode == Reverse && fl.Target.Addr() != fuzzClient.Addr():
				t.Fatalf("active NAT to a third party: %v", fl)
			}
		}
	})
}

func TestScriptedSessionOpens(t *testing.T) {
	want := Flow{Src: fuzzServer.Addr(), Dst: netip.MustParseAddrPort("10.77.1.2:50000"), Dir: Active}
	flows := runScripted(t, Transparent, []byte("PORT 10,77,1,2,195,80\r\nPORT 10,77,1,3,195,80\r\n"), nil)
	if len(flows) != 1 || flows[0] != want {
		t.Fatalf("flows %v, want %v", flows, want)
	}
}
