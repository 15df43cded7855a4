#!/usr/bin/env bash
# Checks every file under deploy/ with the real tools, one line per check:
#
#   container   the Dockerfile's structure, and its exact build command run
#               here on the files its build context holds: a static binary
#   systemd     systemd-analyze verify and security (exposure score), the
#               example config parsed by ftpgate itself (and invalid settings
#               refused by --dry-run), sysctl and module files
#   nftables    nft -c -f of both example rulesets, then each loaded into a
#               throwaway network namespace where 'ftpgate check' must find
#               the ct mark line
#   runtime     in that namespace, ftpgate runs as the unit would run it: a
#               non-root user with exactly the unit's ambient capabilities,
#               no_new_privs, and the unit's seccomp policy (SystemCallFilter,
#               SystemCallErrorNumber, RestrictAddressFamilies,
#               MemoryDenyWriteExecute) rebuilt with libseccomp; transparent
#               mode gets ready (its conntrack event listener running),
#               reverse mode listens on :21 and relays an FTP
#               dialogue (PASV rewritten into --passive-ports, pinhole opened);
#               both leave nothing behind on SIGTERM. Along the way: READY=1
#               and STOPPING=1 reach $NOTIFY_SOCKET (Type=notify), SIGHUP
#               reloads and names settings that need a restart, a second
#               SIGTERM ends the drain of an open session at once, and a
#               route table holding someone else's route makes both
#               'ftpgate check' and 'ftpgate run' refuse (and leaves it).
#               Then as the DaemonSet's container would run it (UID 0, only
#               the added capabilities).
#   kubernetes  YAML syntax and consistency (selectors, ports, probes,
#               capabilities, grace period > --shutdown-grace), ConfigMap
#               parsed by ftpgate
#   prometheus  promtool check rules, promtool test rules, metric names
#   grafana     JSON, structure, every query parsed by promtool and using
#               only ftpgate's metric names, every metric shown somewhere
#   metrics     every ftpgate_* metric the binary exposes is one the
#               dashboard and alerts know (catches renames)
#
# Needs root (network namespaces; installing missing Debian packages:
# systemd, prometheus (promtool), python3-yaml, python3-seccomp, nftables,
# iproute2, curl, file).
# Never touches the host's own ruleset, routes or rules: everything that
# changes state happens inside the namespace fgdeploy-<pid>, deleted on exit.
# Exit status: 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

GO=${GO:-go}
NS=fgdeploy-$$
TMP=$(mktemp -d /tmp/ftpgate-check-deploy.XXXXXX)
chmod 0755 "$TMP" # the non-root runs below execute the binary and the helper from here
SRVPID=
FGPID=
BGPIDS=() # helpers started in the background (notify listener, held sessions)
FAILED=0
START=$(date +%s)
# The unit's --config path is installed from this file; used as the base config.
CONF=deploy/systemd/ftpgate.yaml
# Capabilities that may appear anywhere in deploy/ (everything else is a finding).
ALLOWED_CAPS="CAP_NET_ADMIN CAP_NET_BIND_SERVICE"

cleanup() {
	local p
	for p in "${BGPIDS[@]}"; do
		kill "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	if [ -n "$SRVPID" ]; then
		kill "$SRVPID" 2>/dev/null
		wait "$SRVPID" 2>/dev/null
	fi
	if [ -n "$FGPID" ]; then
		kill -KILL "$FGPID" 2>/dev/null
		wait "$FGPID" 2>/dev/null
	fi
	ip netns del "$NS" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# check NAME FUNCTION: runs FUNCTION with its output in a log; prints one line,
# and the log (indented) when it failed. FUNCTION may print a detail line on fd 3.
check() {
	local name=$1 fn=$2 log="$TMP/log" detail="$TMP/detail"
	: >"$log"
	: >"$detail"
	local t0=$SECONDS rc=0
	"$fn" >"$log" 2>&1 3>"$detail" || rc=$?
	if [ -n "$FGPID" ]; then # a failed runtime check left ftpgate running
		kill -KILL "$FGPID" 2>/dev/null
		wait "$FGPID" 2>/dev/null
		FGPID=
	fi
	if [ $rc = 0 ]; then
		printf 'ok    %-44s %3ss  %s\n' "$name" $((SECONDS - t0)) "$(tr '\n' ' ' <"$detail")"
	else
		printf 'FAIL  %-44s %3ss  %s\n' "$name" $((SECONDS - t0)) "$(tr '\n' ' ' <"$detail")"
		sed 's/^/        /' "$log" | tail -40
		FAILED=1
	fi
}
say() { echo "$*" >&3; }

# ---------------------------------------------------------------- deps --
PY=
pick_python() {
	local p
	# Debian's python first: the python3-* packages below are for it.
	for p in /usr/bin/python3 python3; do
		if command -v "$p" >/dev/null && "$p" -c 'import yaml, seccomp' 2>/dev/null; then
			PY=$(command -v "$p")
			return 0
		fi
	done
	return 1
}

deps() {
	[ "$(id -u)" = 0 ] || { echo "needs root: network namespaces, nftables, apt-get"; return 1; }
	local missing=() want=(systemd-analyze:systemd promtool:prometheus nft:nftables ip:iproute2
		ss:iproute2 sysctl:procps curl:curl file:file setpriv:util-linux)
	local w
	for w in "${want[@]}"; do
		command -v "${w%%:*}" >/dev/null || missing+=("${w#*:}")
	done
	pick_python || missing+=(python3-yaml python3-seccomp)
	if ((${#missing[@]})); then
		# make check-deploy has run it already; this covers running the script alone.
		echo "missing: ${missing[*]}; installing with scripts/install-deps.sh deploy"
		GO="$GO" ./scripts/install-deps.sh deploy || return 1
		pick_python || { echo "python3 cannot import yaml and seccomp after installing python3-yaml python3-seccomp"; return 1; }
	fi
	command -v "$GO" >/dev/null || { echo "no Go toolchain ('$GO') in PATH"; return 1; }
	say "python $PY; $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3); systemd $(systemd-analyze --version | head -1 | cut -d' ' -f2); $(nft --version)"
}

# All structural checks are in one Python helper: py SUBCOMMAND ARGS...
py() { "$PY" "$TMP/check.py" "$@"; }

# ----------------------------------------------------------- container --
BIN=
VERSION=check-deploy-$$

dockerfile_structure() {
	local out
	out=$(py dockerfile deploy/container/Dockerfile go.mod) || { echo "$out"; return 1; }
	say "$out (hadolint is not in Debian: structural check)"
}

# The RUN line with 'go build' from the Dockerfile, run here on a copy of what
# the build context holds (Dockerfile.dockerignore applied).
container_build() {
	local line cmd
	line=$(grep -E '^RUN .*go build' deploy/container/Dockerfile)
	[ "$(wc -l <<<"$line")" = 1 ] || { echo "want exactly one 'RUN ... go build' line in the Dockerfile, got: $line"; return 1; }
	cmd=$(sed -E 's/^RUN +//; s/--mount=[^ ]+ +//g' <<<"$line")
	grep -q -- '-o /out/ftpgate ' <<<"$cmd" || { echo "build command must write /out/ftpgate (COPY --from=build takes it from there): $cmd"; return 1; }
	cmd=${cmd//\/out\/ftpgate/$TMP\/out\/ftpgate}
	py context deploy/container/Dockerfile.dockerignore "$TMP/context" || return 1
	echo "+ (cd <context> && VERSION=$VERSION $cmd)"
	(cd "$TMP/context" && VERSION=$VERSION bash -c "$cmd") || return 1
	BIN=$TMP/out/ftpgate
	local f l
	f=$(file -b "$BIN")
	l=$(ldd "$BIN" 2>&1)
	echo "file: $f"
	echo "ldd: $l"
	grep -q 'statically linked' <<<"$f" || { echo "not statically linked: FROM scratch cannot run it"; return 1; }
	grep -Eq 'not a dynamic executable|statically linked' <<<"$l" || { echo "ldd finds dynamic dependencies"; return 1; }
	[ "$("$BIN" version)" = "ftpgate $VERSION" ] || { echo "'ftpgate version' says '$("$BIN" version)', want 'ftpgate $VERSION' (-X main.version)"; return 1; }
	say "static, $(du -h "$BIN" | cut -f1), '$("$BIN" version)'"
}

# ------------------------------------------------------------- systemd --
unit_verify() {
	# verify needs ExecStart's binary: a copy of the unit pointing at the one just built.
	mkdir -p "$TMP/unit"
	sed "s#^ExecStart=/usr/local/bin/ftpgate #ExecStart=$BIN #" deploy/systemd/ftpgate.service >"$TMP/unit/ftpgate.service"
	grep -q "^ExecStart=$BIN run --config /etc/ftpgate/ftpgate.yaml\$" "$TMP/unit/ftpgate.service" ||
		{ echo "ExecStart must be: /usr/local/bin/ftpgate run --config /etc/ftpgate/ftpgate.yaml"; return 1; }
	local out rc
	out=$(systemd-analyze verify --man=no "$TMP/unit/ftpgate.service" 2>&1)
	rc=$?
	# Any message (unknown key, bad value, missing binary) is a failure.
	if [ $rc != 0 ] || [ -n "$out" ]; then
		echo "$out"
		return 1
	fi
	out=$(py unit deploy/systemd/ftpgate.service "$CONF" "$ALLOWED_CAPS") || { echo "$out"; return 1; }
	say "no warnings; $out"
}

unit_security() {
	local out score
	# Offline analysis of the unit file; 0 = fully locked down, 10 = unrestricted.
	out=$(systemd-analyze security --offline=true --threshold=20 "$TMP/unit/ftpgate.service" 2>&1) || { echo "$out"; return 1; }
	score=$(sed -n 's/.*Overall exposure level for ftpgate.service: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p' <<<"$out")
	echo "$out" | grep '✗'
	[ -n "$score" ] || { echo "no exposure score in: $out"; return 1; }
	say "exposure $score"
	# A regression in hardening fails here: keep it at 2.0 or below.
	awk -v s="${score%% *}" 'BEGIN { exit !(s <= 2.0) }' || { echo "exposure $score is above 2.0: hardening regressed"; return 1; }
}

config_example() {
	"$BIN" run --config "$CONF" --dry-run >"$TMP/dry-transparent.nft" || return 1
	grep -q '^table inet ftpgate' "$TMP/dry-transparent.nft" || { echo "dry run printed no table"; return 1; }
	# The reverse-mode settings the file documents (commented out).
	"$BIN" run --config "$CONF" --mode reverse --listen 203.0.113.5:21 --upstream ftp.internal:21 \
		--passive-ports 50000-50999 --public-address 203.0.113.5 --dry-run >/dev/null || return 1
	# The documented reload recipe ('--dry-run >/dev/null && systemctl
	# reload') relies on the exit status: each invalid setting must fail it.
	local bad out
	for bad in "--route-table 254" "--route-table -1" "--route-table 0" "--fwmark 4294967297" "--listen=" \
		"--max-sessions 0" "--pinhole-timeout 0s" "--passive-ports 21-2000" "--log-level loud"; do
		# shellcheck disable=SC2086
		if out=$("$BIN" run --config "$CONF" $bad --dry-run 2>&1); then
			echo "--dry-run accepted $bad (status 0)"
			return 1
		fi
		echo "$bad: $(tail -1 <<<"$out")"
	done
	say "parsed by 'ftpgate run --dry-run' (transparent and reverse); 9 invalid settings make it fail"
}

# -------------------------------------------------------- in a netns --
netns_up() {
	ip netns del "$NS" 2>/dev/null
	ip netns add "$NS" && ip -n "$NS" link set lo up
}
in_ns() { ip netns exec "$NS" "$@"; }

nft_check_file() { # FILE: syntax check only
	in_ns nft -c -f "$1"
}

# ruleset_with_ftpgate_check FILE: loads FILE (twice: it must be idempotent)
# into the namespace and asks 'ftpgate check' whether it accepts the ct mark.
ruleset_with_ftpgate_check() {
	local f=$1 out chains
	in_ns nft flush ruleset
	nft_check_file "$f" || return 1
	in_ns nft -f "$f" && in_ns nft -f "$f" || { echo "loading $f twice failed (must replace its own table only)"; return 1; }
	out=$(in_ns "$BIN" check 2>&1)
	echo "$out"
	chains=$(in_ns nft -j list chains | "$PY" -c '
import json, sys
n = 0
for o in json.load(sys.stdin)["nftables"]:
    c = o.get("chain")
    if c and c.get("hook") in ("input", "forward") and c.get("policy") == "drop":
        n += 1
print(n)')
	[ "$chains" -ge 1 ] || { echo "no input/forward chain with policy drop: not a useful example"; return 1; }
	if grep -q "does not accept ftpgate's ct mark" <<<"$out"; then return 1; fi
	if grep -q "after [0-9]* drop/reject rules" <<<"$out"; then echo "drop rules before the ct mark line"; return 1; fi
	[ "$(grep -c "accepts ftpgate's ct mark" <<<"$out")" = "$chains" ] ||
		{ echo "want 'accepts ftpgate's ct mark' for each of the $chains drop chains"; return 1; }
	say "nft -c ok; loaded in a netns: 'ftpgate check' finds the ct mark line in all $chains drop chains"
}

host_firewall() { ruleset_with_ftpgate_check deploy/nftables/host-firewall.nft; }
reverse_firewall() {
	ruleset_with_ftpgate_check deploy/nftables/reverse-mode.nft || return 1
	# The passive range must not be open: no rule may mention it.
	if in_ns nft list table inet filter | grep -Eq '50000|5[0-9]{4}-'; then
		echo "reverse-mode.nft mentions the passive range; ftpgate opens exactly the negotiated ports"
		return 1
	fi
}

sysctl_file() {
	local f=deploy/systemd/ftpgate-sysctl.conf bad
	# Only per-network-namespace keys: applying them in the netns must not touch the host.
	bad=$(grep -Ev '^[[:space:]]*(#|$)' "$f" | grep -Ev '^net\.(netfilter|ipv4|ipv6)\.' || true)
	[ -z "$bad" ] || { echo "unexpected keys: $bad"; return 1; }
	in_ns sysctl -q -p "$f" || return 1
	[ "$(in_ns cat /proc/sys/net/netfilter/nf_conntrack_acct)" = 1 ] || return 1
	# The modules list: plain module names.
	if grep -Ev '^[[:space:]]*(#|$)' deploy/systemd/ftpgate-modules.conf | grep -Ev '^[a-z0-9_]+$'; then
		echo "ftpgate-modules.conf: one module name per line"
		return 1
	fi
	say "applied in the netns (nf_conntrack_acct=1); modules file well-formed"
}

# start_ftpgate LOG [NAME=VALUE...] COMMAND...: runs ftpgate in the namespace
# (through env(1), which execs: $FGPID is ftpgate's own PID).
start_ftpgate() {
	local log=$1
	shift
	ip netns exec "$NS" env "$@" >"$log" 2>&1 &
	FGPID=$!
}

wait_ready() { # URL
	for _ in $(seq 100); do
		if ! kill -0 "$FGPID" 2>/dev/null; then
			local rc=0
			wait "$FGPID" || rc=$?
			FGPID=
			echo "ftpgate exited (status $rc) before it was ready"
			[ $rc = 159 ] && echo "status 159 = SIGSYS: it made a system call outside the unit's SystemCallFilter"
			return 1
		fi
		in_ns curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "not ready after 10s: $1"
	return 1
}

# stop_ftpgate GRACE: SIGTERM, wait up to GRACE seconds, then: clean exit and
# nothing left in the namespace.
stop_ftpgate() {
	local grace=$1 rc
	kill -TERM "$FGPID"
	for _ in $(seq $((grace * 10))); do
		kill -0 "$FGPID" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$FGPID" 2>/dev/null; then
		echo "still running ${grace}s after SIGTERM (the unit's TimeoutStopSec would SIGKILL it)"
		return 1
	fi
	wait "$FGPID"
	rc=$?
	FGPID=
	[ $rc = 159 ] && echo "status 159 = SIGSYS: a system call outside the unit's SystemCallFilter"
	[ $rc = 0 ] || { echo "exit status $rc after SIGTERM"; return 1; }
	if in_ns nft list tables | grep -q 'inet ftpgate'; then echo "table inet ftpgate left behind"; return 1; fi
	if in_ns ip rule | grep -q fwmark; then echo "fwmark policy rule left behind"; return 1; fi
}

# The unit's scheduling and RLIMIT_RTTIME, set as root as systemd does
# before it drops privileges (prlimit, chrt); then setpriv arguments granting
# exactly the unit's AmbientCapabilities to a non-root user (DynamicUser
# picks UIDs from 61184 up), with the unit's bounding set and no_new_privs;
# then the unit's seccomp policy.
UNIT=deploy/systemd/ftpgate.service
unit_sandbox() {
	local amb bnd rr rttime
	amb=$(sed -n 's/^AmbientCapabilities=//p' "$UNIT" | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
	bnd=$(sed -n 's/^CapabilityBoundingSet=//p' "$UNIT" | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
	rr=$(sed -n 's/^CPUSchedulingPriority=//p' "$UNIT")
	rttime=$(sed -n 's/^LimitRTTIME=\([0-9]*\)ms:infinity$/\1000:unlimited/p' "$UNIT")
	if grep -q '^CPUSchedulingPolicy=rr$' "$UNIT"; then
		[ -n "$rr" ] && [ -n "$rttime" ] || { echo "CPUSchedulingPolicy=rr needs CPUSchedulingPriority= and LimitRTTIME=<n>ms:infinity" >&2; return 1; }
		echo -n "prlimit --rttime=$rttime chrt --rr $rr "
	fi
	echo setpriv --reuid=61184 --regid=61184 --clear-groups --no-new-privs \
		--bounding-set="-all,$bnd" --inh-caps="-all,$amb" --ambient-caps="$amb" \
		"$PY" "$TMP/check.py" seccomp-exec "$UNIT"
}

unit_runtime_transparent() {
	local sb log=$TMP/unit-transparent.log conf=$TMP/unit-transparent.yaml notify=$TMP/notify.sock
	sb=$(unit_sandbox) || return 1
	# A copy of the config that the SIGHUP below rereads after a change, with
	# sysmon-poll on: ftpgate executes itself again at start, which must keep
	# its capabilities and pass the unit's seccomp policy.
	cp "$CONF" "$conf" && chmod 0644 "$conf" || return 1
	sed -i 's/^sysmon-poll: .*/sysmon-poll: true/' "$conf"
	# systemd's side of Type=notify: a datagram socket ftpgate (uid 61184,
	# the unit's seccomp policy) must be able to write to.
	"$PY" "$TMP/check.py" notify-listen "$notify" "$TMP/notify.out" &
	BGPIDS+=($!)
	for _ in $(seq 50); do [ -S "$notify" ] && break; sleep 0.1; done
	echo "+ NOTIFY_SOCKET=$notify $sb $BIN run --config $conf"
	in_ns nft flush ruleset
	in_ns nft -f deploy/nftables/host-firewall.nft || return 1
	# shellcheck disable=SC2086
	start_ftpgate "$log" NOTIFY_SOCKET="$notify" $sb "$BIN" run --config "$conf"
	if ! wait_ready http://127.0.0.1:9121/readyz; then cat "$log"; return 1; fi
	wait_for_line "$TMP/notify.out" '^READY=1$' || { echo "no READY=1 on \$NOTIFY_SOCKET (the unit's Type=notify would time out)"; cat "$log"; return 1; }
	in_ns curl -fsS http://127.0.0.1:9121/metrics >"$TMP/metrics.txt" || return 1
	local caps seccomp
	caps=$(awk '/^CapEff/ {print $2}' /proc/"$FGPID"/status)
	seccomp=$(awk '/^Seccomp:/ {print $2}' /proc/"$FGPID"/status)
	grep -q '^Uid:[[:space:]]*61184' /proc/"$FGPID"/status || { echo "not running as uid 61184"; return 1; }
	[ "$seccomp" = 2 ] || { echo "no seccomp filter on ftpgate (Seccomp: $seccomp)"; return 1; }
	wait_for_line "$log" 'sysmon_poll=true' || { echo "sysmon-poll: true did not take effect (ftpgate executes itself again)"; cat "$log"; return 1; }
	in_ns nft list table inet ftpgate >/dev/null || { echo "no table inet ftpgate while ready"; return 1; }
	grep -q '^ftpgate_conntrack_events_listening 1$' "$TMP/metrics.txt" ||
		{ echo "ftpgate_conntrack_events_listening is not 1: the conntrack event listener does not run under the unit's sandbox"; cat "$log"; return 1; }
	local sched=normal
	if grep -q '^CPUSchedulingPolicy=rr$' "$UNIT"; then
		grep -q '^ftpgate_realtime_scheduling 1$' "$TMP/metrics.txt" ||
			{ echo "the unit sets CPUSchedulingPolicy=rr, but ftpgate_realtime_scheduling is not 1"; cat "$log"; return 1; }
		sched="real-time ($(chrt -p "$FGPID" | sed -n 's/.*current scheduling policy: //p' | head -1), guard armed)"
	fi
	# 'systemctl reload': one setting it applies, one that needs a restart.
	sed -i 's/^max-sessions: .*/max-sessions: 512/; s/^log-level: .*/log-level: warn/' "$conf"
	kill -HUP "$FGPID"
	wait_for_line "$log" 'restart_needed=--log-level' ||
		{ echo "SIGHUP: no warning naming --log-level, a setting that needs a restart"; cat "$log"; return 1; }
	in_ns curl -fsS -o /dev/null http://127.0.0.1:9121/readyz || { echo "not ready after SIGHUP"; cat "$log"; return 1; }
	stop_ftpgate 30 || { cat "$log"; return 1; }
	grep -q '^STOPPING=1$' "$TMP/notify.out" || { echo "no STOPPING=1 on \$NOTIFY_SOCKET"; return 1; }
	say "uid 61184, CapEff $caps, seccomp filter, $sched scheduling, sysmon-poll (re-exec): ready, READY=1 sent, table installed, conntrack events watched, SIGHUP reloads, clean exit on SIGTERM"
}

# wait_for_line FILE REGEX: up to 5s for a line of FILE to match.
wait_for_line() {
	for _ in $(seq 50); do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

unit_runtime_reverse() {
	local sb log=$TMP/unit-reverse.log out
	sb=$(unit_sandbox) || return 1
	in_ns nft flush ruleset
	in_ns nft -f deploy/nftables/reverse-mode.nft || return 1
	ip netns exec "$NS" "$PY" "$TMP/check.py" ftp-server 127.0.0.1 2100 >"$TMP/ftp-server.log" 2>&1 &
	SRVPID=$!
	# Strict: a system call outside the filter kills (SIGSYS) instead of
	# failing with EPERM, so that none goes unnoticed.
	# shellcheck disable=SC2086
	start_ftpgate "$log" SECCOMP_STRICT=1 $sb "$BIN" run --config "$CONF" --mode reverse --listen 127.0.0.1:21 \
		--upstream 127.0.0.1:2100 --passive-ports 50000-50999
	if ! wait_ready http://127.0.0.1:9121/readyz; then cat "$log"; return 1; fi
	in_ns ss -ltn 'sport = :21' | grep -q ':21 ' || { echo "nothing listens on port 21"; return 1; }
	out=$(in_ns "$PY" "$TMP/check.py" ftp-client 127.0.0.1 21 50000 50999) || { echo "$out"; cat "$log" "$TMP/ftp-server.log"; return 1; }
	echo "$out"
	in_ns curl -fsS http://127.0.0.1:9121/metrics >"$TMP/metrics-reverse.txt" || return 1
	"$PY" "$TMP/check.py" metric-at-least "$TMP/metrics-reverse.txt" ftpgate_pinholes_opened_total 1 || { cat "$log"; return 1; }
	# An open session: SIGTERM drains it (shutdown-grace 10s), a second
	# SIGTERM closes it at once.
	in_ns "$PY" "$TMP/check.py" hold-session 127.0.0.1 21 >"$TMP/hold.log" 2>&1 &
	BGPIDS+=($!)
	wait_for_line "$TMP/hold.log" '^220' || { echo "the held session got no greeting"; cat "$TMP/hold.log" "$log"; return 1; }
	kill -TERM "$FGPID"
	sleep 1
	kill -0 "$FGPID" 2>/dev/null || { echo "exited at once on SIGTERM with a session open: it did not drain"; cat "$log"; return 1; }
	kill -TERM "$FGPID"
	stop_ftpgate 3 || { echo "a second SIGTERM did not end the drain within 3s"; cat "$log"; return 1; }
	grep -q 'second signal' "$log" || { echo "the second SIGTERM was not logged"; cat "$log"; return 1; }
	kill "$SRVPID" 2>/dev/null
	wait "$SRVPID" 2>/dev/null
	SRVPID=
	say "uid 61184 + strict seccomp: listens on :21, FTP dialogue relayed ($(tail -1 <<<"$out")), pinhole opened, drains on SIGTERM, second SIGTERM ends it, clean exit"
}

# Policy routing ftpgate would clobber: someone else's route in its table,
# or a rule like ftpgate's but not tagged "proto 70", makes 'ftpgate check'
# fail and 'ftpgate run' refuse, and stays; its own (tagged) rule and route
# left by a killed run are only a warning, replaced, and removed on exit.
routing_conflicts() {
	local out rc log=$TMP/routing.log
	in_ns nft flush ruleset
	in_ns ip route add 192.0.2.0/24 dev lo table 100 || return 1
	out=$(in_ns "$BIN" check 2>&1)
	echo "$out"
	grep -q '^FAIL ip -4 route 192.0.2.0/24 dev lo table 100 .*is in table 100' <<<"$out" ||
		{ echo "'ftpgate check' does not fail on a foreign route in table 100"; return 1; }
	out=$(in_ns timeout 10 "$BIN" run --config "$CONF" 2>&1)
	rc=$?
	echo "$out"
	[ $rc = 1 ] && grep -q "route table 100 is in use" <<<"$out" ||
		{ echo "'ftpgate run' did not refuse a foreign route in table 100 (status $rc)"; return 1; }
	in_ns ip route show table 100 | grep -q '^192.0.2.0/24 dev lo' || { echo "the foreign route is gone"; return 1; }
	in_ns ip rule | grep -q fwmark && { echo "ftpgate added its rule although it refused to start"; return 1; }
	in_ns ip route del 192.0.2.0/24 dev lo table 100 || return 1

	in_ns ip rule add fwmark 1 lookup 100 || return 1
	out=$(in_ns "$BIN" check 2>&1)
	grep -q '^FAIL ip -4 rule .*fwmark 0x1 lookup 100 uses table 100' <<<"$out" ||
		{ echo "$out"; echo "'ftpgate check' does not fail on an untagged rule like its own"; return 1; }
	in_ns ip rule del fwmark 1 lookup 100 || return 1

	in_ns ip rule add fwmark 1 lookup 100 proto 70 && in_ns ip route add local default dev lo table 100 proto 70 || return 1
	out=$(in_ns "$BIN" check 2>&1)
	echo "$out"
	grep -q '^warn ip -4 rule .*fwmark 0x1 lookup 100' <<<"$out" || { echo "'ftpgate check' does not warn about a leftover rule"; return 1; }
	grep -q '^FAIL ip' <<<"$out" && { echo "'ftpgate check' takes ftpgate's own leftovers for a conflict"; return 1; }
	start_ftpgate "$log" "$BIN" run --config "$CONF"
	if ! wait_ready http://127.0.0.1:9121/readyz; then cat "$log"; return 1; fi
	grep -q 'policy routing is already there' "$log" || { echo "no warning about the leftover rule"; cat "$log"; return 1; }
	stop_ftpgate 30 || { cat "$log"; return 1; }
	in_ns ip route show table 100 | grep -q . && { echo "table 100 not emptied on exit"; return 1; }
	say "foreign route in table 100, untagged rule: check FAILs, run refuses, route kept; leftover tagged rule+route: warning, replaced, removed on exit"
}

# The DaemonSet's container: UID 0 whose capabilities are only the ones the
# securityContext adds (runtimes set the bounding set so), no_new_privs, the
# ConfigMap's config and the FTPGATE_METRICS_LISTEN of the pod spec.
k8s_runtime() {
	local caps listen log=$TMP/k8s.log
	caps=$(py k8s-caps deploy/kubernetes/ftpgate.yaml) || return 1
	listen=$(py k8s-env deploy/kubernetes/ftpgate.yaml FTPGATE_METRICS_LISTEN) || return 1
	listen=${listen//\$(NODE_IP)/127.0.0.1}
	py k8s-config deploy/kubernetes/ftpgate.yaml >"$TMP/k8s-ftpgate.yaml" || return 1
	in_ns nft flush ruleset
	start_ftpgate "$log" FTPGATE_METRICS_LISTEN="$listen" setpriv --no-new-privs --bounding-set="-all,$caps" --inh-caps=-all \
		"$BIN" run --config "$TMP/k8s-ftpgate.yaml"
	if ! wait_ready "http://$listen/readyz"; then cat "$log"; return 1; fi
	in_ns curl -fsS -o /dev/null "http://$listen/healthz" || return 1
	local eff
	eff=$(grep CapEff /proc/"$FGPID"/status | awk '{print $2}')
	stop_ftpgate 30 || { cat "$log"; return 1; }
	say "uid 0 with caps $caps only (CapEff $eff), ConfigMap config: /readyz and /healthz on $listen, clean exit"
}

# ---------------------------------------------------------- kubernetes --
k8s_manifests() {
	py k8s deploy/kubernetes/ftpgate.yaml deploy/kubernetes/podmonitor.yaml "$ALLOWED_CAPS" || return 1
	py k8s-config deploy/kubernetes/ftpgate.yaml >"$TMP/k8s-ftpgate.yaml" || return 1
	FTPGATE_METRICS_LISTEN=10.0.0.1:9121 "$BIN" run --config "$TMP/k8s-ftpgate.yaml" --dry-run >/dev/null ||
		{ echo "the ConfigMap's ftpgate.yaml does not parse"; return 1; }
	say "YAML and cross-references ok; ConfigMap's ftpgate.yaml parsed by ftpgate (kubeconform is not in Debian: not run)"
}

# ---------------------------------------------------------- prometheus --
alerts_rules() {
	promtool check rules deploy/prometheus/alerts.yml || return 1
	py alerts deploy/prometheus/alerts.yml || return 1
	say "$(grep -c '^ *- alert:' deploy/prometheus/alerts.yml) alerts: promtool check rules ok, metric names ok"
}

alerts_tests() {
	mkdir -p "$TMP/prom"
	# promtool compares annotations verbatim; the tests check firing and labels.
	py strip-annotations deploy/prometheus/alerts.yml "$TMP/prom/alerts.yml" || return 1
	cp deploy/prometheus/alerts_test.yml "$TMP/prom/"
	promtool test rules "$TMP/prom/alerts_test.yml" || return 1
	say "promtool test rules: $(grep -c 'alertname:' deploy/prometheus/alerts_test.yml) cases pass"
}

# ------------------------------------------------------------- grafana --
dashboard() {
	"$PY" -m json.tool deploy/grafana/ftpgate-dashboard.json >/dev/null || return 1
	py dashboard deploy/grafana/ftpgate-dashboard.json "$TMP/dash-rules.yml" || return 1
	# Every query through Prometheus' own parser (as recording rules).
	promtool check rules "$TMP/dash-rules.yml" || return 1
	say "$(grep -c 'record:' "$TMP/dash-rules.yml") queries parsed by promtool; metric and label names ok; every metric shown"
}

live_metrics() {
	[ -s "$TMP/metrics.txt" ] || { echo "no /metrics scrape (the systemd runtime check failed?)"; return 1; }
	local out rc=0
	out=$(py live "$TMP/metrics.txt") || rc=$?
	echo "$out"
	say "$(head -1 <<<"$out")"
	return $rc
}

readme() {
	py readme deploy || return 1
	say "mentions every file under deploy/"
}

# ------------------------------------------------------- python helper --
cat >"$TMP/check.py" <<'PYEOF'
import json, os, re, sys

def fail(msg):
    print(msg)
    sys.exit(1)

# ftpgate's metrics: name -> (type, labels). Dashboard and alerts may use only these
# (plus process_* and go_*); scripts/check-deploy.sh 'metrics' compares with /metrics.
METRICS = {
    "ftpgate_build_info": ("gauge", {"version", "mode"}),
    "ftpgate_sessions_total": ("counter", {"mode"}),
    "ftpgate_sessions_active": ("gauge", {"mode"}),
    "ftpgate_session_duration_seconds": ("histogram", {"mode"}),
    "ftpgate_commands_total": ("counter", {"verb"}),
    "ftpgate_replies_total": ("counter", {"class"}),
    "ftpgate_rewrites_total": ("counter", {"kind"}),
    "ftpgate_refusals_total": ("counter", {"reason"}),
    "ftpgate_pinholes_opened_total": ("counter", {"family", "direction"}),
    "ftpgate_pinholes_closed_total": ("counter", {"family", "direction", "result"}),
    "ftpgate_pinholes_active": ("gauge", set()),
    "ftpgate_pinhole_open_latency_seconds": ("histogram", set()),
    "ftpgate_nftables_errors_total": ("counter", {"operation"}),
    "ftpgate_upstream_connect_failures_total": ("counter", set()),
    "ftpgate_upstream_greeting_redials_total": ("counter", set()),
    "ftpgate_realtime_scheduling": ("gauge", set()),
    "ftpgate_conntrack_events_lost_total": ("counter", set()),
    "ftpgate_pinhole_raced_connections_total": ("counter", set()),
    "ftpgate_conntrack_events_listening": ("gauge", set()),
    "ftpgate_tls_sessions_total": ("counter", {"action"}),
    "ftpgate_data_connections_total": ("counter", {"direction"}),
    "ftpgate_data_bytes_total": ("counter", {"direction"}),
}
REASONS = set("""bounce_address server_address low_port syntax byte_range family unsolicited_reply
unpaired_reply line_too_long control_chars unsupported epsv_all tls firewall_error upstream_error loop
ports_exhausted server_port_range cross_family shutting_down max_sessions max_sessions_per_client
idle_timeout pending_openings denied_command not_anonymous wrong_direction bad_verb pipeline_overflow
write_failed client_ports""".split())
VALUES = {
    ("ftpgate_refusals_total", "reason"): REASONS,
    ("ftpgate_pinholes_closed_total", "result"): {"used", "expired", "revoked"},
    ("ftpgate_pinholes_closed_total", "family"): {"ipv4", "ipv6"},
    ("ftpgate_pinholes_opened_total", "family"): {"ipv4", "ipv6"},
    ("ftpgate_pinholes_closed_total", "direction"): {"passive", "active"},
    ("ftpgate_pinholes_opened_total", "direction"): {"passive", "active"},
    ("ftpgate_tls_sessions_total", "action"): {"refused", "passthrough"},
    ("ftpgate_data_connections_total", "direction"): {"client_to_server", "server_to_client", "unknown"},
    ("ftpgate_data_bytes_total", "direction"): {"client_to_server", "server_to_client"},
    ("ftpgate_sessions_total", "mode"): {"transparent", "reverse"},
    ("ftpgate_build_info", "mode"): {"transparent", "reverse"},
    ("ftpgate_sessions_active", "mode"): {"transparent", "reverse"},
}
TARGET_LABELS = {"job", "instance"}
# Series from elsewhere the alerts may use (blackbox exporter, kube-state-metrics, Prometheus).
EXTERNAL = {
    "up": {"job", "instance"},
    "probe_success": {"job", "instance"},
    "kube_pod_container_status_ready": {"job", "instance", "namespace", "pod", "container"},
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "atan2"}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")

def base_metric(name):
    """The METRICS key of a series name, or None."""
    if name in METRICS:
        return name
    for suf in HIST_SUFFIXES:
        b = name[: -len(suf)]
        if name.endswith(suf) and METRICS.get(b, ("",))[0] == "histogram":
            return b
    return None

def promql_check(expr, external=False):
    """Problems with the metric and label names of one PromQL expression, and the metrics used."""
    problems, used = [], set()
    e = re.sub(r"\$__\w+|\$\{?\w+\}?", "X", expr)  # Grafana variables
    labels_of = {}
    # selectors: optional metric name, then {matchers}
    for m in re.finditer(r'([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{((?:[^{}"]|"(?:[^"\\]|\\.)*")*)\}', e):
        name = m.group(1)
        if name in KEYWORDS or name is None:
            problems.append(f"selector without a metric name: {{{m.group(2)}}}")
            continue
        for lm in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', m.group(2)):
            labels_of.setdefault(name, []).append((lm.group(1), lm.group(2), lm.group(3)))
    stripped = re.sub(r'\{((?:[^{}"]|"(?:[^"\\]|\\.)*")*)\}', " ", e)
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', " ", stripped)
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)
    grouping = []
    def grab(mm):
        grouping.extend(x.strip() for x in mm.group(2).split(",") if x.strip())
        return " "
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", grab, stripped)
    names = []
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", stripped):
        tok, call = m.group(1), m.group(2)
        if call or tok.lower() in KEYWORDS:
            continue
        names.append(tok)
    allowed_labels = set(TARGET_LABELS)
    for n in names:
        b = base_metric(n)
        if b:
            used.add(b)
            allowed_labels |= METRICS[b][1]
            if n.endswith("_bucket"):
                allowed_labels.add("le")
        elif n.startswith(("process_", "go_")):
            pass
        elif external and n in EXTERNAL:
            allowed_labels |= EXTERNAL[n]
        else:
            problems.append(f"unknown metric {n!r}")
    for n, matchers in labels_of.items():
        b = base_metric(n)
        for label, op, value in matchers:
            known = TARGET_LABELS | (METRICS[b][1] if b else EXTERNAL.get(n, set()) if external else set())
            if b and n.endswith("_bucket"):
                known = known | {"le"}
            if n.startswith(("process_", "go_")) and label in TARGET_LABELS:
                continue
            if label not in known:
                problems.append(f"{n}: unknown label {label!r}")
                continue
            vals = VALUES.get((b, label))
            if vals and op in ("=", "!="):
                if value not in vals:
                    problems.append(f"{n}: {label}={value!r} is not one of {sorted(vals)}")
            elif vals and op in ("=~", "!~") and re.fullmatch(r"[a-z0-9_|]+", value):
                for v in value.split("|"):
                    if v not in vals:
                        problems.append(f"{n}: {label}=~ names {v!r}, not one of {sorted(vals)}")
    for g in grouping:
        if g not in allowed_labels:
            problems.append(f"grouping by {g!r}, which none of the metrics has")
    return problems, used

def load_yaml_all(path):
    import yaml
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

def duration_seconds(s):
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(s)):
        total += float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
        pos = m.end()
    if pos != len(str(s)) or pos == 0:
        fail(f"cannot read duration {s!r}")
    return total

def cmd_dockerfile(path, gomod):
    instrs = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
              "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}
    lines, cur = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if not cur and (line.strip().startswith("#") or not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        lines.append(cur.strip())
        cur = ""
    if cur:
        fail("Dockerfile ends inside a line continuation")
    args, stages, probs = {}, [], []
    for l in lines:
        ins, _, rest = l.partition(" ")
        if ins.upper() not in instrs:
            probs.append(f"unknown instruction {ins!r}")
            continue
        if ins != ins.upper():
            probs.append(f"instruction {ins!r} not upper-case")
        ins = ins.upper()
        if ins == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
        if ins == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), "?"), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "instrs": []})
            continue
        if not stages:
            if ins != "ARG":
                probs.append(f"{ins} before the first FROM")
            continue
        stages[-1]["instrs"].append((ins, rest))
        if ins in ("ENTRYPOINT", "CMD") and rest.startswith("["):
            try:
                json.loads(rest)
            except ValueError as e:
                probs.append(f"{ins} JSON form does not parse: {e}")
        if ins == "COPY":
            m = re.search(r"--from=(\S+)", rest)
            if m and m.group(1) not in [s["name"] for s in stages[:-1]]:
                probs.append(f"COPY --from={m.group(1)}: no earlier stage of that name")
            if not m:
                srcs = [w for w in rest.split() if not w.startswith("--")][:-1]
                for s in srcs:
                    if not os.path.exists(s):
                        probs.append(f"COPY source {s!r} does not exist in the build context")
    if len(stages) < 2:
        probs.append("want a multi-stage build")
    else:
        b = stages[0]["image"]
        m = re.fullmatch(r"golang:(\d+)\.(\d+)(?:[.-].*)?", b)
        gover = re.search(r"^go (\d+)\.(\d+)", open(gomod).read(), re.M)
        if not m:
            probs.append(f"builder image {b!r}: want golang:<version>")
        elif gover and (int(m.group(1)), int(m.group(2))) < (int(gover.group(1)), int(gover.group(2))):
            probs.append(f"builder {b} is older than go.mod's go {gover.group(1)}.{gover.group(2)}")
        final = stages[-1]
        if final["image"] != "scratch" and not final["image"].startswith("gcr.io/distroless/static"):
            probs.append(f"final image {final['image']!r}: want scratch or distroless static")
        fi = dict((i, r) for i, r in final["instrs"])
        if "USER" not in fi:
            probs.append("final stage sets no USER")
        if "ENTRYPOINT" not in fi:
            probs.append("final stage has no ENTRYPOINT")
        else:
            ep = json.loads(fi["ENTRYPOINT"])[0]
            dests = [r.split()[-1] for i, r in final["instrs"] if i == "COPY"]
            if ep not in dests:
                probs.append(f"ENTRYPOINT {ep} is not a file the final stage copies ({dests})")
        build = [r for s in stages for i, r in s["instrs"] if i == "RUN" and "go build" in r]
        for flag in ("CGO_ENABLED=0", "-trimpath", "-s -w", "-X main.version="):
            if not build or flag not in build[0]:
                probs.append(f"the go build line lacks {flag}")
    if probs:
        fail("\n".join(probs))
    print("stages:", ", ".join(s["image"] + (" as " + s["name"] if s["name"] else "") for s in stages))

def cmd_context(ignore_file, dest):
    """Copy the build context (repository root) minus .dockerignore patterns to dest."""
    import shutil
    pats = []
    for l in open(ignore_file):
        l = l.strip()
        if l and not l.startswith("#"):
            neg = l.startswith("!")
            p = l.lstrip("!").strip("/")
            rx = ""
            i = 0
            while i < len(p):
                if p.startswith("**/", i):
                    rx += "(?:.*/)?"; i += 3
                elif p.startswith("**", i):
                    rx += ".*"; i += 2
                elif p[i] == "*":
                    rx += "[^/]*"; i += 1
                elif p[i] == "?":
                    rx += "[^/]"; i += 1
                else:
                    rx += re.escape(p[i]); i += 1
            pats.append((neg, re.compile(rx + "(?:/.*)?$")))
    def ignored(rel):
        out = False
        for neg, rx in pats:
            if rx.match(rel):
                out = not neg
        return out
    n = 0
    for d, dirs, files in os.walk("."):
        reld = os.path.normpath(d)
        dirs[:] = [x for x in dirs if not ignored(os.path.normpath(os.path.join(reld, x)))]
        for f in files:
            rel = os.path.normpath(os.path.join(reld, f))
            if ignored(rel):
                continue
            os.makedirs(os.path.join(dest, reld), exist_ok=True)
            shutil.copy2(rel, os.path.join(dest, rel))
            n += 1
    print(f"build context: {n} files")

def unit_settings(path):
    s = {}
    for l in open(path):
        l = l.strip()
        if l and not l.startswith(("#", ";", "[")) and "=" in l:
            k, _, v = l.partition("=")
            s.setdefault(k, []).append(v)
    return s

def cmd_unit(path, conf, allowed):
    import yaml
    s = unit_settings(path)
    want = {
        "Type": "notify", "Restart": "on-failure", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX", "PrivateUsers": "no",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    probs = []
    for k, v in want.items():
        if s.get(k, [None])[-1] != v:
            probs.append(f"{k}={s.get(k, ['(unset)'])[-1]}, want {v}")
    if "@system-service" not in s.get("SystemCallFilter", [""])[0]:
        probs.append("SystemCallFilter must start from @system-service")
    if s.get("DynamicUser", ["no"])[-1] != "yes" and not s.get("User"):
        probs.append("runs as root: set DynamicUser=yes or User=")
    bnd = set(s.get("CapabilityBoundingSet", [""])[-1].split())
    amb = set(s.get("AmbientCapabilities", [""])[-1].split())
    if "CAP_NET_ADMIN" not in amb:
        probs.append("AmbientCapabilities lacks CAP_NET_ADMIN")
    if amb - bnd:
        probs.append(f"ambient capabilities outside the bounding set: {amb - bnd}")
    if bnd - set(allowed.split()):
        probs.append(f"capabilities beyond {allowed}: {bnd - set(allowed.split())}")
    cfg = yaml.safe_load(open(conf)) or {}
    grace = duration_seconds(cfg.get("shutdown-grace", "10s"))
    stop = duration_seconds(s.get("TimeoutStopSec", ["90s"])[-1])
    if stop < grace + 5:
        probs.append(f"TimeoutStopSec={stop:g}s must exceed shutdown-grace ({grace:g}s) + 5s")
    if probs:
        fail("\n".join(probs))
    print(f"TimeoutStopSec {stop:g}s > shutdown-grace {grace:g}s; capabilities {sorted(amb)}")

def k8s_docs(path):
    return {(d.get("kind"), d.get("metadata", {}).get("name")): d for d in load_yaml_all(path)}

def k8s_ds(path):
    ds = [d for d in load_yaml_all(path) if d.get("kind") == "DaemonSet"]
    if len(ds) != 1:
        fail(f"{path}: want one DaemonSet")
    return ds[0]

def k8s_container(ds):
    cs = ds["spec"]["template"]["spec"]["containers"]
    c = [c for c in cs if c["name"] == "ftpgate"]
    if not c:
        fail("no container named ftpgate")
    return c[0]

def cmd_k8s_caps(path):
    c = k8s_container(k8s_ds(path))
    print(",".join("+" + x.lower() for x in c["securityContext"]["capabilities"]["add"]))

def cmd_k8s_env(path, name):
    c = k8s_container(k8s_ds(path))
    for e in c.get("env", []):
        if e["name"] == name:
            print(e["value"])
            return
    fail(f"no env {name}")

def k8s_configmap_yaml(path):
    ds = k8s_ds(path)
    c = k8s_container(ds)
    args = c.get("args", [])
    if "--config" not in args:
        fail("container args lack --config")
    cfgpath = args[args.index("--config") + 1]
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vol = mounts.get(os.path.dirname(cfgpath))
    if not vol:
        fail(f"--config {cfgpath}: no volume mounted at {os.path.dirname(cfgpath)}")
    v = [v for v in ds["spec"]["template"]["spec"].get("volumes", []) if v["name"] == vol][0]
    cmname = v["configMap"]["name"]
    cms = [d for d in load_yaml_all(path) if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == cmname]
    if not cms:
        fail(f"ConfigMap {cmname} (volume {vol}) not in {path}")
    key = os.path.basename(cfgpath)
    if key not in cms[0].get("data", {}):
        fail(f"ConfigMap {cmname} has no key {key}")
    return cms[0]["data"][key]

def cmd_k8s_config(path):
    sys.stdout.write(k8s_configmap_yaml(path))

def cmd_k8s(path, podmonitor, allowed):
    import yaml
    probs = []
    docs = load_yaml_all(path) + load_yaml_all(podmonitor)
    for d in docs:
        for k in ("apiVersion", "kind"):
            if not d.get(k):
                probs.append(f"a document without {k}")
        if not d.get("metadata", {}).get("name"):
            probs.append(f"{d.get('kind')} without metadata.name")
        if d.get("kind") != "Namespace" and d.get("metadata", {}).get("namespace") != "ftpgate":
            probs.append(f"{d.get('kind')} {d['metadata'].get('name')}: namespace is not ftpgate")
    kinds = sorted(d["kind"] for d in docs)
    for k in ("ConfigMap", "DaemonSet", "Namespace", "PodMonitor", "Service"):
        if k not in kinds:
            probs.append(f"no {k}")
    ds = k8s_ds(path)
    spec = ds["spec"]
    tpl = spec["template"]
    tlabels = tpl["metadata"].get("labels", {})
    sel = spec["selector"]["matchLabels"]
    if any(tlabels.get(k) != v for k, v in sel.items()):
        probs.append("DaemonSet selector does not match the pod template labels")
    ps = tpl["spec"]
    if ps.get("hostNetwork") is not True:
        probs.append("hostNetwork must be true: ftpgate configures the node's network")
    if ps.get("dnsPolicy") != "ClusterFirstWithHostNet":
        probs.append("dnsPolicy should be ClusterFirstWithHostNet with hostNetwork")
    if not ps.get("nodeSelector"):
        probs.append("no nodeSelector: ftpgate belongs on gateway nodes only")
    c = k8s_container(ds)
    sc = c.get("securityContext", {})
    caps = sc.get("capabilities", {})
    if caps.get("drop") != ["ALL"]:
        probs.append("capabilities.drop must be [ALL]")
    add = set(caps.get("add", []))
    if "NET_ADMIN" not in add:
        probs.append("capabilities.add lacks NET_ADMIN")
    extra = {"CAP_" + a for a in add} - set(allowed.split())
    if extra:
        probs.append(f"capabilities beyond {allowed}: {extra}")
    for k, v in (("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)):
        if sc.get(k) is not v:
            probs.append(f"securityContext.{k} must be {v}")
    if sc.get("privileged"):
        probs.append("privileged: ftpgate needs NET_ADMIN, not privileged")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    ml = env.get("FTPGATE_METRICS_LISTEN", "")
    mport = int(ml.rsplit(":", 1)[1]) if ":" in ml else None
    if mport is None:
        probs.append("FTPGATE_METRICS_LISTEN not set: the default 127.0.0.1 is unreachable for probes and Prometheus")
    for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        h = c.get(probe, {}).get("httpGet", {})
        if h.get("path") != path_:
            probs.append(f"{probe} must GET {path_}")
        port = h.get("port")
        port = ports.get(port, port)
        if port != mport:
            probs.append(f"{probe} port {h.get('port')} is not the metrics port {mport}")
    if ports.get("metrics") != mport:
        probs.append(f"container port 'metrics' {ports.get('metrics')} != FTPGATE_METRICS_LISTEN port {mport}")
    cfg = yaml.safe_load(k8s_configmap_yaml(path)) or {}
    if "metrics-listen" in cfg:
        probs.append("ConfigMap sets metrics-listen; the DaemonSet's FTPGATE_METRICS_LISTEN overrides it anyway: drop it")
    grace = duration_seconds(cfg.get("shutdown-grace", "10s"))
    tgps = ps.get("terminationGracePeriodSeconds", 30)
    if tgps < grace + 5:
        probs.append(f"terminationGracePeriodSeconds {tgps} must exceed shutdown-grace {grace:g}s + 5s")
    ann = tpl["metadata"].get("annotations", {})
    if ann.get("prometheus.io/port") and int(ann["prometheus.io/port"]) != mport:
        probs.append("prometheus.io/port annotation != metrics port")
    for d in docs:
        if d["kind"] == "Service":
            if any(tlabels.get(k) != v for k, v in d["spec"]["selector"].items()):
                probs.append(f"Service {d['metadata']['name']} selector matches no pod")
            for p in d["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                if ports.get(tp, tp) != mport:
                    probs.append(f"Service port {p.get('name')} targets {tp}, not the metrics port")
        if d["kind"] == "PodMonitor":
            ml_ = d["spec"]["selector"]["matchLabels"]
            if any(tlabels.get(k) != v for k, v in ml_.items()):
                probs.append("PodMonitor selector matches no pod")
            for ep in d["spec"]["podMetricsEndpoints"]:
                if ep.get("port") not in ports:
                    probs.append(f"PodMonitor port {ep.get('port')} is not a container port name")
    if probs:
        fail("\n".join(probs))
    print("kinds:", kinds)

REQUIRED_ALERTS = """FtpgateDown FtpgateNotReady FtpgateFirewallErrors FtpgateBounceAttempts FtpgateHostileServer
FtpgatePassivePortsExhausted FtpgateSessionLimit FtpgateUpstreamDown FtpgatePinholesMostlyExpired
FtpgateSlowPinholes""".split()

def cmd_alerts(path):
    import yaml
    d = yaml.safe_load(open(path))
    probs, names, used = [], [], set()
    for g in d["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            n = r["alert"]
            names.append(n)
            a = r.get("annotations", {})
            for k in ("summary", "description"):
                if len(str(a.get(k, ""))) < 20:
                    probs.append(f"{n}: annotation {k} missing or too short")
            # A templated severity ({{ if ... }}critical{{ else }}warning{{ end }})
            # may only choose between those values.
            sev = str(r.get("labels", {}).get("severity", ""))
            choices = [x.strip() for x in re.split(r"\{\{.*?\}\}", sev)]
            if not any(choices) or any(c and c not in ("critical", "warning", "info") for c in choices):
                probs.append(f"{n}: labels.severity must be critical, warning or info (or a template choosing among them)")
            p, u = promql_check(r["expr"], external=True)
            used |= u
            probs += [f"{n}: {x}" for x in p]
    for n in REQUIRED_ALERTS:
        if n not in names:
            probs.append(f"missing alert {n}")
    if probs:
        fail("\n".join(probs))
    print(f"{len(names)} alerts using {sorted(used)}")

def cmd_strip_annotations(src, dst):
    import yaml
    d = yaml.safe_load(open(src))
    for g in d["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    yaml.safe_dump(d, open(dst, "w"), sort_keys=False)

def cmd_dashboard(path, rules_out):
    import yaml
    d = json.load(open(path))
    probs, used, exprs = [], set(), []
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        probs.append("schemaVersion must be >= 36")
    for k in ("uid", "title", "panels", "templating"):
        if not d.get(k):
            probs.append(f"no {k}")
    tvars = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    dsvars = [v for v in tvars.values() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if not dsvars:
        probs.append("no Prometheus datasource variable")
    dsname = dsvars[0]["name"] if dsvars else "datasource"
    ids = set()
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(d.get("panels", [])):
        t = p.get("title", "?")
        if p.get("id") in ids:
            probs.append(f"panel {t}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(k in g for k in "hwxy") or g["x"] + g["w"] > 24:
            probs.append(f"panel {t}: bad gridPos {g}")
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${%s}" % dsname:
            probs.append(f"panel {t}: datasource is not ${{{dsname}}}")
        if not p.get("targets"):
            probs.append(f"panel {t}: no queries")
        for tg in p.get("targets", []):
            e = tg.get("expr", "")
            if not e:
                probs.append(f"panel {t}: empty expr")
                continue
            exprs.append((t, e))
            pr, u = promql_check(e)
            used |= u
            probs += [f"panel {t}: {x}" for x in pr]
    for v in tvars.values():
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
        if v.get("type") == "query":
            if not m:
                probs.append(f"variable {v['name']}: want label_values(...)")
            else:
                pr, u = promql_check(m.group(1))
                probs += [f"variable {v['name']}: {x}" for x in pr]
    missing = set(METRICS) - used
    if missing:
        probs.append(f"metrics shown in no panel: {sorted(missing)}")
    if probs:
        fail("\n".join(probs))
    def subst(e):
        e = e.replace("$__rate_interval", "5m").replace("$__interval", "1m")
        return re.sub(r"\$\{?\w+\}?", ".*", e)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": subst(e)} for i, (t, e) in enumerate(exprs)]}]}
    yaml.safe_dump(rules, open(rules_out, "w"), sort_keys=False)
    print(f"{len(exprs)} queries over {len(list(walk(d['panels'])))} panels")

def cmd_live(path):
    """Every ftpgate_* family exposed is known here (else the dashboard and alerts miss it)."""
    fams = {}
    for l in open(path):
        m = re.match(r"# TYPE (\S+) (\S+)", l)
        if m and m.group(1).startswith("ftpgate_"):
            fams[m.group(1)] = m.group(2)
    probs = []
    for n, t in sorted(fams.items()):
        if n not in METRICS:
            probs.append(f"ftpgate exposes {n} ({t}), unknown to deploy/: add it to METRICS in scripts/check-deploy.sh, the dashboard and, if it matters, an alert")
        elif METRICS[n][0] != t:
            probs.append(f"{n} is a {t}, deploy/ expects a {METRICS[n][0]}")
    if probs:
        fail("\n".join(probs))
    absent = sorted(set(METRICS) - set(fams))
    print(f"{len(fams)} ftpgate_* families exposed, all known")
    if absent:
        print("not (yet) exposed at start, e.g. label vectors without samples:", ", ".join(absent))

def cmd_readme(d):
    text = open(os.path.join(d, "README.md")).read()
    probs = []
    for root, dirs, files in os.walk(d):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), d)
            if rel != "README.md" and rel not in text and f not in text:
                probs.append(f"deploy/README.md does not mention {rel}")
    if probs:
        fail("\n".join(probs))

def syscall_groups():
    import subprocess
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True,
                         text=True, check=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = line.split()[0]
            groups[cur] = []
        elif not line.strip() or not line.startswith(" "):
            cur = None
        elif cur and not line.strip().startswith("#"):
            groups[cur].append(line.strip())
    return groups

def cmd_seccomp_exec(unit, *argv):
    """Exec argv under the unit's seccomp policy, rebuilt with libseccomp the way
    systemd builds it: SystemCallFilter (an allow list always includes @default;
    ~ lines remove), SystemCallErrorNumber, SystemCallArchitectures=native,
    RestrictAddressFamilies (socket() of other families fails) and
    MemoryDenyWriteExecute (no W+X mmap, no PROT_EXEC mprotect)."""
    import errno, mmap, seccomp, socket
    s = unit_settings(unit)
    groups = syscall_groups()
    def expand(item):
        if item.startswith("@"):
            return set().union(set(), *(expand(x) for x in groups[item]))
        return {item}
    allow = None
    for line in s.get("SystemCallFilter", []):
        neg = line.startswith("~")
        names = set().union(set(), *(expand(x) for x in line.lstrip("~").split()))
        if allow is None and not neg:
            allow = names | expand("@default")
        elif allow is not None:
            allow = allow - names if neg else allow | names
        else:
            fail("deny-list SystemCallFilter not emulated")
    en = s.get("SystemCallErrorNumber", [None])[-1]
    deny = seccomp.ERRNO(getattr(errno, en)) if en else seccomp.KILL_PROCESS
    if os.environ.pop("SECCOMP_STRICT", ""):
        deny = seccomp.KILL_PROCESS
    f = seccomp.SyscallFilter(defaction=deny)
    mdwe = s.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes"
    fams = s.get("RestrictAddressFamilies", [""])[-1].split()
    W, X = mmap.PROT_WRITE, mmap.PROT_EXEC
    for name in sorted(allow):
        try:
            if mdwe and name in ("mmap", "mmap2"):
                for v in (0, W, X):
                    f.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, W | X, v))
            elif mdwe and name in ("mprotect", "pkey_mprotect"):
                f.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, X, 0))
            elif fams and name == "socket":
                for fam in fams:
                    f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, int(getattr(socket, fam))))
            else:
                f.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError, OSError):
            pass  # not a syscall of this architecture
    f.load()
    os.execv(argv[0], list(argv))

def cmd_ftp_server(host, port):
    """A scripted FTP server: enough of a dialogue for ftpgate to pair a PASV."""
    import socketserver
    class H(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"220 check-deploy\r\n")
            for line in self.rfile:
                verb = line.split(b" ")[0].strip().upper()
                reply = {b"USER": b"331 password", b"PASS": b"230 ok", b"QUIT": b"221 bye",
                         b"PASV": b"227 Entering Passive Mode (127,0,0,1,156,64)",
                         b"EPSV": b"229 Entering Extended Passive Mode (|||40000|)"}.get(verb, b"200 ok")
                self.wfile.write(reply + b"\r\n")
                if verb == b"QUIT":
                    return
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer((host, int(port)), H).serve_forever()

def cmd_ftp_client(host, port, lo, hi):
    import socket
    c = socket.create_connection((host, int(port)), timeout=5)
    f = c.makefile("rwb")
    def cmd(line, want):
        if line:
            f.write(line.encode() + b"\r\n")
            f.flush()
        r = f.readline().decode().strip()
        print(f"{line or '(connect)'} -> {r}")
        if not r.startswith(want):
            fail(f"want {want}")
        return r
    cmd("", "220")
    cmd("USER anonymous", "331")
    cmd("PASS x", "230")
    r = cmd("PASV", "227")
    n = [int(x) for x in re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", r).groups()]
    p = n[4] * 256 + n[5]
    if not int(lo) <= p <= int(hi):
        fail(f"227 port {p} is outside --passive-ports {lo}-{hi}: not rewritten")
    cmd("QUIT", "221")
    print(f"PASV -> gateway port {p}")

def cmd_notify_listen(path, out):
    """systemd's notification socket: each datagram becomes lines of out."""
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    os.chmod(path, 0o777)  # ftpgate runs as another user
    with open(out, "a") as f:
        while True:
            f.write(s.recv(4096).decode() + "\n")
            f.flush()

def cmd_hold_session(host, port):
    """A control session that stays open until ftpgate closes it."""
    import socket
    c = socket.create_connection((host, int(port)), timeout=60)
    print(c.makefile("rb").readline().decode().strip(), flush=True)
    while c.recv(4096):
        pass
    print("closed by ftpgate", flush=True)

def cmd_metric_at_least(path, name, n):
    total = 0.0
    for l in open(path):
        if l.startswith(name + "{") or l.startswith(name + " "):
            total += float(l.split()[-1])
    if total < float(n):
        fail(f"{name} = {total:g}, want >= {n}")

cmd = sys.argv[1].replace("-", "_")
globals()["cmd_" + cmd](*sys.argv[2:])
PYEOF

# ------------------------------------------------------------------ main --
check "deps" deps || true
if [ $FAILED = 1 ]; then
	echo "check-deploy: cannot run the checks without the tools above" >&2
	exit 1
fi
check "deploy/container/Dockerfile" dockerfile_structure
check "deploy/container: static build command" container_build
if [ -z "$BIN" ]; then
	echo "check-deploy: no binary; the remaining checks need one" >&2
	exit 1
fi
check "deploy/systemd/ftpgate.service: verify" unit_verify
check "deploy/systemd/ftpgate.service: security" unit_security
check "deploy/systemd/ftpgate.yaml" config_example
if netns_up; then
	check "deploy/nftables/host-firewall.nft" host_firewall
	check "deploy/nftables/reverse-mode.nft" reverse_firewall
	check "ftpgate.service capabilities: transparent" unit_runtime_transparent
	check "ftpgate.service capabilities: reverse :21" unit_runtime_reverse
	check "policy routing conflicts" routing_conflicts
	check "deploy/systemd/ftpgate-sysctl.conf" sysctl_file
	check "deploy/kubernetes: pod securityContext" k8s_runtime
else
	echo "FAIL  cannot create network namespace $NS"
	FAILED=1
fi
check "deploy/kubernetes/*.yaml" k8s_manifests
check "deploy/prometheus/alerts.yml" alerts_rules
check "deploy/prometheus/alerts_test.yml" alerts_tests
check "deploy/grafana/ftpgate-dashboard.json" dashboard
check "metrics: /metrics vs deploy/" live_metrics
check "deploy/README.md" readme

echo "check-deploy: $([ $FAILED = 0 ] && echo 'all checks passed' || echo 'FAILED') in $(($(date +%s) - START))s"
exit $FAILED
