// Package kernelvm holds the tests that run inside the test VM of
// e2e/kernel, on a stock kernel with the WireGuard module: simulated hosts
// (internal/testnet) running the real daemons with the kernel and the
// userspace data planes. They are behind the kernelvm build tag, as they
// expect that VM (prebuilt binaries in meshtest.BinDirEnv, the module
// loaded); `make e2e-kernel` builds and boots it.
package kernelvm
