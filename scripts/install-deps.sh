#!/usr/bin/env bash
# Installs what the tests and the demo need, only when something is missing
# (fast no-op on a ready machine), then downloads the Go modules.
# Debian/Ubuntu (apt). Needs root only when a package must be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

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
		echo "install-deps: missing packages ${missing[*]}; run as root (sudo make deps)" >&2
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

if ! command -v go >/dev/null; then
	echo "install-deps: no 'go' in PATH; install Go >= $(sed -n 's/^go //p' go.mod) (e.g. /usr/local/go) and add it to PATH" >&2
	exit 1
fi
go mod download
