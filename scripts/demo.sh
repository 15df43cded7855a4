#!/usr/bin/env bash
# make demo: a client / gateway / server lab in network namespaces, a gateway
# whose forward chain drops everything new except FTP control connections, and
# real FTP transfers (curl against vsftpd) first without, then with ftpgate.
# Everything lives in namespaces named fgdemo-*; the trap removes them. When
# the demo fails (or is interrupted), the logs (ftpgate, vsftpd, every curl
# -v, the gateway's ruleset) are kept in a fresh /tmp/ftpgate-demo-failed.*
# directory, whose path it prints last. Exit status: 0 when every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, nftables); try: sudo env PATH=\"\$PATH\" make demo" >&2; exit 1; }
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

# stop PID: SIGTERM, then SIGKILL if it is still there after 5 s; its status.
stop() {
	kill "$1" 2>/dev/null
	for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$1" 2>/dev/null
	wait "$1" 2>/dev/null
}

# On every exit: stop the daemons, keep the logs unless all went well, and
# remove the lab.
cleanup() {
	local rc=$? keep='' f
	set +e
	trap '' INT TERM # a second Ctrl-C must not cut the teardown short
	if [ "$rc" != 0 ]; then
		keep=$(mktemp -d /tmp/ftpgate-demo-failed.XXXXXX)
		ip netns exec $G nft list ruleset >"$keep/gateway-ruleset.nft" 2>&1
	fi
	[ -n "$FTPGATE_PID" ] && stop "$FTPGATE_PID"
	[ -n "$VSFTPD_PID" ] && stop "$VSFTPD_PID"
	if [ -n "$keep" ]; then
		for f in "$WORK"/*; do
			case ${f##*/} in ftp | empty | got) continue ;; esac # the 4 MiB file
			cp -r "$f" "$keep"/
		done
	fi
	for ns in $C $G $S; do ip netns del "$ns" 2>/dev/null; done
	rm -rf "$WORK"
	echo "demo: lab removed."
	[ -z "$keep" ] || echo "demo: FAILED (exit status $rc); logs kept in $keep"
}
for ns in $C $G $S; do ip netns del "$ns" 2>/dev/null || true; done  # a previous interrupted run
trap cleanup EXIT
trap 'exit 130' INT TERM

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
ip netns exec $S vsftpd "$WORK/vsftpd.conf" >"$WORK/vsftpd.out" 2>&1 & VSFTPD_PID=$!
# Ready when it greets (220) on port 21.
greets() { ip netns exec $S bash -c 'exec 3<>/dev/tcp/127.0.0.1/21 && read -r -t 2 line <&3 && [[ $line == 220* ]]' 2>/dev/null; }
for _ in $(seq 50); do
	kill -0 "$VSFTPD_PID" 2>/dev/null || break
	greets && break
	sleep 0.1
done
if ! greets; then
	if kill -0 "$VSFTPD_PID" 2>/dev/null; then state="does not greet (220) on port 21 after 5 s"; else state="exited"; fi
	echo "demo: vsftpd in namespace $S $state; its output:" >&2
	cat "$WORK/vsftpd.out" "$WORK/vsftpd.log" 2>/dev/null | tail -20 | sed 's/^/    /' >&2
	echo "  its config and log are kept (path below); is port 21 free in a fresh namespace, vsftpd -v working?" >&2
	exit 1
fi
echo "  vsftpd serves pub/demo.bin (4 MiB, sha256 ${WANT:0:16}…)"

# fetch STEP FAMILY MODE: curl -v in the client namespace. Sets FETCH_RC
# (curl's exit status), FETCH_SUM (sha256 of the file, when curl succeeded)
# and FETCH_LOG (its verbose output: the control dialogue, "> PASV", "< 227 ...").
fetch() {
	local host=$S4 opts=()
	[ "$2" = 6 ] && host="[$S6]"
	case $3 in
		PASV) opts=(--ftp-pasv --disable-epsv) ;;
		EPSV) opts=(--ftp-pasv) ;;
		PORT) opts=(--ftp-port - --disable-eprt) ;;
		EPRT) opts=(--ftp-port -) ;;
	esac
	FETCH_LOG=$WORK/curl-$1-ipv$2-$3.log FETCH_RC=0 FETCH_SUM=
	rm -f "$WORK/got"
	ip netns exec $C curl -q -sS -v --max-time 6 "${opts[@]}" -o "$WORK/got" "ftp://$host/pub/demo.bin" 2>"$FETCH_LOG" || FETCH_RC=$?
	if [ "$FETCH_RC" = 0 ] && [ -f "$WORK/got" ]; then FETCH_SUM=$(sha256sum <"$WORK/got" | cut -d' ' -f1); fi
}
# curl_error: curl's own error line of the last fetch.
curl_error() { grep '^curl: (' "$FETCH_LOG" | tail -1 || echo "curl exit status $FETCH_RC"; }

# data_dropped MODE: whether the last fetch failed at the data connection
# only: the control dialogue negotiated it (227/229 received, or PORT/EPRT
# accepted and RETR sent) and curl then timed out (exit 28) waiting for it.
data_dropped() {
	[ "$FETCH_RC" = 28 ] || return 1
	case $1 in
		PASV) grep -q '^< 227 ' "$FETCH_LOG" ;;
		EPSV) grep -q '^< 229 ' "$FETCH_LOG" ;;
		PORT | EPRT) grep -q "^< 200 $1" "$FETCH_LOG" && grep -q '^> RETR ' "$FETCH_LOG" ;;
	esac
}

MODES4="PASV EPSV PORT EPRT"
MODES6="EPSV EPRT"  # PASV and PORT carry IPv4 addresses only

bold "1. without ftpgate: the firewall drops every data connection"
for m in PASV PORT; do
	fetch without 4 $m
	if [ "$FETCH_SUM" = "$WANT" ]; then
		bad "IPv4 $m went through: the firewall is not closed"
	elif data_dropped $m; then
		case $m in
			PASV) ok "IPv4 $m blocked: control channel fine (227 received), the client's data connection dropped (curl timed out)" ;;
			PORT) ok "IPv4 $m blocked: control channel fine (PORT accepted, RETR sent), the server's data connection dropped (curl timed out)" ;;
		esac
	else
		bad "IPv4 $m failed, but not (only) at the data connection: $(curl_error); see ${FETCH_LOG##*/}"
	fi
done

bold "2. with ftpgate on the gateway"
FG_ARGS=(--pinhole-timeout 10s --log-format text)
# ftpgate_failed WHAT: why ftpgate is not serving (its log, 'ftpgate check'
# in the gateway namespace), then exit 1.
ftpgate_failed() {
	echo >&2
	echo "demo: ftpgate $1. The end of its log (ftpgate.log):" >&2
	tail -25 "$WORK/ftpgate.log" | sed 's/^/    /' >&2
	echo "  What the gateway lacks, according to: ip netns exec $G $BIN check ${FG_ARGS[*]}" >&2
	ip netns exec $G "$BIN" check "${FG_ARGS[@]}" 2>&1 | sed 's/^/    /' >&2 || true
	echo "  Next: fix what 'check' reports as FAIL (on a real gateway: $BIN check); if it reports" >&2
	echo "  none, the log above says why ftpgate stopped. Then rerun make demo." >&2
	exit 1
}
ftpgate_alive() { [ -n "$FTPGATE_PID" ] && kill -0 "$FTPGATE_PID" 2>/dev/null; }
ftpgate_exited() {
	local rc=0
	wait "$FTPGATE_PID" 2>/dev/null || rc=$?
	FTPGATE_PID=
	ftpgate_failed "exited (status $rc) $1"
}

ip netns exec $G "$BIN" run "${FG_ARGS[@]}" >"$WORK/ftpgate.log" 2>&1 & FTPGATE_PID=$!
# Ready when /readyz says so (table installed, listeners up); 15 s at most.
ready() { ip netns exec $G curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:9121/readyz 2>/dev/null; }
for _ in $(seq 150); do
	ftpgate_alive || break
	ready && break
	sleep 0.1
done
ftpgate_alive || ftpgate_exited "before it was ready"
ready || ftpgate_failed "runs but is not ready after 15 s (http://127.0.0.1:9121/readyz in $G)"
echo "  $BIN run ${FG_ARGS[*]}  (pid $FTPGATE_PID, ready)"
for fam in 4 6; do
	modes=$MODES4; [ $fam = 6 ] && modes=$MODES6
	for m in $modes; do
		start=$(date +%s%N)
		fetch with $fam $m
		ms=$(( ($(date +%s%N) - start) / 1000000 ))
		if [ "$FETCH_SUM" = "$WANT" ]; then ok "IPv$fam $m  4 MiB, sha256 matches (${ms} ms)"; else bad "IPv$fam $m  transfer failed: $(curl_error); see ${FETCH_LOG##*/}"; fi
	done
done
ftpgate_alive || ftpgate_exited "during the transfers"

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
) || reply="(no reply: the client script failed, status $?)"
case "$reply" in 501*) ok "client got: $reply";; *) bad "bounce PORT answered: $reply";; esac

bold "4. what the kernel holds: ftpgate's table (pinholes are one-shot set elements)"
if table=$(ip netns exec $G nft list table inet ftpgate 2>&1); then
	awk '/table|chain|set pin|elements|tproxy|socket|delete|ct mark set/ && n++ < 20 { print "    " $0 }' <<<"$table"
else
	bad "no table inet ftpgate in the gateway: $table"
fi

bold "5. metrics (curl http://127.0.0.1:9121/metrics, excerpt)"
if metrics=$(ip netns exec $G curl -fsS --max-time 5 http://127.0.0.1:9121/metrics 2>&1); then
	awk '/^ftpgate_(sessions_total|pinholes_(opened|closed)_total|refusals_total)/ && !/ 0$/ { print "    " $0 }' <<<"$metrics"
else
	bad "metrics not served: $metrics"
fi

bold "6. stopping ftpgate (SIGTERM): its table, rules and routes go away"
if ftpgate_alive; then
	rc=0
	stop "$FTPGATE_PID" || rc=$?
	FTPGATE_PID=
	if [ $rc = 0 ]; then ok "ftpgate exited (status 0)"; else bad "ftpgate exited with status $rc on SIGTERM"; fi
else
	ftpgate_exited "before SIGTERM"
fi
if ip netns exec $G nft list tables | grep -q ftpgate; then bad "table inet ftpgate still present"; else ok "no ftpgate table left"; fi
if ip -n $G rule | grep -q fwmark; then bad "policy routing rule left"; else ok "no fwmark rule left"; fi

echo
if [ $FAILED = 0 ]; then echo "demo: all good."; else echo "demo: something failed; see above."; fi
exit $FAILED
