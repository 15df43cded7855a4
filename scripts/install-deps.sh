#!/usr/bin/env bash
# Installs what the tests and the demo need, only when something is missing
# (fast no-op on a ready machine), then downloads the Go modules.
# Debian/Ubuntu (apt). Needs root only when a package must be installed.
# GO names the go command (default: go); it must be at least go.mod's go line.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

# Tests and demo: the kernel tools, a real FTP server and clients.
pkgs=(nftables iproute2 vsftpd curl lftp conntrack python3 ca-certificates procps)
# make check-deploy: the real tools that check deploy/ (systemd-analyze, promtool, ...).
pkgs+=(systemd prometheus python3-yaml python3-seccomp file)

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if ((${#missing[@]})); then
	echo "install-deps: installing: ${missing[*]}"
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: missing packages ${missing[*]}; run as root (sudo env PATH=\"\$PATH\" make deps)" >&2
		exit 1
	fi
	if ! command -v apt-get >/dev/null; then
		echo "install-deps: no apt-get; install ${missing[*]} with your package manager" >&2
		exit 1
	fi
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
	trap 'if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
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
