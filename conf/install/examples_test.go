package install

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// The examples are valid conflists, chain aegis-cni where it belongs with
// the documented entry, and are exactly what Install writes: taking the
// entry out and installing it again gives the same bytes.
func TestExamples(t *testing.T) {
	for _, tc := range []struct {
		file    string
		version string
		types   []string
	}{
		{"10-azure-aegis.conflist", "0.3.0", []string{"azure-vnet", "aegis-cni", "portmap"}},
		{"10-aegis-ptp.conflist", "1.1.0", []string{"ptp", "aegis-cni"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			data := read(t, filepath.Join("..", "examples", tc.file))
			list, err := libcni.ConfListFromBytes(data)
			if err != nil {
				t.Fatalf("libcni: %v", err)
			}
			if list.CNIVersion != tc.version {
				t.Errorf("cniVersion %s, want %s", list.CNIVersion, tc.version)
			}
			if got := pluginTypes(t, data); !slices.Equal(got, tc.types) {
				t.Fatalf("plugins %v, want %v", got, tc.types)
			}
			want, _ := json.Marshal(entry)
			if got := list.Plugins[1].Bytes; !sameJSON(got, want) {
				t.Errorf("aegis-cni entry %s, want %s", got, want)
			}

			path := place(t, tc.file, data, 0o644)
			mustChange(t, true, "uninstall", func() (bool, error) { return Uninstall(path, "aegis-cni") })
			mustChange(t, true, "install", func() (bool, error) { return Install(path, entry, tc.types[0]) })
			if got := read(t, path); string(got) != string(data) {
				t.Errorf("reinstalled:\n%s\nwant the example:\n%s", got, data)
			}
		})
	}
}
