#!/bin/sh
# Installs the Debian packages the Kubernetes e2e test needs, if missing:
# containerd and runc (the nodes' runtime, with ctr) and busybox-static (the
# test pods' image). Safe to run again.
set -eu
need=""
have() { command -v "$1" >/dev/null 2>&1; }
have containerd || need="$need containerd"
have runc       || need="$need runc"
have nft        || need="$need nftables"
# The test image needs a statically linked busybox.
if ! [ -x /bin/busybox ] || ! dpkg -s busybox-static >/dev/null 2>&1; then need="$need busybox-static"; fi
if [ -n "$need" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing:$need (run as root to install them)" >&2
		exit 1
	fi
	echo "deps: installing$need"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
