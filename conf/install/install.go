// Package install inserts Aegis into the node's CNI conflist right after
// the primary plugin, and takes it out again. Edits are atomic (a
// temporary file in the same directory, synced, renamed over the original,
// mode kept) and idempotent, and keep every other plugin and every field,
// known or not, in its original order.
//
// `aegis-cni install` and `aegis-cni uninstall` are the commands built on
// it.
package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/aegis-cni/aegis/daemon/state"
)

// FindConflist picks the configuration the container runtime uses in dir:
// the lexically first *.conflist, *.conf or *.json, as libcni does.
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
	slices.Sort(names)
	return filepath.Join(dir, names[0]), nil
}

// member is one key of a JSON object with its raw value.
type member struct {
	key   string
	value json.RawMessage
}

// object is a JSON object that remembers its key order.
type object []member

func (o object) get(key string) (json.RawMessage, bool) {
	for _, m := range o {
		if m.key == key {
			return m.value, true
		}
	}
	return nil, false
}

func (o object) set(key string, v json.RawMessage) object {
	for i := range o {
		if o[i].key == key {
			o[i].value = v
			return o
		}
	}
	return append(o, member{key, v})
}

func parseObject(data []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	var o object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, errors.New("object key is not a string")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("value of %q: %w", key, err)
		}
		o = append(o, member{key, v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after the object")
	}
	return o, nil
}

func (o object) marshal() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.value)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// conflist is a parsed conflist: its top-level object and its plugins.
type conflist struct {
	top     object
	plugins []json.RawMessage
}

func readConflist(path string) (*conflist, os.FileMode, error) {
	if filepath.Ext(path) == ".conf" {
		return nil, 0, fmt.Errorf("%s: a .conf file holds one plugin; chaining needs a .conflist", path)
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", path, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", path, err)
	}
	top, err := parseObject(data)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: not a JSON conflist: %w", path, err)
	}
	raw, ok := top.get("plugins")
	if !ok {
		return nil, 0, fmt.Errorf("%s: no \"plugins\" array", path)
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(raw, &plugins); err != nil {
		return nil, 0, fmt.Errorf("%s: \"plugins\" is not an array of objects: %w", path, err)
	}
	return &conflist{top: top, plugins: plugins}, info.Mode().Perm(), nil
}

func pluginTypeName(raw json.RawMessage) string {
	var p struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(raw, &p)
	return p.Type
}

func (c *conflist) indexOf(typ string) int {
	for i, p := range c.plugins {
		if pluginTypeName(p) == typ {
			return i
		}
	}
	return -1
}

func (c *conflist) bytes() ([]byte, error) {
	var arr bytes.Buffer
	arr.WriteByte('[')
	for i, p := range c.plugins {
		if i > 0 {
			arr.WriteByte(',')
		}
		arr.Write(p)
	}
	arr.WriteByte(']')
	top := c.top.set("plugins", arr.Bytes())
	var out bytes.Buffer
	if err := json.Indent(&out, top.marshal(), "", "  "); err != nil {
		return nil, fmt.Errorf("format conflist: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// Install inserts entry (a plugin object whose "type" names the plugin)
// right after the plugin of type after ("" means after the first plugin).
// An entry of the same type already present is replaced in place when it
// differs and left alone when identical. changed says whether the file was
// written.
func Install(path string, entry map[string]any, after string) (changed bool, err error) {
	typ, _ := entry["type"].(string)
	if typ == "" {
		return false, errors.New("install: the plugin entry has no \"type\"")
	}
	c, mode, err := readConflist(path)
	if err != nil {
		return false, err
	}
	raw, err := marshalEntry(entry)
	if err != nil {
		return false, err
	}
	if i := c.indexOf(typ); i >= 0 {
		if equalJSON(c.plugins[i], raw) {
			return false, nil
		}
		c.plugins[i] = raw
	} else {
		pos := 1
		if after != "" {
			j := c.indexOf(after)
			if j < 0 {
				return false, fmt.Errorf("%s: no plugin of type %q to insert %s after", path, after, typ)
			}
			pos = j + 1
		}
		if len(c.plugins) == 0 {
			return false, fmt.Errorf("%s: no plugins: %s must be chained after a primary plugin", path, typ)
		}
		c.plugins = slices.Insert(c.plugins, pos, raw)
	}
	return true, write(path, c, mode)
}

// Uninstall removes every plugin of type pluginType.
func Uninstall(path string, pluginType string) (changed bool, err error) {
	c, mode, err := readConflist(path)
	if err != nil {
		return false, err
	}
	n := len(c.plugins)
	c.plugins = slices.DeleteFunc(c.plugins, func(p json.RawMessage) bool { return pluginTypeName(p) == pluginType })
	if len(c.plugins) == n {
		return false, nil
	}
	return true, write(path, c, mode)
}

// marshalEntry encodes the entry with "type" first, the rest sorted, so
// the same entry always produces the same bytes.
func marshalEntry(entry map[string]any) (json.RawMessage, error) {
	var o object
	keys := make([]string, 0, len(entry))
	for k := range entry {
		if k != "type" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range append([]string{"type"}, keys...) {
		v, err := json.Marshal(entry[k])
		if err != nil {
			return nil, fmt.Errorf("encode plugin entry field %q: %w", k, err)
		}
		o = append(o, member{k, v})
	}
	return o.marshal(), nil
}

func equalJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// write replaces path atomically: readers see the old file or the new
// one, never a part.
func write(path string, c *conflist, mode os.FileMode) error {
	data, err := c.bytes()
	if err != nil {
		return err
	}
	return state.WriteFile(path, data, mode)
}
