// Package kernele2e boots a small virtual machine with Debian's stock
// kernel under QEMU and runs the kernel WireGuard data plane in it for real,
// together with userspace peers (run it with `make e2e-kernel`; the test is
// behind the e2ekernel build tag). The tests that run inside the VM are in
// ./vm, behind the kernelvm build tag.
//
// Everything comes from Debian packages at test time: QEMU
// (qemu-system-x86, installed by `scripts/deps.sh kernel`), the kernel
// (the package linux-image-amd64 depends on, fetched with `apt-get
// download` and unpacked with `dpkg -x` into MESH_E2E_CACHE, by default
// /var/cache/mesh-e2e), and an initramfs built by internal/vmtest from
// busybox-static, this machine's ip, nsenter, unshare, mount, nft and ping
// with their libraries, the wireguard module and its dependencies, the
// binaries of `make build` and the in-VM test binary (all static).
//
// Settings, from the environment:
//
//	MESH_E2E_CACHE        where the kernel is cached (default /var/cache/mesh-e2e)
//	MESH_E2E_KERNEL_RUN   -test.run pattern for the in-VM tests (default all)
//	MESH_E2E_ACCEL        kvm or tcg to skip the probe (default: probe)
package kernele2e
