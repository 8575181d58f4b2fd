#!/usr/bin/env bash
# The demo: a standalone node made of network namespaces with the AKS
# workshop's pet-store pods; shows a policy applied and connections allowed
# and blocked. Needs root (namespaces, bpffs, tcx).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (network namespaces, bpffs, tcx)" >&2
	exit 1
fi
AEGIS_DEMO=1 go test -count=1 -run '^TestPetStore$' ./e2e/ | grep -v '^ok\|^PASS$'
