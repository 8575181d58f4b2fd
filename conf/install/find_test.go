package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindConflist(t *testing.T) {
	for _, tc := range []struct {
		files []string
		dirs  []string
		want  string
	}{
		{files: []string{"20-b.conflist", "10-azure.conflist", "README", "05-x.conflist.bak"}, want: "10-azure.conflist"},
		// Lexical over every extension, as the runtime picks, even when
		// the winner is a .conf that Install will refuse.
		{files: []string{"10-a.conflist", "10-a.conf", "09-z.json"}, want: "09-z.json"},
		{files: []string{"20-b.conflist"}, dirs: []string{"10-dir.conflist"}, want: "20-b.conflist"},
	} {
		dir := t.TempDir()
		for _, n := range tc.files {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("{}"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range tc.dirs {
			if err := os.Mkdir(filepath.Join(dir, n), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		got, err := FindConflist(dir)
		if err != nil || got != filepath.Join(dir, tc.want) {
			t.Errorf("FindConflist(%v) = %s, %v; want %s", tc.files, got, err, tc.want)
		}
	}
	dir := t.TempDir()
	if _, err := FindConflist(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("empty dir: %v", err)
	}
	if _, err := FindConflist(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing dir: no error")
	}
}
