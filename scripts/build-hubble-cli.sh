#!/usr/bin/env bash
# Builds the stock hubble CLI (github.com/cilium/cilium/hubble, v1.20.2)
# from the Go module proxy into ${AEGIS_CACHE:-/var/cache/aegis}/hubble-v1.20.2/,
# in a scratch module outside the repo, so the e2e tests can check that
# `hubble observe` works against aegisd unchanged. Idempotent; prints what
# it does and the path.
set -euo pipefail
VERSION=v1.20.2
cache=${AEGIS_CACHE:-/var/cache/aegis}/hubble-$VERSION
out=$cache/hubble
GO=${GO:-go}
if [ -x "$out" ]; then
	echo "hubble: $VERSION already built, reusing $out"
	exit 0
fi
mkdir -p "$cache/src"
cd "$cache/src"
[ -f go.mod ] || "$GO" mod init aegis.local/hubble-build >/dev/null
echo "hubble: building github.com/cilium/cilium/hubble@$VERSION in $cache/src"
"$GO" get "github.com/cilium/cilium/hubble@$VERSION"
CGO_ENABLED=0 "$GO" build -o "$out.tmp" github.com/cilium/cilium/hubble
mv -f "$out.tmp" "$out"
echo "$out"
