// Package bench holds mesh's side-by-side benchmarks: CNI ADD+DEL latency
// against the reference bridge + host-local plugins, IPAM latency through the
// control socket, data-plane throughput against the raw underlay and a bare
// wireguard-go pair, and the daemon's memory. They build simulated hosts
// (internal/testnet), need root, and only run with the build tag "bench":
//
//	make bench
//	go test -tags bench -count=1 -run '^TestBench$' -v ./bench/
//
// The results are recorded in docs/performance.md.
package bench
