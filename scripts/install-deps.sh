#!/usr/bin/env bash
# Installs the Debian packages a make target needs, only when something is
# missing (fast no-op on a ready machine), checks that the Go toolchain is at
# least go.mod's go line, then downloads the Go modules. Debian/Ubuntu (apt).
#
#   install-deps.sh [PROFILE...]
#     test    make test, make bench: unit, nftables and e2e (namespace) tests (default)
#     demo    make demo
#     deploy  make check-deploy (systemd-analyze, promtool, libseccomp, ...)
#     all     all of them (make deps)
#
# As root, missing packages are installed with apt-get. As another user they
# are listed with the command that installs them; `make deps` (profile all)
# then fails, the other targets go on (as another user the nftables and e2e
# tests skip; make demo and make check-deploy stop and say they need root).
# GO names the go command (default: go).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

base=(ca-certificates) # go mod download (https)
test_pkgs=(nftables iproute2 procps vsftpd curl lftp conntrack python3)
demo_pkgs=(nftables iproute2 procps vsftpd curl python3)
deploy_pkgs=(nftables iproute2 procps curl util-linux systemd prometheus python3-yaml python3-seccomp file)

[ $# -gt 0 ] || set -- test
pkgs=("${base[@]}")
strict=0
for profile in "$@"; do
	case $profile in
		test) pkgs+=("${test_pkgs[@]}") ;;
		demo) pkgs+=("${demo_pkgs[@]}") ;;
		deploy) pkgs+=("${deploy_pkgs[@]}") ;;
		all) pkgs+=("${test_pkgs[@]}" "${demo_pkgs[@]}" "${deploy_pkgs[@]}"); strict=1 ;;
		*) echo "install-deps: unknown profile '$profile' (test, demo, deploy, all)" >&2; exit 2 ;;
	esac
done

missing=()
for p in $(printf '%s\n' "${pkgs[@]}" | sort -u); do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if ((${#missing[@]})); then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: missing Debian packages: ${missing[*]}" >&2
		echo "install-deps: install them as root: sudo apt-get install ${missing[*]}" >&2
		echo "install-deps:   or: sudo env PATH=\"\$PATH\" make deps" >&2
		if [ "$strict" = 1 ]; then
			exit 1
		fi
		echo "install-deps: going on without them: tests that need them skip (as another user, the nftables and e2e tests skip anyway)" >&2
	elif ! command -v apt-get >/dev/null; then
		echo "install-deps: no apt-get; install ${missing[*]} with your package manager" >&2
		exit 1
	else
		echo "install-deps: installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		# Don't let the packages start services on this machine (a host-wide
		# vsftpd on port 21, say): the tests run their own in namespaces.
		# Standard policy-rc.d mechanism, only if no policy is installed already.
		policy=/usr/sbin/policy-rc.d
		own_policy=0
		if [ ! -e "$policy" ]; then
			printf '#!/bin/sh\nexit 101\n' >"$policy"
			chmod 0755 "$policy"
			own_policy=1
		fi
		# Left behind, it would keep every later package from starting its
		# service: removed on any exit, also on Ctrl-C or SIGTERM.
		trap 'if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
		trap 'exit 130' INT TERM
		# A just-booted Debian may still be running apt (unattended upgrades,
		# cloud-init): wait for its lock instead of failing at once.
		apt_opts=(-o DPkg::Lock::Timeout=120)
		apt-get "${apt_opts[@]}" update -qq
		apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" </dev/null
	fi
fi

# Go: go.mod's go line is the oldest toolchain that builds this module.
need=$(sed -n 's/^go \([0-9][0-9a-z.]*\).*/\1/p' go.mod)
go_help() {
	local arch
	case $(uname -m) in
		x86_64) arch=amd64 ;;
		aarch64 | arm64) arch=arm64 ;;
		armv6l | armv7l) arch=armv6l ;;
		i?86) arch=386 ;;
		*) arch=$(uname -m) ;;
	esac
	cat >&2 <<EOF
install-deps: $1
install-deps: ftpgate needs Go $need or newer (go.mod: 'go $need'); Debian's golang-go is older.
  Install the go.dev release into /usr/local/go:
    curl -fsSLo /tmp/go.tar.gz https://go.dev/dl/go$need.linux-$arch.tar.gz
    sudo rm -rf /usr/local/go && sudo tar -C /usr/local -xzf /tmp/go.tar.gz
  (or any newer release from https://go.dev/dl/). The Makefile puts /usr/local/go/bin
  first in PATH itself; for go in your shell: export PATH=/usr/local/go/bin:\$PATH
  Or name a toolchain: make GO=/path/to/go ...
EOF
}
if ! command -v "$GO" >/dev/null; then
	go_help "no '$GO' command in PATH ($PATH)"
	exit 1
fi
# From inside the module, so a toolchain that can switch (GOTOOLCHAIN) reports
# the version it would really use.
if ! have=$("$GO" env GOVERSION 2>&1); then
	go_help "'$GO env GOVERSION' failed: $have"
	exit 1
fi
have=${have##*$'\n'}
v=${have#go}
case $v in
	devel*) ;; # a development toolchain: assume it is recent
	*)
		if [ "$(printf '%s\n%s\n' "$need" "$v" | sort -V | sed -n 1p)" != "$need" ]; then
			go_help "$(command -v "$GO") is $have, older than $need"
			exit 1
		fi
		;;
esac
"$GO" mod download
