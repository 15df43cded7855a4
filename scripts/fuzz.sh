#!/usr/bin/env bash
# Runs every fuzz target of every package for FUZZTIME (default 30s) each.
# Targets are discovered with `go test -list '^Fuzz'`, so new ones are
# picked up without editing this script.
#
# A target fails when it writes a crashing input to testdata/fuzz/<Target>/
# or fails in any other way, except one: Go 1.26's fuzz coordinator can end a
# clean run with a bare "context deadline exceeded" when -fuzztime expires
# while a worker is busy (golang/go#75804, fixed in Go 1.27). That run wrote no
# input, so the target is run once more; a second such ending is reported as a
# warning, not a failure, because nothing crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${1:-${FUZZTIME:-30s}}
# Minimizing a new-coverage input stalls every worker (the socket-backed
# FuzzSession stalls for tens of seconds at the default 60s); CI wants
# exploration, and a crasher is still minimized by `go test -run` on replay.
MINIMIZE=${FUZZMINIMIZETIME:-3s}
GO=${GO:-go}

failed=()
flaked=()
ran=0

# corpus_listing PKGDIR TARGET prints the target's saved inputs, one per line.
corpus_listing() {
	ls -1 "$1/testdata/fuzz/$2" 2>/dev/null || true
}

# fuzz_once PKG TARGET LOG runs one target and tees its output to LOG.
fuzz_once() {
	"$GO" test -run '^$' -fuzz "^${2}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$MINIMIZE" "$1" 2>&1 | tee "$3"
	return "${PIPESTATUS[0]}"
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pkg in $("$GO" list ./...); do
	# `go test -list` prints the matching names, then "ok <pkg> ..." (or "?" for no tests).
	if ! out=$("$GO" test -list '^Fuzz' "$pkg" 2>&1); then
		echo "fuzz: cannot list fuzz targets of $pkg (does it compile?):" >&2
		echo "$out" >&2
		failed+=("$pkg(list)")
		continue
	fi
	targets=$(grep -E '^Fuzz[A-Za-z0-9_]*$' <<<"$out" || true)
	[ -n "$targets" ] || continue
	dir=$("$GO" list -f '{{.Dir}}' "$pkg")
	for t in $targets; do
		ran=$((ran + 1))
		for attempt in 1 2; do
			echo "=== fuzz $pkg $t ($FUZZTIME, attempt $attempt)"
			before=$(corpus_listing "$dir" "$t")
			if fuzz_once "$pkg" "$t" "$log"; then
				break
			fi
			after=$(corpus_listing "$dir" "$t")
			if [ "$before" != "$after" ] || ! grep -q '^    context deadline exceeded$' "$log"; then
				failed+=("$pkg.$t")
				break
			fi
			echo "fuzz: $t ended with Go's fuzztime race (golang/go#75804) and wrote no input"
			if ((attempt == 2)); then
				flaked+=("$pkg.$t")
			fi
		done
	done
done
echo "fuzz: $ran target(s) run"
if ((${#flaked[@]})); then
	echo "fuzz: WARNING: twice ended by Go's fuzztime race without a crashing input: ${flaked[*]}" >&2
fi
if ((${#failed[@]})); then
	echo "fuzz: FAILED: ${failed[*]}" >&2
	echo "fuzz: a crashing input is saved in <package>/testdata/fuzz/<Target>/; 'go test -run <Target>/<file> <package>' replays it" >&2
	exit 1
fi
