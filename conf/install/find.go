package install

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// FindConflist returns the configuration file the container runtime uses
// in dir: the lexically first *.conflist, *.conf or *.json, as libcni's
// ConfFiles and containerd's loader pick it. It may be a .conf, which
// Install then refuses with a clear error.
func FindConflist(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("find conflist in %s: %w", dir, err)
	}
	var names []string
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".conflist", ".conf", ".json":
			if !e.IsDir() {
				names = append(names, e.Name())
			}
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("find conflist in %s: no *.conflist, *.conf or *.json file", dir)
	}
	return filepath.Join(dir, slices.Min(names)), nil
}
