#!/usr/bin/env bash
# make demo: a client / gateway / server lab in network namespaces, a gateway
# whose forward chain drops everything new except FTP control connections, and
# real FTP transfers (curl against vsftpd) first without, then with ftpgate.
# Everything lives in namespaces named fgdemo-*; the trap removes them.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, nftables); try: sudo make demo" >&2; exit 1; }
BIN=${FTPGATE_BIN:-bin/ftpgate}
[ -x "$BIN" ] || { echo "demo: $BIN missing; run 'make build' first" >&2; exit 1; }

C=fgdemo-c G=fgdemo-g S=fgdemo-s
C4=10.77.250.2 GC4=10.77.250.1 GS4=10.77.251.1 S4=10.77.251.2
C6=fd77:250::2 GC6=fd77:250::1 GS6=fd77:251::1 S6=fd77:251::2
WORK=$(mktemp -d /tmp/ftpgate-demo.XXXXXX)
FTPGATE_PID=
VSFTPD_PID=

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ok()   { printf '  \033[32mok\033[0m    %s\n' "$*"; }
bad()  { printf '  \033[31mFAIL\033[0m  %s\n' "$*"; FAILED=1; }
FAILED=0

cleanup() {
	set +e
	[ -n "$FTPGATE_PID" ] && kill "$FTPGATE_PID" 2>/dev/null && wait "$FTPGATE_PID" 2>/dev/null
	[ -n "$VSFTPD_PID" ] && kill "$VSFTPD_PID" 2>/dev/null && wait "$VSFTPD_PID" 2>/dev/null
	for ns in $C $G $S; do ip netns del "$ns" 2>/dev/null; done
	rm -rf "$WORK"
}
for ns in $C $G $S; do ip netns del "$ns" 2>/dev/null || true; done  # a previous interrupted run
trap cleanup EXIT INT TERM

bold "building the lab: client $C4/$C6 -- gateway -- server $S4/$S6"
for ns in $C $G $S; do ip netns add $ns; ip -n $ns link set lo up; done
ip link add fgdemo-c0 netns $C type veth peer name fgdemo-gc netns $G
ip link add fgdemo-s0 netns $S type veth peer name fgdemo-gs netns $G
ip -n $C addr add $C4/24 dev fgdemo-c0; ip -n $C addr add $C6/64 dev fgdemo-c0 nodad
ip -n $G addr add $GC4/24 dev fgdemo-gc; ip -n $G addr add $GC6/64 dev fgdemo-gc nodad
ip -n $G addr add $GS4/24 dev fgdemo-gs; ip -n $G addr add $GS6/64 dev fgdemo-gs nodad
ip -n $S addr add $S4/24 dev fgdemo-s0; ip -n $S addr add $S6/64 dev fgdemo-s0 nodad
for l in "$C fgdemo-c0" "$G fgdemo-gc" "$G fgdemo-gs" "$S fgdemo-s0"; do set -- $l; ip -n $1 link set $2 up; done
ip -n $C route add default via $GC4; ip -n $C -6 route add default via $GC6
ip -n $S route add default via $GS4; ip -n $S -6 route add default via $GS6
ip netns exec $G sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

cat > "$WORK/host.nft" <<NFT
# The gateway's own firewall: new forwarded connections are dropped, except
# FTP control connections and what ftpgate admits (the ct mark line).
table inet host {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
		ct mark & 0x100 == 0x100 accept
		tcp dport 21 accept
		icmp type echo-request accept
		icmpv6 type echo-request accept
	}
}
NFT
ip netns exec $G nft -f "$WORK/host.nft"
echo "  gateway firewall:"; sed -n '/chain forward/,/^\t}/p' "$WORK/host.nft" | sed 's/^/    /'

mkdir -p "$WORK/ftp/pub" "$WORK/empty"
head -c 4194304 /dev/urandom > "$WORK/ftp/pub/demo.bin"
chmod 0555 "$WORK/ftp"
WANT=$(sha256sum < "$WORK/ftp/pub/demo.bin" | cut -d' ' -f1)
cat > "$WORK/vsftpd.conf" <<CONF
listen=NO
listen_ipv6=YES
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=$WORK/ftp
local_enable=NO
write_enable=NO
pasv_enable=YES
port_enable=YES
connect_from_port_20=YES
pasv_min_port=40000
pasv_max_port=40100
pasv_promiscuous=NO
port_promiscuous=NO
seccomp_sandbox=NO
secure_chroot_dir=$WORK/empty
xferlog_enable=YES
vsftpd_log_file=$WORK/vsftpd.log
CONF
ip netns exec $S vsftpd "$WORK/vsftpd.conf" & VSFTPD_PID=$!
for _ in $(seq 50); do ip netns exec $S bash -c "exec 3<>/dev/tcp/127.0.0.1/21" 2>/dev/null && break; sleep 0.1; done
echo "  vsftpd serves pub/demo.bin (4 MiB, sha256 ${WANT:0:16}…)"

# fetch FAMILY MODE: curl in the client namespace; prints the sha256 or nothing.
fetch() {
	local host=$S4 opts=()
	[ "$1" = 6 ] && host="[$S6]"
	case $2 in
		PASV) opts=(--ftp-pasv --disable-epsv) ;;
		EPSV) opts=(--ftp-pasv) ;;
		PORT) opts=(--ftp-port - --disable-eprt) ;;
		EPRT) opts=(--ftp-port -) ;;
	esac
	rm -f "$WORK/got"
	ip netns exec $C curl -sS --max-time 6 "${opts[@]}" -o "$WORK/got" "ftp://$host/pub/demo.bin" 2>>"$WORK/curl.err" || return 0
	sha256sum < "$WORK/got" | cut -d' ' -f1
}
MODES4="PASV EPSV PORT EPRT"
MODES6="EPSV EPRT"  # PASV and PORT carry IPv4 addresses only

bold "1. without ftpgate: the firewall drops every data connection"
for m in PASV PORT; do
	got=$(fetch 4 $m)
	if [ "$got" = "$WANT" ]; then bad "IPv4 $m went through: the firewall is not closed"; else ok "IPv4 $m blocked (control channel fine, data connection dropped)"; fi
done

bold "2. with ftpgate on the gateway"
ip netns exec $G "$BIN" run --pinhole-timeout 10s --log-format text >"$WORK/ftpgate.log" 2>&1 & FTPGATE_PID=$!
for _ in $(seq 50); do ip netns exec $G curl -fsS -o /dev/null http://127.0.0.1:9121/readyz 2>/dev/null && break; sleep 0.1; done
echo "  $BIN run  (pid $FTPGATE_PID; log $WORK/ftpgate.log)"
for fam in 4 6; do
	modes=$MODES4; [ $fam = 6 ] && modes=$MODES6
	for m in $modes; do
		start=$(date +%s%N)
		got=$(fetch $fam $m)
		ms=$(( ($(date +%s%N) - start) / 1000000 ))
		if [ "$got" = "$WANT" ]; then ok "IPv$fam $m  4 MiB, sha256 matches (${ms} ms)"; else bad "IPv$fam $m  transfer failed: $(tail -1 "$WORK/curl.err")"; fi
	done
done

bold "3. a bounce attack: PORT naming a third host is refused"
reply=$(ip netns exec $C python3 - "$S4" <<'PY'
import socket, sys
s = socket.create_connection((sys.argv[1], 21), timeout=5)
f = s.makefile("rwb")
f.readline()
for cmd in (b"USER anonymous\r\n", b"PASS x\r\n"):
    f.write(cmd); f.flush(); f.readline()
f.write(b"PORT 10,77,251,9,0,22\r\n"); f.flush()
print(f.readline().decode().strip())
PY
)
case "$reply" in 501*) ok "client got: $reply";; *) bad "bounce PORT answered: $reply";; esac

bold "4. what the kernel holds: ftpgate's table (pinholes are one-shot set elements)"
ip netns exec $G nft list table inet ftpgate | sed -n '1,200p' | grep -E 'table|chain|set pin|elements|tproxy|socket|delete|ct mark set' | sed 's/^/    /' | head -20

bold "5. metrics (curl http://127.0.0.1:9121/metrics, excerpt)"
ip netns exec $G curl -fsS http://127.0.0.1:9121/metrics | grep -E '^ftpgate_(sessions_total|pinholes_(opened|closed)_total|refusals_total)' | grep -v ' 0$' | sed 's/^/    /'

bold "6. stopping ftpgate (SIGTERM): its table, rules and routes go away"
kill "$FTPGATE_PID"; wait "$FTPGATE_PID" 2>/dev/null || true; FTPGATE_PID=
if ip netns exec $G nft list tables | grep -q ftpgate; then bad "table inet ftpgate still present"; else ok "no ftpgate table left"; fi
if ip -n $G rule | grep -q fwmark; then bad "policy routing rule left"; else ok "no fwmark rule left"; fi

echo
if [ $FAILED = 0 ]; then echo "demo: all good. Lab removed."; else echo "demo: something failed; see above (logs were in $WORK)"; cp -r "$WORK" /tmp/ftpgate-demo-failed 2>/dev/null; fi
exit $FAILED
