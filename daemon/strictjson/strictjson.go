// Package strictjson decodes JSON (and YAML turned JSON) into Go types
// strictly: an unknown field or a wrong type is an error that names the
// field's path ("spec.ingress[0].fromm"), because encoding/json only says
// `unknown field "fromm"`, which is no help in a 300-line policy.
package strictjson

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// FieldError is a decode error tied to one field. Field is empty when the
// document as a whole is wrong (not JSON, or not an object).
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Err.Error()
	}
	return e.Field + ": " + e.Err.Error()
}

func (e *FieldError) Unwrap() error { return e.Err }

// Decode decodes js into the value into points to. Unknown fields and
// values of the wrong type are *FieldError naming the field.
func Decode(js []byte, into any) error {
	var raw any
	if err := json.Unmarshal(js, &raw); err != nil {
		return &FieldError{Err: fmt.Errorf("invalid JSON: %w", err)}
	}
	if field := UnknownField(raw, into); field != "" {
		return &FieldError{Field: field, Err: errors.New("unknown field")}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return &FieldError{Field: te.Field, Err: fmt.Errorf("wrong type: got %s, want %s", te.Value, te.Type)}
		}
		return &FieldError{Err: err}
	}
	return nil
}

// UnknownField walks a decoded JSON value alongside the Go type it is meant
// for and returns the path of the first field the type does not have, or
// "".
func UnknownField(raw any, into any) string {
	return walkUnknown(raw, reflect.TypeOf(into), "")
}

func walkUnknown(raw any, t reflect.Type, path string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	// Types that decode themselves (IntOrString, Quantity, Time) are leaves.
	if t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler) ||
		t.Implements(textUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler) {
		return ""
	}
	switch v := raw.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Map:
			for k, val := range v {
				if f := walkUnknown(val, t.Elem(), join(path, k)); f != "" {
					return f
				}
			}
		case reflect.Struct:
			fields := jsonFields(t)
			for k, val := range v {
				ft, ok := fields[k]
				if !ok {
					return join(path, k)
				}
				if f := walkUnknown(val, ft, join(path, k)); f != "" {
					return f
				}
			}
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for i, val := range v {
				if f := walkUnknown(val, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); f != "" {
					return f
				}
			}
		}
	}
	return ""
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// jsonFields maps JSON names to field types, following inline and
// embedded structs as encoding/json does.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if (f.Anonymous && name == "") || strings.Contains(opts, "inline") {
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					out[k] = v
				}
				continue
			}
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
