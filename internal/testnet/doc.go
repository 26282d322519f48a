// Package testnet simulates a small network of hosts on one Linux machine
// for integration tests.
//
// Each Host is a network namespace, a UTS namespace (own hostname) and a
// private mount namespace in which /run (and /var/run when it is not a
// symlink to /run), /var/lib/mesh, /etc/cni and /opt/cni are bind mounts of
// directories private to that host, and /sys is a sysfs showing the host's own
// links. Hosts are wired by veth pairs ("eth0" inside each host) to one Linux
// bridge that lives in a separate "switch" network namespace, so no link or
// address of a test ever appears in the root network namespace.
//
// Net.AddSite adds a further network (a Site) with its own switch and
// subnet, joined to the first by a "router" namespace that forwards only
// between the pairs of hosts Net.Allow names: two data centres whose
// firewall lets a few gateway hosts talk.
//
// Host.DelayLink puts a fixed delay on a host's link to its switch (a
// userspace forwarder between two veths, for kernels without sch_netem):
// a slow relay, a far site.
//
// Everything else (/tmp, /usr, /dev, /proc, ...) is shared with the machine,
// so binaries built by BuildBinary run in any host as they are.
//
// Everything of one Net lives under one directory of os.TempDir() named
// "<prefix>-<random>": the namespace files (bind mounts of nsfs on a private
// mount, never in /run/netns), the hosts' private directories and the
// process logs. Cleanup kills every process of the hosts, unmounts all of it
// and removes the directory; CleanupStale does the same for the leftovers of
// test processes that were killed before their cleanup could run. Processes
// of a host are found through its namespaces and, where a writable cgroup v2
// hierarchy exists, through a cgroup per host (which also catches processes
// that moved to pod namespaces); see NoCgroupEnv. Processes started with
// Host.Start also die with the test process, even on SIGKILL.
//
// Tools needed on the machine: iproute2 (ip), util-linux (unshare, nsenter,
// mount) and, only for Net.Partition and sites, nftables (nft).
package testnet
