package install

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/aegis-cni/aegis/daemon/state"
)

// Install inserts the plugin config entry (a JSON object whose "type" is
// the plugin name) into the conflist at path, right after the plugin whose
// type is after (for instance "azure-vnet" or "ptp"); after == "" means
// after the first plugin. An entry of the same type already present is
// replaced in place if it differs and left alone if it is the same JSON;
// changed reports whether the file was written. Every other plugin and
// every other byte of the file stay as they were.
func Install(path string, entry map[string]any, after string) (changed bool, err error) {
	typ, _ := entry["type"].(string)
	if typ == "" {
		return false, fmt.Errorf(`install into %s: the plugin entry has no "type"`, path)
	}
	verb := fmt.Sprintf("install %s into %s", typ, path)
	if after == typ {
		return false, fmt.Errorf("%s: cannot chain %s after itself", verb, typ)
	}
	want, err := marshalEntry(entry)
	if err != nil {
		return false, fmt.Errorf("%s: %w", verb, err)
	}
	return edit(path, verb, func(data []byte) ([]byte, error) {
		return installBytes(data, want, typ, after)
	})
}

// Uninstall removes every plugin of type pluginType from the conflist at
// path; changed reports whether there was one.
func Uninstall(path string, pluginType string) (changed bool, err error) {
	verb := fmt.Sprintf("uninstall %s from %s", pluginType, path)
	if pluginType == "" {
		return false, fmt.Errorf("%s: no plugin type given", verb)
	}
	return edit(path, verb, func(data []byte) ([]byte, error) {
		return uninstallBytes(data, pluginType)
	})
}

// installBytes is Install on the conflist's bytes; want is the entry as
// compact JSON, typ its type.
func installBytes(data, want []byte, typ, after string) ([]byte, error) {
	l, err := scan(data)
	if err != nil {
		return nil, err
	}
	if len(l.plugins) == 0 {
		return nil, fmt.Errorf("the plugins array is empty: nothing to chain %s after", typ)
	}
	if after != "" && !slices.Contains(l.types, after) {
		return nil, fmt.Errorf("no plugin of type %q to chain %s after (plugins: %s)", after, typ, strings.Join(l.types, ", "))
	}
	// A second entry of ours would run the plugin twice per pod: keep the
	// first.
	for {
		i := slices.Index(l.types, typ)
		if i < 0 {
			break
		}
		j := slices.Index(l.types[i+1:], typ)
		if j < 0 {
			break
		}
		if l, err = scan(l.remove(i + 1 + j)); err != nil {
			return nil, err
		}
	}
	if i := slices.Index(l.types, typ); i >= 0 {
		if sameJSON(l.plugin(i), want) {
			return l.data, nil
		}
		return l.replace(i, want), nil
	}
	pos := 0
	if after != "" {
		pos = slices.Index(l.types, after)
	}
	return l.insertAfter(pos, want), nil
}

// uninstallBytes is Uninstall on the conflist's bytes.
func uninstallBytes(data []byte, typ string) ([]byte, error) {
	for {
		l, err := scan(data)
		if err != nil {
			return nil, err
		}
		i := slices.Index(l.types, typ)
		if i < 0 {
			return data, nil
		}
		data = l.remove(i)
	}
}

// edit runs fn on the conflist's bytes and writes the result back
// atomically if it differs.
func edit(path, verb string, fn func([]byte) ([]byte, error)) (bool, error) {
	switch ext := filepath.Ext(path); ext {
	case ".conflist":
	case ".conf", ".json":
		return false, fmt.Errorf("%s: the runtime reads a %s file as a single plugin; chaining needs a .conflist", verb, ext)
	default:
		return false, fmt.Errorf("%s: not a .conflist file", verb)
	}
	// Edit a symlinked conflist where it points: renaming over the link
	// would replace it with a copy.
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return false, fmt.Errorf("%s: %w", verb, err)
	}
	info, err := os.Stat(real)
	if err != nil {
		return false, fmt.Errorf("%s: %w", verb, err)
	}
	data, err := os.ReadFile(real)
	if err != nil {
		return false, fmt.Errorf("%s: %w", verb, err)
	}
	out, err := fn(data)
	if err != nil {
		return false, fmt.Errorf("%s: %w", verb, err)
	}
	if bytes.Equal(out, data) {
		return false, nil
	}
	// Whatever the edit did, the runtime must never be handed a file it
	// cannot read.
	if _, err := scan(out); err != nil {
		return false, fmt.Errorf("%s: the edit would leave an invalid conflist: %w", verb, err)
	}
	if err := state.WriteFile(real, out, info.Mode().Perm()); err != nil {
		return false, fmt.Errorf("%s: %w", verb, err)
	}
	return true, nil
}

func (l *layout) plugin(i int) []byte { return l.data[l.plugins[i].start:l.plugins[i].end] }

// leading is the space between plugin i and the comma or bracket before
// it: the file's own separator, reused for an inserted plugin.
func (l *layout) leading(i int) []byte {
	s := l.plugins[i].start
	k := s
	for k > 0 && isSpace(l.data[k-1]) {
		k--
	}
	return l.data[k:s]
}

// insertAfter adds entry after plugin i, separated and indented as plugin
// i is. remove(i+1) takes out exactly these bytes again.
func (l *layout) insertAfter(i int, entry []byte) []byte {
	at := l.plugins[i].end
	return slices.Concat(l.data[:at], []byte(","), l.leading(i), l.render(entry, i), l.data[at:])
}

func (l *layout) replace(i int, entry []byte) []byte {
	p := l.plugins[i]
	return slices.Concat(l.data[:p.start], l.render(entry, i), l.data[p.end:])
}

// remove takes plugin i out with the separator before it (after it, for
// the first plugin).
func (l *layout) remove(i int) []byte {
	p := l.plugins
	switch {
	case i > 0:
		return slices.Concat(l.data[:p[i-1].end], l.data[p[i].end:])
	case len(p) > 1:
		return slices.Concat(l.data[:p[0].start], l.data[p[1].start:])
	default:
		return slices.Concat(l.data[:l.array.start+1], l.data[l.array.end-1:])
	}
}

// render lays entry (compact JSON) out the way plugin i is: over several
// lines in the file's indentation if plugin i is, on one line otherwise.
func (l *layout) render(entry []byte, i int) []byte {
	ws := l.leading(i)
	nl := bytes.LastIndexByte(ws, '\n')
	if nl < 0 || !bytes.Contains(l.plugin(i), []byte("\n")) {
		return entry
	}
	var b bytes.Buffer
	if err := json.Indent(&b, entry, string(ws[nl+1:]), indentUnit(l.data)); err != nil {
		return entry // marshalEntry made it; it is valid JSON
	}
	if bytes.Contains(ws, []byte("\r\n")) {
		return bytes.ReplaceAll(b.Bytes(), []byte("\n"), []byte("\r\n"))
	}
	return b.Bytes()
}

// indentUnit is the file's indentation step: the leading space of its
// first indented line, which for a conflist is a top-level key.
func indentUnit(data []byte) string {
	for line := range bytes.Lines(data) {
		n := 0
		for n < len(line) && (line[n] == ' ' || line[n] == '\t') {
			n++
		}
		if n > 0 && n < len(line) && !isSpace(line[n]) {
			return string(line[:n])
		}
	}
	return "  "
}

// marshalEntry encodes entry compactly with "type" first and the other
// keys sorted, so the same entry always gives the same bytes.
func marshalEntry(entry map[string]any) ([]byte, error) {
	keys := make([]string, 0, len(entry))
	for k := range entry {
		if k != "type" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var b bytes.Buffer
	for i, k := range append([]string{"type"}, keys...) {
		if i == 0 {
			b.WriteByte('{')
		} else {
			b.WriteByte(',')
		}
		if err := encodeValue(&b, k); err != nil {
			return nil, err
		}
		b.WriteByte(':')
		if err := encodeValue(&b, entry[k]); err != nil {
			return nil, fmt.Errorf("encode plugin entry field %q: %w", k, err)
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// encodeValue appends v as compact JSON, leaving <, > and & as they are.
func encodeValue(b *bytes.Buffer, v any) error {
	var one bytes.Buffer
	enc := json.NewEncoder(&one)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	b.Write(bytes.TrimSuffix(one.Bytes(), []byte("\n")))
	return nil
}

// sameJSON says whether a and b hold the same JSON value, whatever their
// layout and key order.
func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
