package install

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// entry is what `aegis-cni install` writes.
var entry = map[string]any{
	"type":    "aegis-cni",
	"socket":  "/var/run/aegis/aegisd.sock",
	"bpfRoot": "/sys/fs/bpf/aegis",
	"logFile": "/var/log/aegis/cni.log",
}

// place writes data as name in a fresh directory and returns its path.
func place(tb testing.TB, name string, data []byte, mode os.FileMode) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(path, data, mode); err != nil {
		tb.Fatal(err)
	}
	return path
}

func read(tb testing.TB, path string) []byte {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// pluginTypes parses path the way the runtime does and lists its plugins.
func pluginTypes(tb testing.TB, data []byte) []string {
	tb.Helper()
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		tb.Fatalf("not a conflist libcni accepts: %v\n%s", err, data)
	}
	var out []string
	for _, p := range list.Plugins {
		out = append(out, p.Network.Type)
	}
	return out
}

// mustChange runs an edit and fails unless it reports changed == want.
func mustChange(tb testing.TB, want bool, what string, edit func() (bool, error)) {
	tb.Helper()
	changed, err := edit()
	if err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
	if changed != want {
		tb.Fatalf("%s: changed = %v, want %v", what, changed, want)
	}
}

// golden compares got with the golden file, or rewrites it with -update.
func golden(tb testing.TB, path string, got []byte) {
	tb.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatal(err)
		}
		return
	}
	if want := read(tb, path); !bytes.Equal(got, want) {
		tb.Errorf("differs from %s (run go test -update to accept):\n%s\nwant\n%s", path, got, want)
	}
}
