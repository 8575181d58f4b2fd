package install

import (
	"encoding/json"
	"errors"
	"fmt"
)

// span is the bytes [start, end) of one JSON value in the file.
type span struct{ start, end int }

// layout is where a conflist's plugins are in its bytes.
type layout struct {
	data    []byte
	array   span   // the "plugins" array, brackets included
	plugins []span // its elements, without the space around them
	types   []string
}

// scan finds the plugins array of a conflist and its elements. It checks
// the whole file is valid JSON first, so the walk below can trust its
// structure.
func scan(data []byte) (*layout, error) {
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return nil, errors.New("not a JSON object")
	}
	l := &layout{data: data}
	found := false
	for i = skipSpace(data, i+1); data[i] != '}'; i = skipSpace(data, i) {
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
		kend := valueEnd(data, i)
		var key string
		if err := json.Unmarshal(data[i:kend], &key); err != nil {
			return nil, fmt.Errorf("decode key: %w", err)
		}
		i = skipSpace(data, kend) + 1 // the colon
		i = skipSpace(data, i)
		vend := valueEnd(data, i)
		// libcni reads the exact key "plugins"; a second one would make
		// it ambiguous which list the runtime runs.
		if key == "plugins" {
			if found {
				return nil, errors.New(`two "plugins" keys`)
			}
			found, l.array = true, span{i, vend}
		}
		i = vend
	}
	if !found {
		return nil, errors.New(`no "plugins" array`)
	}
	if data[l.array.start] != '[' {
		return nil, errors.New(`"plugins" is not an array`)
	}
	for i = skipSpace(data, l.array.start+1); data[i] != ']'; i = skipSpace(data, i) {
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
		end := valueEnd(data, i)
		n := len(l.plugins)
		if data[i] != '{' {
			return nil, fmt.Errorf("plugins[%d] is not an object", n)
		}
		var p struct {
			Type any `json:"type"`
		}
		if err := json.Unmarshal(data[i:end], &p); err != nil {
			return nil, fmt.Errorf("plugins[%d]: %w", n, err)
		}
		typ, ok := p.Type.(string)
		if p.Type != nil && !ok {
			return nil, fmt.Errorf(`plugins[%d]: "type" is not a string`, n)
		}
		l.plugins = append(l.plugins, span{i, end})
		l.types = append(l.types, typ)
		i = end
	}
	return l, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(data []byte, i int) int {
	for i < len(data) && isSpace(data[i]) {
		i++
	}
	return i
}

// valueEnd returns the end of the valid JSON value starting at i.
func valueEnd(data []byte, i int) int {
	switch data[i] {
	case '"':
		return stringEnd(data, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(data); j++ {
			switch data[j] {
			case '"':
				j = stringEnd(data, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return len(data)
	default: // number, true, false, null
		j := i
		for j < len(data) && !isSpace(data[j]) && data[j] != ',' && data[j] != ']' && data[j] != '}' {
			j++
		}
		return j
	}
}

// stringEnd returns the end of the string whose opening quote is at i.
func stringEnd(data []byte, i int) int {
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(data)
}
