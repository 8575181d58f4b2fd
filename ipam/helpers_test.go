package main

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// netconf is an aegis-ipam network configuration with a data directory of
// its own. Keys in ipam override the section's; a nil value removes one.
func netconf(tb testing.TB, ipam map[string]any) map[string]any {
	tb.Helper()
	sec := map[string]any{"type": "aegis-ipam", "podCIDR": "10.244.1.0/24", "dataDir": tb.TempDir()}
	for k, v := range ipam {
		if v == nil {
			delete(sec, k)
		} else {
			sec[k] = v
		}
	}
	return map[string]any{"cniVersion": "1.1.0", "name": "net", "ipam": sec}
}

func encode(tb testing.TB, conf map[string]any) []byte {
	tb.Helper()
	data, err := json.Marshal(conf)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func cmdArgs(stdin []byte, id, ifname string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, Netns: "/var/run/netns/" + id, IfName: ifname, StdinData: stdin}
}

// addIP runs ADD for (id, ifname) and returns the address it gave.
func addIP(stdin []byte, id, ifname string) (*current.IPConfig, error) {
	res, err := add(cmdArgs(stdin, id, ifname))
	if err != nil {
		return nil, err
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, err
	}
	if len(r.IPs) != 1 {
		return nil, errors.New("result has no single address")
	}
	return r.IPs[0], nil
}

func mustAdd(tb testing.TB, stdin []byte, id, ifname string) *current.IPConfig {
	tb.Helper()
	ipc, err := addIP(stdin, id, ifname)
	if err != nil {
		tb.Fatalf("ADD %s/%s: %v", id, ifname, err)
	}
	return ipc
}

// code is err's CNI error code, 0 if it carries none.
func code(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// captureStdout runs fn with os.Stdout going to a pipe and returns what
// it wrote; stdout is restored when fn returns.
func captureStdout(tb testing.TB, fn func() error) ([]byte, error) {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	old := os.Stdout
	os.Stdout = w
	out := make(chan []byte)
	go func() {
		data, _ := io.ReadAll(r)
		out <- data
	}()
	ferr := fn()
	os.Stdout = old
	w.Close()
	return <-out, ferr
}
