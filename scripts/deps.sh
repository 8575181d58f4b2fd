#!/usr/bin/env bash
# Installs what building and testing Aegis needs on a fresh Debian 12 node,
# and only what is missing. Prints every step.
set -euo pipefail

# Debian packages: clang/llvm/libbpf for `make generate`, iproute2 for the
# namespace node, iperf3, dnsperf and wrk for benchmarks, unbound as the e2e
# tests' "internet" resolver.
packages=(clang llvm libbpf-dev bpftool iproute2 iptables iperf3 gcc-multilib unbound dnsperf wrk)
[ "${AEGIS_DEPS_EXTRA:-}" ] && read -r -a extra <<<"$AEGIS_DEPS_EXTRA" && packages+=("${extra[@]}")

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing Debian packages: ${missing[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: need root to install packages" >&2
		exit 1
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
	echo "deps: Debian packages present: ${packages[*]}"
fi

echo "deps: downloading Go modules"
go mod download
