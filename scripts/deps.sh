#!/bin/sh
# Installs the Debian packages that the tests and the demo use, if missing;
# with the argument "k8s", also those of the Kubernetes end-to-end test
# (containerd and runc for the nodes, busybox-static for the test image);
# with "kernel", those of the kernel data plane test in a VM (QEMU; busybox
# is the VM's init and shell; ldd lists the libraries of the tools it gets).
# Safe to run again: it does nothing when everything is there.
set -eu
need=""
have() { command -v "$1" >/dev/null 2>&1; }
have ip       || need="$need iproute2"
have nft      || need="$need nftables"
have ping     || need="$need iputils-ping"
have nsenter  || need="$need util-linux"
have tcpdump  || need="$need tcpdump"
have iperf3   || need="$need iperf3"
# systemd-analyze verifies the unit of `make install` (deploy tests).
have systemd-analyze || need="$need systemd"
# kube-proxy's iptables-mode rules, emulated by the hairpin test.
have iptables-legacy || need="$need iptables"
if [ "${1:-}" = k8s ]; then
	have containerd || need="$need containerd"
	have runc       || need="$need runc"
	# The upstream e2e suite's tools image (e2e/k8s/upstream.go): dig, nslookup, curl, nc (dash is essential).
	have dig        || need="$need bind9-dnsutils"
	have curl       || need="$need curl"
	have nc.openbsd || need="$need netcat-openbsd"
	# The test image needs a statically linked busybox.
	if ! [ -x /bin/busybox ] || ! dpkg -s busybox-static >/dev/null 2>&1; then need="$need busybox-static"; fi
fi
if [ "${1:-}" = kernel ]; then
	have qemu-system-x86_64 || need="$need qemu-system-x86"
	if ! [ -x /bin/busybox ] || ! dpkg -s busybox-static >/dev/null 2>&1; then need="$need busybox-static"; fi
	have ldd  || need="$need libc-bin"
	have dpkg || need="$need dpkg"
fi
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
