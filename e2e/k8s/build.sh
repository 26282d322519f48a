#!/usr/bin/env bash
# Builds the Kubernetes parts the two-node e2e test (e2e/k8s) runs, from the Go
# module proxy only, into a cache outside the repository keyed by version:
#
#   $MESH_E2E_CACHE/k8s-<K8S_VERSION>/     kube-apiserver kubelet kubectl
#                                          kube-controller-manager kube-scheduler kube-proxy
#   $MESH_E2E_CACHE/etcd-<ETCD_VERSION>/   etcd etcdctl
#   $MESH_E2E_CACHE/cni-<PLUGINS_VERSION>/ bridge host-local loopback portmap (+ cnitool)
#
# With the argument "conformance" (make conformance, make e2e-k8s) also:
#
#   $MESH_E2E_CACHE/e2e-<K8S_VERSION>/     e2e.test (the upstream runner with the
#                                          sig-network packages) and agnhost
#   $MESH_E2E_CACHE/coredns-<COREDNS_VERSION>/ coredns
#
# Idempotent: a directory with a complete ".done" stamp is not rebuilt, so a
# second run takes a second. Prints "name=dir" lines for each part at the end.
# Builds run under `nice` (shared CI machines). Needs Go and the module proxy.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}         # last line whose kubelet runs on cgroup v1 + containerd 1.6 without flags
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}       # Debian's 3.4 breaks client-go watches; 3.6 from source
PLUGINS_VERSION=${PLUGINS_VERSION:-v1.10.0} # containernetworking/plugins
CNITOOL_VERSION=${CNITOOL_VERSION:-v1.3.1}  # containernetworking/cni
COREDNS_VERSION=${COREDNS_VERSION:-v1.12.1} # what kubeadm of K8S_VERSION deploys
MESH_E2E_CACHE=${MESH_E2E_CACHE:-${XDG_CACHE_HOME:-/var/cache}/mesh-e2e}
NICE=${NICE:-nice -n 10}

# The builds get their own module and build caches, so the project's are not
# filled with Kubernetes and CI can keep or drop this one directory.
export GOMODCACHE="$MESH_E2E_CACHE/gomod"
export GOCACHE="$MESH_E2E_CACHE/gobuild"
export GOFLAGS=-buildvcs=false
export GOTOOLCHAIN=local
mkdir -p "$MESH_E2E_CACHE"

log() { echo "build.sh: $*" >&2; }
since() { echo $(( $(date +%s) - $1 ))s; }

# Each part is built into <dir>.tmp and renamed, so an interrupted build never
# looks complete.
begin() { rm -rf "$1.tmp"; mkdir -p "$1.tmp/bin"; }
finish() { echo "$2" > "$1.tmp/.done"; rm -rf "$1"; mv "$1.tmp" "$1"; }

build_k8s() {
	local dir="$MESH_E2E_CACHE/k8s-$K8S_VERSION" s minor staging mod gomod
	local cmds="kube-apiserver kubelet kubectl kube-controller-manager kube-scheduler kube-proxy"
	[ -f "$dir/.done" ] && return 0
	s=$(date +%s); log "building Kubernetes $K8S_VERSION (cold: several minutes)"
	begin "$dir"
	minor=$(echo "$K8S_VERSION" | cut -d. -f2)
	staging="v0.${K8S_VERSION#v1.}"
	mod="$dir.tmp/src"; mkdir -p "$mod"
	# k8s.io/kubernetes replaces its staging modules with ./staging/...; a
	# module that requires it must pin each of them to the published v0.X.Y.
	gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
	[ -f "$gomod" ] || { log "no go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
	{
		echo "module k8sbuild"
		echo
		echo "go 1.24"
		echo
		echo "replace ("
		sed -n '/^replace (/,/^)/p' "$gomod" | grep -o 'k8s.io/[a-z0-9-]* =>' | awk '{print $1}' |
			while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
		echo ")"
	} > "$mod/go.mod"
	{
		echo "//go:build tools"
		echo "package tools"
		echo "import ("
		for c in $cmds; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
		echo ")"
	} > "$mod/tools.go"
	(cd "$mod" && $NICE go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1 && { $NICE go mod tidy -e >/dev/null 2>&1 || true; })
	log "modules for Kubernetes in $(since "$s")"
	local ldf="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
	for c in $cmds; do
		(cd "$mod" && CGO_ENABLED=0 $NICE go build -trimpath -ldflags "$ldf" -o "$dir.tmp/bin/$c" "k8s.io/kubernetes/cmd/$c")
		log "built $c ($(since "$s") so far)"
	done
	rm -rf "$mod"
	finish "$dir" "$K8S_VERSION"
}

build_etcd() {
	local dir="$MESH_E2E_CACHE/etcd-$ETCD_VERSION" s mod
	[ -f "$dir/.done" ] && return 0
	s=$(date +%s); log "building etcd $ETCD_VERSION"
	begin "$dir"
	# go.etcd.io/etcd/server/v3 has local replaces: `go install pkg@v` fails,
	# so build from a scratch module.
	mod="$dir.tmp/src"; mkdir -p "$mod"
	printf 'module etcdbuild\n\ngo 1.24\n' > "$mod/go.mod"
	(cd "$mod" && $NICE go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" >/dev/null 2>&1)
	(cd "$mod" && CGO_ENABLED=0 $NICE go build -trimpath -ldflags '-s -w' -o "$dir.tmp/bin/etcd" go.etcd.io/etcd/server/v3)
	(cd "$mod" && CGO_ENABLED=0 $NICE go build -trimpath -ldflags '-s -w' -o "$dir.tmp/bin/etcdctl" go.etcd.io/etcd/etcdctl/v3)
	rm -rf "$mod"
	finish "$dir" "$ETCD_VERSION"
	log "built etcd in $(since "$s")"
}

build_cni() {
	local dir="$MESH_E2E_CACHE/cni-$PLUGINS_VERSION" s p
	[ -f "$dir/.done" ] && return 0
	s=$(date +%s); log "building CNI plugins $PLUGINS_VERSION and cnitool $CNITOOL_VERSION"
	begin "$dir"
	for p in main/bridge main/loopback ipam/host-local meta/portmap; do
		CGO_ENABLED=0 GOBIN="$dir.tmp/bin" $NICE go install -trimpath -ldflags '-s -w' "github.com/containernetworking/plugins/plugins/$p@$PLUGINS_VERSION"
	done
	CGO_ENABLED=0 GOBIN="$dir.tmp/bin" $NICE go install -trimpath -ldflags '-s -w' "github.com/containernetworking/cni/cnitool@$CNITOOL_VERSION"
	finish "$dir" "$PLUGINS_VERSION $CNITOOL_VERSION"
	log "built CNI plugins in $(since "$s")"
}

# k8s_module writes a scratch module in $1 that requires k8s.io/kubernetes at
# K8S_VERSION: k8s.io/kubernetes replaces its staging modules with
# ./staging/...; a module that requires it must pin each of them to the
# published v0.X.Y.
k8s_module() {
	local mod=$1 staging gomod
	staging="v0.${K8S_VERSION#v1.}"
	mkdir -p "$mod"
	gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
	[ -f "$gomod" ] || { log "no go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
	{
		echo "module k8sbuild"
		echo
		echo "go 1.24"
		echo
		echo "replace ("
		sed -n '/^replace (/,/^)/p' "$gomod" | grep -o 'k8s.io/[a-z0-9-]* =>' | awk '{print $1}' |
			while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
		echo ")"
	} > "$mod/go.mod"
}

# build_e2e builds the upstream e2e runner as a test binary of a scratch
# package that imports k8s.io/kubernetes/test/e2e (its suite setup and
# RunE2ETests) with only the two network spec packages, test/e2e/network and
# test/e2e/common/network: the full test/e2e binary also compiles storage,
# apps, cloud and DRA specs, several times the build for specs this cluster
# never runs. The spec texts, tags and images are the upstream ones.
build_e2e() {
	local dir="$MESH_E2E_CACHE/e2e-$K8S_VERSION" s mod minor src
	[ -f "$dir/.done" ] && [ -f "$dir/bin/localhost.crt" ] && return 0
	s=$(date +%s); log "building the e2e runner and agnhost of Kubernetes $K8S_VERSION (cold: many minutes)"
	begin "$dir"
	minor=$(echo "$K8S_VERSION" | cut -d. -f2)
	mod="$dir.tmp/src"
	k8s_module "$mod"
	mkdir -p "$mod/conformance"
	cat > "$mod/conformance/conformance_test.go" <<-'EOF'
	// Package conformance runs the upstream Kubernetes e2e suite with only its
	// network specs compiled in.
	package conformance

	import (
		"flag"
		"os"
		"testing"

		"k8s.io/kubernetes/test/e2e"
		conformancetestdata "k8s.io/kubernetes/test/conformance/testdata"
		"k8s.io/kubernetes/test/e2e/framework"
		"k8s.io/kubernetes/test/e2e/framework/config"
		"k8s.io/kubernetes/test/e2e/framework/testfiles"
		e2etestingmanifests "k8s.io/kubernetes/test/e2e/testing-manifests"
		testfixtures "k8s.io/kubernetes/test/fixtures"

		_ "k8s.io/kubernetes/test/e2e/feature"

		_ "k8s.io/kubernetes/test/e2e/common/network"
		_ "k8s.io/kubernetes/test/e2e/network"

		_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
		_ "k8s.io/kubernetes/test/e2e/framework/metrics/init"
		_ "k8s.io/kubernetes/test/e2e/framework/node/init"
		_ "k8s.io/kubernetes/test/utils/format"
	)

	func TestMain(m *testing.M) {
		config.CopyFlags(config.Flags, flag.CommandLine)
		framework.RegisterCommonFlags(flag.CommandLine)
		framework.RegisterClusterFlags(flag.CommandLine)
		flag.Parse()
		testfiles.AddFileSource(e2etestingmanifests.GetE2ETestingManifestsFS())
		testfiles.AddFileSource(testfixtures.GetTestFixturesFS())
		testfiles.AddFileSource(conformancetestdata.GetConformanceTestdataFS())
		framework.AfterReadingAllFlags(&framework.TestContext)
		os.Exit(m.Run())
	}

	func TestE2E(t *testing.T) { e2e.RunE2ETests(t) }
	EOF
	cat > "$mod/tools.go" <<-'EOF'
	//go:build tools

	package tools

	import _ "k8s.io/kubernetes/test/images/agnhost"
	EOF
	(cd "$mod" && $NICE go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1 && $NICE go mod tidy -e >/dev/null 2>&1 || true)
	log "modules for the e2e runner in $(since "$s")"
	local ldf="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
	(cd "$mod" && CGO_ENABLED=0 $NICE go build -trimpath -ldflags '-s -w' -o "$dir.tmp/bin/agnhost" k8s.io/kubernetes/test/images/agnhost)
	# agnhost's porter serves TLS with the test certificate its image has
	# in its working directory.
	src=$(cd "$mod" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
	cp "$src/test/images/agnhost/porter/localhost.crt" "$src/test/images/agnhost/porter/localhost.key" "$dir.tmp/bin/"
	log "built agnhost ($(since "$s") so far)"
	(cd "$mod" && CGO_ENABLED=0 $NICE go test -c -trimpath -ldflags "$ldf" -o "$dir.tmp/bin/e2e.test" ./conformance)
	log "built e2e.test ($(since "$s") so far)"
	rm -rf "$mod"
	finish "$dir" "$K8S_VERSION"
}

build_coredns() {
	local dir="$MESH_E2E_CACHE/coredns-$COREDNS_VERSION" s mod
	[ -f "$dir/.done" ] && return 0
	s=$(date +%s); log "building CoreDNS $COREDNS_VERSION"
	begin "$dir"
	# CoreDNS's plugin list is generated into its main package (core/plugin,
	# core/dnsserver/zdirectives.go) and published: the module builds as is.
	mod="$dir.tmp/src"; mkdir -p "$mod"
	printf 'module corednsbuild\n\ngo 1.24\n' > "$mod/go.mod"
	(cd "$mod" && $NICE go get "github.com/coredns/coredns@$COREDNS_VERSION" >/dev/null 2>&1)
	(cd "$mod" && CGO_ENABLED=0 $NICE go build -trimpath -ldflags '-s -w' -o "$dir.tmp/bin/coredns" github.com/coredns/coredns)
	rm -rf "$mod"
	finish "$dir" "$COREDNS_VERSION"
	log "built CoreDNS in $(since "$s")"
}

build_cni
build_etcd
build_k8s
if [ "${1:-}" = conformance ]; then
	build_coredns
	build_e2e
	echo "e2e=$MESH_E2E_CACHE/e2e-$K8S_VERSION/bin"
	echo "coredns=$MESH_E2E_CACHE/coredns-$COREDNS_VERSION/bin"
fi
echo "k8s=$MESH_E2E_CACHE/k8s-$K8S_VERSION/bin"
echo "etcd=$MESH_E2E_CACHE/etcd-$ETCD_VERSION/bin"
echo "cni=$MESH_E2E_CACHE/cni-$PLUGINS_VERSION/bin"
