package install

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Install, install again, uninstall, uninstall again, on real layouts: a
// node's CNS-written AKS conflist (tabs), a hand-written one (two spaces,
// inline objects, unknown fields), one on a single line.
func TestInstallGolden(t *testing.T) {
	for _, tc := range []struct {
		file  string
		after string
		want  []string
	}{
		{"10-azure.conflist", "azure-vnet", []string{"azure-vnet", "aegis-cni", "portmap"}},
		{"10-ptp.conflist", "ptp", []string{"ptp", "aegis-cni", "bandwidth"}},
		{"99-compact.conflist", "", []string{"bridge", "aegis-cni", "firewall"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			orig := read(t, filepath.Join("testdata", tc.file))
			path := place(t, tc.file, orig, 0o640)

			mustChange(t, true, "install", func() (bool, error) { return Install(path, entry, tc.after) })
			installed := read(t, path)
			golden(t, filepath.Join("testdata", tc.file+".golden"), installed)
			if got := pluginTypes(t, installed); !slices.Equal(got, tc.want) {
				t.Errorf("plugins %v, want %v", got, tc.want)
			}
			if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o640 {
				t.Errorf("mode after install: %v, %v", st.Mode(), err)
			}

			mustChange(t, false, "second install", func() (bool, error) { return Install(path, entry, tc.after) })
			if !bytes.Equal(read(t, path), installed) {
				t.Error("a second install rewrote the file")
			}

			mustChange(t, true, "uninstall", func() (bool, error) { return Uninstall(path, "aegis-cni") })
			if got := read(t, path); !bytes.Equal(got, orig) {
				t.Errorf("uninstall did not restore the original:\n%s\nwant\n%s", got, orig)
			}
			mustChange(t, false, "second uninstall", func() (bool, error) { return Uninstall(path, "aegis-cni") })

			if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
				t.Errorf("%d files in the directory, want the conflist alone", len(ents))
			}
		})
	}
}

func TestInstallCRLF(t *testing.T) {
	orig := bytes.ReplaceAll(read(t, filepath.Join("testdata", "10-ptp.conflist")), []byte("\n"), []byte("\r\n"))
	path := place(t, "10-ptp.conflist", orig, 0o644)
	mustChange(t, true, "install", func() (bool, error) { return Install(path, entry, "ptp") })
	got := read(t, path)
	if n := bytes.Count(got, []byte("\n")); n != bytes.Count(got, []byte("\r\n")) {
		t.Errorf("line ends mixed:\n%q", got)
	}
	pluginTypes(t, got)
	mustChange(t, true, "uninstall", func() (bool, error) { return Uninstall(path, "aegis-cni") })
	if !bytes.Equal(read(t, path), orig) {
		t.Error("uninstall did not restore the original")
	}
}

func TestInstallReplacesChangedEntry(t *testing.T) {
	orig := read(t, filepath.Join("testdata", "10-azure.conflist"))
	path := place(t, "10-azure.conflist", orig, 0o644)
	mustChange(t, true, "install", func() (bool, error) { return Install(path, entry, "azure-vnet") })
	installed := read(t, path)

	changed := map[string]any{"type": "aegis-cni", "socket": "/run/aegis/other.sock", "bpfRoot": "/sys/fs/bpf/aegis", "logFile": "/var/log/aegis/cni.log"}
	mustChange(t, true, "install a changed entry", func() (bool, error) { return Install(path, changed, "azure-vnet") })
	got := read(t, path)
	if want := bytes.Replace(installed, []byte("/var/run/aegis/aegisd.sock"), []byte("/run/aegis/other.sock"), 1); !bytes.Equal(got, want) {
		t.Errorf("replace changed more than the entry:\n%s\nwant\n%s", got, want)
	}
	// Same JSON in another layout and key order is the same entry.
	reordered := bytes.Replace(got, []byte(`"type": "aegis-cni",`), []byte(`"type":"aegis-cni",   `), 1)
	if err := os.WriteFile(path, reordered, 0o644); err != nil {
		t.Fatal(err)
	}
	mustChange(t, false, "install the same entry", func() (bool, error) { return Install(path, changed, "azure-vnet") })
}

func TestInstallKeepsOneEntry(t *testing.T) {
	data := `{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"ptp"},{"type":"aegis-cni","socket":"/a"},{"type":"portmap"},{"type":"aegis-cni","socket":"/b"}]}`
	path := place(t, "n.conflist", []byte(data), 0o644)
	mustChange(t, true, "install", func() (bool, error) { return Install(path, entry, "ptp") })
	got := read(t, path)
	if types := pluginTypes(t, got); !slices.Equal(types, []string{"ptp", "aegis-cni", "portmap"}) {
		t.Errorf("plugins %v", types)
	}
	if !bytes.Contains(got, []byte("aegisd.sock")) {
		t.Errorf("entry not updated: %s", got)
	}
}

func TestUninstall(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"plugins":[{"type":"aegis-cni"},{"type":"ptp"}]}`, `{"plugins":[{"type":"ptp"}]}`},
		{`{"plugins":[ {"type":"aegis-cni"} ]}`, `{"plugins":[]}`},
		{`{"plugins":[{"type":"a"},{"type":"aegis-cni"},{"type":"aegis-cni"},{"type":"b"}]}`, `{"plugins":[{"type":"a"},{"type":"b"}]}`},
	} {
		path := place(t, "x.conflist", []byte(tc.in), 0o644)
		mustChange(t, true, "uninstall", func() (bool, error) { return Uninstall(path, "aegis-cni") })
		if got := string(read(t, path)); got != tc.want {
			t.Errorf("uninstall from %s = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestInstallThroughSymlink(t *testing.T) {
	target := place(t, "10-azure.conflist", read(t, filepath.Join("testdata", "10-azure.conflist")), 0o644)
	link := filepath.Join(t.TempDir(), "10-azure.conflist")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	mustChange(t, true, "install", func() (bool, error) { return Install(link, entry, "azure-vnet") })
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the symlink was replaced: %v %v", st.Mode(), err)
	}
	if !bytes.Contains(read(t, target), []byte("aegis-cni")) {
		t.Error("the target was not edited")
	}
}

func TestInstallErrors(t *testing.T) {
	aks := string(read(t, filepath.Join("testdata", "10-azure.conflist")))
	for _, tc := range []struct {
		name, file, content, after, want string
		entry                            map[string]any
	}{
		{"not JSON", "a.conflist", "{", "", "not JSON: unexpected end of JSON input", nil},
		{"not an object", "a.conflist", `[{"type":"ptp"}]`, "", "not a JSON object", nil},
		{"no plugins", "a.conflist", `{"name":"x","type":"ptp"}`, "", `no "plugins" array`, nil},
		{"plugins not an array", "a.conflist", `{"plugins":{"type":"ptp"}}`, "", `"plugins" is not an array`, nil},
		{"plugin not an object", "a.conflist", `{"plugins":[{"type":"ptp"},"portmap"]}`, "", "plugins[1] is not an object", nil},
		{"type not a string", "a.conflist", `{"plugins":[{"type":7}]}`, "", `plugins[0]: "type" is not a string`, nil},
		{"two plugins keys", "a.conflist", `{"plugins":[{"type":"a"}],"plugins":[{"type":"b"}]}`, "", `two "plugins" keys`, nil},
		{"empty plugins", "a.conflist", `{"plugins":[]}`, "", "the plugins array is empty", nil},
		{"after not found", "10-azure.conflist", aks, "ptp", `no plugin of type "ptp" to chain aegis-cni after (plugins: azure-vnet, portmap)`, nil},
		{"after itself", "10-azure.conflist", aks, "aegis-cni", "cannot chain aegis-cni after itself", nil},
		{".conf", "10-bridge.conf", `{"type":"bridge"}`, "", "the runtime reads a .conf file as a single plugin; chaining needs a .conflist", nil},
		{".json", "10-bridge.json", aks, "", "the runtime reads a .json file as a single plugin; chaining needs a .conflist", nil},
		{"no type in entry", "10-azure.conflist", aks, "", `the plugin entry has no "type"`, map[string]any{"socket": "/s"}},
		{"entry not JSON", "10-azure.conflist", aks, "", `encode plugin entry field "bad"`, map[string]any{"type": "aegis-cni", "bad": func() {}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := place(t, tc.file, []byte(tc.content), 0o644)
			e := tc.entry
			if e == nil {
				e = entry
			}
			changed, err := Install(path, e, tc.after)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("err = %v\nwant %q, naming %s", err, tc.want, path)
			}
			if changed || string(read(t, path)) != tc.content {
				t.Error("a failed install changed the file")
			}
		})
	}
	if _, err := Install(filepath.Join(t.TempDir(), "missing.conflist"), entry, ""); err == nil || !strings.Contains(err.Error(), "missing.conflist") {
		t.Errorf("install into a missing file: %v", err)
	}
	if _, err := Uninstall(place(t, "a.conflist", []byte("nope"), 0o644), "aegis-cni"); err == nil || !strings.Contains(err.Error(), "uninstall aegis-cni from") {
		t.Errorf("uninstall from a broken file: %v", err)
	}
}

// A reader never sees a partly written conflist, only the old file or
// the new one.
func TestWritesAreAtomic(t *testing.T) {
	orig := read(t, filepath.Join("testdata", "10-azure.conflist"))
	path := place(t, "10-azure.conflist", orig, 0o644)
	mustChange(t, true, "install", func() (bool, error) { return Install(path, entry, "azure-vnet") })
	installed := read(t, path)
	mustChange(t, true, "uninstall", func() (bool, error) { return Uninstall(path, "aegis-cni") })

	var stop atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("read during edits: %v", err)
				return
			}
			if !bytes.Equal(data, orig) && !bytes.Equal(data, installed) {
				t.Errorf("a reader saw a partial file:\n%s", data)
				return
			}
			reads.Add(1)
		}
	})
	for range 100 {
		if _, err := Install(path, entry, "azure-vnet"); err != nil {
			t.Fatal(err)
		}
		if _, err := Uninstall(path, "aegis-cni"); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("%d files left in the directory", len(ents))
	}
	t.Logf("%d reads during 200 edits", reads.Load())
}

// FuzzInstall feeds arbitrary files to the edits Install and Uninstall
// make on a conflist's bytes (the file handling around them is the same
// for every input).
func FuzzInstall(f *testing.F) {
	for _, name := range []string{"10-azure.conflist", "10-ptp.conflist", "99-compact.conflist"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, "")
		f.Add(data, "portmap")
	}
	f.Add([]byte(`{"plugins":[{"type":1},null,[]]}`), "")
	f.Add([]byte(`{"plugins":[{"type":"aegis-cni"},{"type":"x"}],"plugins\u0073":[]}`), "x")
	f.Add([]byte("{\"plugins\":[\r\n\t{\"type\":\"a\\\"]}\"}\r\n]}"), "a")
	want, err := marshalEntry(entry)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, after string) {
		before, scanErr := scan(data)
		got, err := installBytes(data, want, "aegis-cni", after)
		if err != nil {
			return
		}
		l, err := scan(got)
		if err != nil {
			t.Fatalf("install made what it cannot read back: %v\n%q", err, got)
		}
		if n := countOf(l.types, "aegis-cni"); n != 1 {
			t.Fatalf("%d aegis-cni entries after install:\n%q", n, got)
		}
		if again, err := installBytes(got, want, "aegis-cni", after); err != nil || !bytes.Equal(again, got) {
			t.Fatalf("second install: %v\n%q\nafter\n%q", err, again, got)
		}
		// A fresh install is undone byte for byte.
		if scanErr == nil && countOf(before.types, "aegis-cni") == 0 {
			back, err := uninstallBytes(got, "aegis-cni")
			if err != nil || !bytes.Equal(back, data) {
				t.Fatalf("uninstall: %v\n%q\nwant\n%q", err, back, data)
			}
		}
	})
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}
