#!/usr/bin/env bash
# Builds the real Kubernetes API server (k8s.io/kubernetes/cmd/kube-apiserver
# v1.37.2) and kubectl from the Go module proxy, and installs Debian's etcd,
# for the tests that run Aegis's Kubernetes API source against a real
# apiserver (e2e/kube, daemon/k8s).
#
# The binaries land in ${AEGIS_CACHE:-/var/cache/aegis}/kube-v1.37.2/, never
# in the repo, and are reused when already built. k8s.io/kubernetes is not
# meant to be a dependency: its go.mod points its 33 staging modules
# (k8s.io/api, k8s.io/client-go, ...) at ./staging, which Go ignores outside
# that repository. So the scratch module repeats each of those replaces with
# the staging module's published v0.37.2. The list is read from
# k8s.io/kubernetes's own go.mod, so it stays right for the version pinned.
#
# Usage: scripts/build-kube-apiserver.sh            (build what is missing)
#        AEGIS_KUBECTL=0 scripts/build-kube-apiserver.sh   (skip kubectl)
# Idempotent; prints each step, and the paths on success. About 8 minutes
# cold on 2 cores, seconds when cached.
set -euo pipefail

KUBE_VERSION=v1.37.2
STAGING_VERSION=v0.${KUBE_VERSION#v1.}

cache=${AEGIS_CACHE:-/var/cache/aegis}/kube-$KUBE_VERSION
apiserver=$cache/kube-apiserver
kubectl=$cache/kubectl
GO=${GO:-go}

mkdir -p "$cache"

# --- etcd: Debian's package is enough for a test apiserver. -----------------
if command -v etcd >/dev/null 2>&1; then
	echo "etcd: present, $(command -v etcd) ($(etcd --version 2>/dev/null | head -1))"
else
	if [ "$(id -u)" -ne 0 ]; then
		echo "etcd: missing, and installing etcd-server needs root" >&2
		exit 1
	fi
	echo "etcd: installing Debian package etcd-server"
	# The package starts its own etcd where an init system runs; tests start
	# their own on free ports, so that one is neither needed nor harmful.
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends etcd-server; then
		echo "etcd: apt-get update, then retry"
		apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends etcd-server
	fi
fi

# built says whether a cached binary reports the wanted version.
built() {
	[ -x "$1" ] && "$1" --version 2>/dev/null | grep -q "$KUBE_VERSION" ||
		{ [ -x "$1" ] && "$1" version --client 2>/dev/null | grep -q "$KUBE_VERSION"; }
}

want=()
if built "$apiserver"; then
	echo "kube-apiserver: $KUBE_VERSION already built, reusing $apiserver"
else
	want+=(kube-apiserver)
fi
if [ "${AEGIS_KUBECTL:-1}" != 0 ]; then
	if built "$kubectl"; then
		echo "kubectl: $KUBE_VERSION already built, reusing $kubectl"
	else
		want+=(kubectl)
	fi
fi

if [ ${#want[@]} -gt 0 ]; then
	src=$cache/src
	echo "kube: downloading k8s.io/kubernetes@$KUBE_VERSION from the module proxy"
	gomod=$(cd "$cache" && GOFLAGS=-mod=mod "$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
		sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
	if [ ! -f "$gomod" ]; then
		echo "kube: could not find k8s.io/kubernetes's go.mod (got '$gomod')" >&2
		exit 1
	fi
	staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' "$gomod")
	count=$(wc -w <<<"$staging")
	if [ "$count" -lt 30 ]; then
		echo "kube: expected 30+ staging replaces in $gomod, found $count" >&2
		exit 1
	fi
	echo "kube: scratch module $src, replacing $count staging modules with $STAGING_VERSION"
	rm -rf "$src"
	mkdir -p "$src"
	{
		printf 'module aegis.local/kube-build\n\ngo 1.26.0\n\ngodebug default=go1.26\n\n'
		printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$KUBE_VERSION"
		for m in $staging; do
			printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"
		done
		printf ')\n'
	} >"$src/go.mod"
	(
		cd "$src"
		pkgs=()
		for w in "${want[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$w@$KUBE_VERSION"); done
		echo "kube: resolving the dependency graph (go get ${pkgs[*]})"
		"$GO" get "${pkgs[@]}"
		# The version stamp kube-apiserver --version prints (and that the
		# check above reads); the apiserver also reports it on /version.
		ver=k8s.io/component-base/version
		minor=${KUBE_VERSION#v1.}
		minor=${minor%%.*}
		ldflags="-s -w -X $ver.gitVersion=$KUBE_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor"
		ldflags="$ldflags -X $ver.gitTreeState=clean -X $ver.buildDate=1970-01-01T00:00:00Z"
		ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
		for w in "${want[@]}"; do
			start=$(date +%s)
			echo "kube: compiling $w (several minutes cold)"
			CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$cache/$w.tmp" "k8s.io/kubernetes/cmd/$w"
			mv -f "$cache/$w.tmp" "$cache/$w"
			echo "kube: $w compiled in $(($(date +%s) - start))s"
		done
	)
fi

for b in kube-apiserver kubectl; do
	[ -x "$cache/$b" ] && echo "$b: $("$cache/$b" --version 2>/dev/null || "$cache/$b" version --client 2>/dev/null | head -1)"
done
echo "etcd: $(command -v etcd)"
echo "$apiserver"
[ -x "$kubectl" ] && echo "$kubectl"
exit 0
