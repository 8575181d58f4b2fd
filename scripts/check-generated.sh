#!/usr/bin/env bash
# Checks that the committed eBPF objects and bindings match the C sources.
# bpf2go output depends on the compiler, so the check runs only with the
# clang major version the committed files were built with.
set -euo pipefail
cd "$(dirname "$0")/.."

want=$(cat bpf/CLANG_VERSION)
if ! command -v clang >/dev/null; then
	echo "check-generated: clang not installed; skipping (objects were built with clang $want)"
	exit 0
fi
have=$(clang -dumpversion | cut -d. -f1)
if [ "$have" != "$want" ]; then
	echo "check-generated: clang $have here, objects built with clang $want; skipping"
	exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp bpf/datapath_bpfel.go bpf/datapath_bpfel.o "$tmp/"
echo "check-generated: regenerating eBPF objects with clang $have"
(cd bpf && BPF_CLANG=clang go generate ./)
if cmp -s "$tmp/datapath_bpfel.o" bpf/datapath_bpfel.o && cmp -s "$tmp/datapath_bpfel.go" bpf/datapath_bpfel.go; then
	echo "check-generated: eBPF objects are current"
	exit 0
fi
cp "$tmp/datapath_bpfel.go" "$tmp/datapath_bpfel.o" bpf/
echo "check-generated: committed eBPF objects are stale: run 'make generate' and commit bpf/" >&2
exit 1
