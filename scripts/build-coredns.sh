#!/usr/bin/env bash
# Builds CoreDNS v1.15.0 (the e2e tests' kube-dns) from the Go module proxy
# into ${AEGIS_CACHE:-/var/cache/aegis}/coredns-v1.15.0/, outside the repo.
# About 4 minutes cold on 2 cores. Idempotent; prints what it does and the
# path.
set -euo pipefail
VERSION=v1.15.0
cache=${AEGIS_CACHE:-/var/cache/aegis}/coredns-$VERSION
out=$cache/coredns
GO=${GO:-go}
if [ -x "$out" ]; then
	echo "coredns: $VERSION already built, reusing $out"
	exit 0
fi
mkdir -p "$cache"
echo "coredns: go install github.com/coredns/coredns@$VERSION into $cache"
GOBIN="$cache" CGO_ENABLED=0 "$GO" install "github.com/coredns/coredns@$VERSION"
echo "$out"
