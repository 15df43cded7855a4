#!/usr/bin/env bash
# make bench: ftpgate measured against the kernel's own FTP helper, side by
# side, in a client/gateway/server namespace lab (e2e TestBenchCompare, needs
# root), then the in-process micro-benchmarks (no root needed).
#
# Knobs (environment): FTPGATE_BENCH_ROUNDS, FTPGATE_BENCH_SESSIONS,
# FTPGATE_BENCH_CONCURRENCY, FTPGATE_BENCH_CELL_MAX, FTPGATE_BENCH_BIG_MIB,
# FTPGATE_BENCH_IDLE, FTPGATE_BENCH_CHURN, FTPGATE_BENCH_SETUPS,
# FTPGATE_BENCH_OUT — see bench/README.md. BENCH_TIMEOUT bounds the lab run
# (default 30m), BENCH_MICRO=0 skips the micro-benchmarks, BENCHTIME sets
# their -benchtime (default 1s).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

if [ "$(id -u)" = 0 ]; then
	echo "== bench: ftpgate vs the kernel FTP helper (namespace lab; results in bench/results/)"
	FTPGATE_BENCH=1 FTPGATE_BENCH_GO="$GO" "$GO" test -count=1 -v -timeout "${BENCH_TIMEOUT:-30m}" \
		-run '^TestBenchCompare$' ./e2e
else
	echo "bench: NOT ROOT: the namespace comparison (ftpgate vs the kernel helper) needs root and is SKIPPED; run: sudo env PATH=\"\$PATH\" make bench" >&2
fi

if [ "${BENCH_MICRO:-1}" != 0 ]; then
	echo "== bench: in-process micro-benchmarks (protocol side, no kernel)"
	"$GO" test -count=1 -run '^$' -bench . -benchmem -benchtime "${BENCHTIME:-1s}" ./proxy ./bench/proxybench
fi
