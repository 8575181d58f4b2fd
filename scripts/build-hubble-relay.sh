#!/usr/bin/env bash
# Builds the stock hubble-relay (github.com/cilium/cilium/hubble-relay,
# v1.20.2) from the Go module proxy into
# ${AEGIS_CACHE:-/var/cache/aegis}/hubble-relay-v1.20.2/, in a scratch
# module outside the repo, so the e2e tests can check that relay joins
# aegisd as its peer over mTLS unchanged. Idempotent; prints what it does
# and the path.
set -euo pipefail
VERSION=v1.20.2
cache=${AEGIS_CACHE:-/var/cache/aegis}/hubble-relay-$VERSION
out=$cache/hubble-relay
GO=${GO:-go}
if [ -x "$out" ]; then
	echo "hubble-relay: $VERSION already built, reusing $out"
	exit 0
fi
mkdir -p "$cache/src"
cd "$cache/src"
[ -f go.mod ] || "$GO" mod init aegis.local/hubble-relay-build >/dev/null
echo "hubble-relay: building github.com/cilium/cilium/hubble-relay@$VERSION in $cache/src"
"$GO" get "github.com/cilium/cilium/hubble-relay@$VERSION"
CGO_ENABLED=0 "$GO" build -o "$out.tmp" github.com/cilium/cilium/hubble-relay
mv -f "$out.tmp" "$out"
echo "$out"
