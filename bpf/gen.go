// Package bpf holds Aegis's eBPF datapath: the C sources in src/, the
// bpf2go-generated bindings and objects (committed, so a checkout builds
// without clang), and the Go code that loads, pins and attaches them.
package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -cc ${BPF_CLANG} -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type endpoint_info -type enforcement -type ipcache_key -type ipcache_entry -type policy_key -type policy_entry -type ct_key -type ct_entry -type flow_event -type counter -type proxy_config -type fqdn_key datapath src/aegis.c -- -I./src
