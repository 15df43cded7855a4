#!/usr/bin/env python3
"""ftplib driver for the ftpgate e2e tests.

  ftpget.py --host ADDR --mode pasv|epsv|port|eprt [--timeout S] --get PATH   > content
  ftpget.py --host ADDR --mode ...                               --put PATH   < content

--abort: after the transfer, send ABOR the way ftplib does (the whole line as
TCP urgent data), want "225"/"226", then NOOP: the session must still pair
replies with commands.

ftplib alone uses PASV/PORT on IPv4 and EPSV/EPRT on IPv6 only. This script
forces the requested command in both families (EPSV/EPRT over IPv4 are done
explicitly) and afterwards verifies from its own transcript that exactly that
data-connection command was used. Unlike ftplib's default it honours the
address in a 227 reply (so a proxy that rewrites it badly is caught).

Exit codes: 0 ok, 1 FTP/network error, 2 usage/unsupported, 3 wrong command used.
"""

import argparse
import ftplib
import socket
import sys

DATA_VERBS = {"PASV", "EPSV", "PORT", "EPRT", "LPRT", "LPSV"}


class FTP(ftplib.FTP):
    def __init__(self, mode, **kw):
        self.mode = mode
        self.sent = []
        super().__init__(**kw)

    def putcmd(self, line):
        verb = line.split(" ", 1)[0].upper()
        self.sent.append(verb)
        super().putcmd(line)

    def makepasv(self):
        peer = self.sock.getpeername()
        if self.mode == "pasv":
            host, port = ftplib.parse227(self.sendcmd("PASV"))
            return host, port  # honour the advertised address
        if self.mode == "epsv":
            return ftplib.parse229(self.sendcmd("EPSV"), peer)
        raise ValueError("makepasv in active mode %s" % self.mode)

    def makeport(self):
        # Listen on the control connection's local address (the client's).
        host = self.sock.getsockname()[0]
        sock = socket.create_server((host, 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        try:
            if self.mode == "port":
                self.sendport(host, port)
            elif self.mode == "eprt":
                self.sendeprt(host, port)  # |1| for AF_INET, |2| for AF_INET6
            else:
                raise ValueError("makeport in passive mode %s" % self.mode)
        except Exception:
            sock.close()
            raise
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        return sock


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=21)
    ap.add_argument("--mode", required=True, choices=["pasv", "epsv", "port", "eprt"])
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--user", default="anonymous")
    ap.add_argument("--password", default="e2e@")
    ap.add_argument("--abort", action="store_true")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--get")
    g.add_argument("--put")
    a = ap.parse_args()

    v6 = ":" in a.host
    if v6 and a.mode in ("pasv", "port"):
        print("ftpget.py: %s cannot carry an IPv6 address" % a.mode.upper(), file=sys.stderr)
        return 2

    ftp = FTP(a.mode, timeout=a.timeout)
    try:
        ftp.connect(a.host, a.port)
        ftp.login(a.user, a.password)
        ftp.set_pasv(a.mode in ("pasv", "epsv"))
        if a.get:
            chunks = []
            ftp.retrbinary("RETR " + a.get, chunks.append)
            data = b"".join(chunks)
        else:
            data = sys.stdin.buffer.read()
            import io
            ftp.storbinary("STOR " + a.put, io.BytesIO(data))
        if a.abort:
            ftp.sent.append("ABOR")
            resp = ftp.abort()  # sendall(b"ABOR\r\n", MSG_OOB); raises unless 225/226/426
            print("ftpget.py: ABOR -> %s" % resp, file=sys.stderr)
            ftp.voidcmd("NOOP")
        try:
            ftp.quit()
        except Exception:
            ftp.close()
    except (ftplib.all_errors) as e:
        print("ftpget.py: %s %s: %s: %s (commands: %s)"
              % (a.mode, a.host, type(e).__name__, e, " ".join(ftp.sent)), file=sys.stderr)
        ftp.close()
        return 1

    used = [v for v in ftp.sent if v in DATA_VERBS]
    want = a.mode.upper()
    if not used or any(v != want for v in used):
        print("ftpget.py: wanted %s, sent %s" % (want, " ".join(ftp.sent)), file=sys.stderr)
        return 3
    print("ftpget.py: ok, commands: %s" % " ".join(ftp.sent), file=sys.stderr)
    if a.get:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
