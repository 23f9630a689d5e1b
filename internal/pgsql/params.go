package pgsql

import (
	"fmt"
	"strings"
)

// Named is a statement whose :name parameters are made positional.
type Named struct {
	// SQL has each :name replaced by $n::type, n counting the distinct
	// names in the order they first appear.
	SQL string
	// Params are those names, in that order.
	Params []string
}

// Bind makes the :name parameters of toks positional, each cast to the
// type typeOf gives it; typeOf fails for a name that is not a parameter.
// A positional parameter ($1) in toks is refused: parameters are named.
func Bind(toks []Token, typeOf func(name string) (string, error)) (Named, error) {
	return BindFrom(toks, 1, typeOf)
}

// BindFrom is Bind with the first parameter numbered first.
func BindFrom(toks []Token, first int, typeOf func(name string) (string, error)) (Named, error) {
	var b strings.Builder
	var out Named
	index := map[string]int{}
	for i, t := range toks {
		switch t.Kind {
		case Positional:
			return Named{}, fmt.Errorf("positional parameter %s: name parameters instead, as :name", t.Text)
		case Param:
			name := t.Name()
			typ, err := typeOf(name)
			if err != nil {
				return Named{}, err
			}
			n, seen := index[name]
			if !seen {
				out.Params = append(out.Params, name)
				n = first + len(out.Params) - 1
				index[name] = n
			}
			// Glued to a word, $n would read as part of it: keep them apart.
			if i > 0 && endsInWord(toks[i-1].Text) {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "$%d::%s", n, typ)
			if i+1 < len(toks) && startsAsWord(toks[i+1].Text) {
				b.WriteByte(' ')
			}
		default:
			b.WriteString(t.Text)
		}
	}
	out.SQL = b.String()
	return out, nil
}

// Params lists the distinct :name parameters of toks, in order.
func Params(toks []Token) []string {
	var names []string
	seen := map[string]bool{}
	for _, t := range toks {
		if t.Kind == Param && !seen[t.Name()] {
			seen[t.Name()] = true
			names = append(names, t.Name())
		}
	}
	return names
}

func endsInWord(s string) bool   { return s != "" && isIdentPart(s[len(s)-1]) }
func startsAsWord(s string) bool { return s != "" && isIdentPart(s[0]) }
