#!/usr/bin/env bash
# Builds the real Azure CNI plugin (azure-vnet, from
# github.com/Azure/azure-container-networking v1.7.0, package
# cni/network/plugin) from the Go module proxy, plus the CNS stand-in the
# e2e tests run it against (e2e/azurecns, a Go module of its own).
#
# Both land in ${AEGIS_CACHE:-/var/cache/aegis}/azure-vnet-v1.7.0/, never in
# the repo. azure-vnet is reused when already built; the stand-in is rebuilt
# every run (it is this repo's code; Go's build cache keeps that quick).
# Idempotent; prints what it does, and the paths on success.
set -euo pipefail

ACN_MODULE=github.com/Azure/azure-container-networking
ACN_VERSION=v1.7.0
ACN_PKG=$ACN_MODULE/cni/network/plugin

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${AEGIS_CACHE:-/var/cache/aegis}/azure-vnet-$ACN_VERSION
out=$cache/azure-vnet
standin=$cache/azure-cns-standin
GO=${GO:-go}

mkdir -p "$cache"

if [ -x "$out" ] && "$out" --version 2>/dev/null | grep -q "$ACN_VERSION"; then
	echo "azure-vnet: $ACN_VERSION already built, reusing $out"
else
	# A scratch module outside the repo that requires ACN. ACN's own go.mod
	# pins ginkgo/gomega with replace directives, which Go ignores in a
	# dependency, so they are repeated here; without them the module graph
	# picks ginkgo/gomega versions ACN does not build with.
	src=$cache/src
	echo "azure-vnet: building $ACN_PKG@$ACN_VERSION in scratch module $src"
	rm -rf "$src"
	mkdir -p "$src"
	cat >"$src/go.mod" <<EOF
module aegis.local/azure-vnet-build

go 1.23.2

require $ACN_MODULE $ACN_VERSION

replace (
	github.com/onsi/ginkgo => github.com/onsi/ginkgo v1.12.0
	github.com/onsi/gomega => github.com/onsi/gomega v1.10.0
)
EOF
	(
		cd "$src"
		# Resolves ACN's dependency graph and fills go.sum (verified against
		# the checksum database as usual).
		"$GO" get "$ACN_PKG@$ACN_VERSION"
		start=$(date +%s)
		CGO_ENABLED=0 "$GO" build -trimpath \
			-ldflags "-X main.version=$ACN_VERSION" \
			-o "$out.tmp" "$ACN_PKG"
		echo "azure-vnet: compiled in $(($(date +%s) - start))s"
	)
	mv -f "$out.tmp" "$out"
fi

echo "azure-cns-standin: building $repo/e2e/azurecns/cmd/azure-cns-standin"
(
	cd "$repo/e2e/azurecns"
	CGO_ENABLED=0 "$GO" build -trimpath -o "$standin.tmp" ./cmd/azure-cns-standin
)
mv -f "$standin.tmp" "$standin"

echo "azure-cns-standin: $standin"
echo "$out"
