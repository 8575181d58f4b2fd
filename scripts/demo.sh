#!/usr/bin/env bash
# The demo: a standalone node made of network namespaces with the AKS
# workshop's pet-store pods; shows the workshop's policies applied,
# connections allowed and blocked, FQDN filtering against real resolvers
# (CoreDNS as kube-dns, unbound as the internet), L7 HTTP rules, and the
# flows that say why. Needs root (namespaces, bpffs, tcx).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (network namespaces, bpffs, tcx)" >&2
	exit 1
fi
# The pet-store, FQDN and L7 scenarios are e2e tests; run their binary directly
# so their narration goes straight to the terminal.
go test -c -o bin/e2e.test ./e2e/
cd e2e
for scenario in TestPetStore TestFQDNWorkshop TestL7HTTP; do
	AEGIS_DEMO=1 ../bin/e2e.test -test.run "^${scenario}\$" -test.count=1 | grep -v '^PASS$'
done
