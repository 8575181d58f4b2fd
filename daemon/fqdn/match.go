// Package fqdn matches DNS names against Cilium's name selectors
// (matchName, matchPattern) and keeps what the DNS proxy learned: which
// addresses names resolved to, for which local identity, until when.
package fqdn

import (
	"fmt"
	"regexp"
	"strings"
)

// Selector is a compiled matchName or matchPattern.
type Selector struct {
	// Source is the selector as written, for listings ("*.microsoft.com").
	Source string
	all    bool
	name   string         // matchName, normalized
	re     *regexp.Regexp // matchPattern
}

// Normalize lowercases a name and ends it with a dot, so "WWW.Example.com"
// and "www.example.com." are one name.
func Normalize(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// labelChars is what `*` may stand for within one label, as in Cilium.
const labelChars = `[-a-z0-9_]*`

// Name compiles a matchName: the name itself, case-insensitive, trailing
// dot optional.
func Name(name string) Selector {
	return Selector{Source: name, name: Normalize(name)}
}

// Pattern compiles a matchPattern with Cilium's semantics: a bare `*`
// matches every name; `*` elsewhere matches within one label only
// ("*.example.com" matches "www.example.com", not "example.com" or
// "a.b.example.com"); a leading `**.` matches one or more labels.
func Pattern(pattern string) (Selector, error) {
	p := Normalize(strings.TrimSpace(pattern))
	if p == "*." {
		return Selector{Source: pattern, all: true}, nil
	}
	var b strings.Builder
	b.WriteString("^")
	if rest, ok := strings.CutPrefix(p, "**."); ok {
		b.WriteString(`(` + labelChars + `\.)+`)
		p = rest
	}
	for _, r := range p {
		switch {
		case r == '*':
			b.WriteString(labelChars)
		case r == '.':
			b.WriteString(`\.`)
		case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
			b.WriteRune(r)
		default:
			return Selector{}, fmt.Errorf("pattern %q: character %q is not allowed", pattern, r)
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return Selector{}, fmt.Errorf("pattern %q: %w", pattern, err)
	}
	return Selector{Source: pattern, re: re}, nil
}

// Matches reports whether the selector matches name (any case, with or
// without the trailing dot).
func (s Selector) Matches(name string) bool {
	name = Normalize(name)
	switch {
	case s.all:
		return true
	case s.re != nil:
		return s.re.MatchString(name)
	}
	return s.name == name
}

// Compile compiles a matchName or a matchPattern, whichever is set.
func Compile(matchName, matchPattern string) (Selector, error) {
	if matchName != "" {
		return Name(matchName), nil
	}
	return Pattern(matchPattern)
}
