#!/usr/bin/env bash
# Runs every fuzz target of every package for FUZZTIME (default 30s) each.
# Targets are discovered with `go test -list '^Fuzz'`, so new ones are
# picked up without editing this script.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${1:-${FUZZTIME:-30s}}
GO=${GO:-go}

failed=()
ran=0
for pkg in $("$GO" list ./...); do
	# `go test -list` prints the matching names, then "ok <pkg> ..." (or "?" for no tests).
	if ! out=$("$GO" test -list '^Fuzz' "$pkg" 2>&1); then
		echo "fuzz: cannot list fuzz targets of $pkg (does it compile?):" >&2
		echo "$out" >&2
		failed+=("$pkg(list)")
		continue
	fi
	targets=$(grep -E '^Fuzz[A-Za-z0-9_]*$' <<<"$out" || true)
	for t in $targets; do
		echo "=== fuzz $pkg $t ($FUZZTIME)"
		ran=$((ran + 1))
		if ! "$GO" test -run '^$' -fuzz "^${t}\$" -fuzztime "$FUZZTIME" "$pkg"; then
			failed+=("$pkg.$t")
		fi
	done
done
echo "fuzz: $ran target(s) run"
if ((${#failed[@]})); then
	echo "fuzz: FAILED: ${failed[*]}" >&2
	echo "fuzz: a crashing input is saved in <package>/testdata/fuzz/<Target>/; 'go test -run <Target>/<file> <package>' replays it" >&2
	exit 1
fi
