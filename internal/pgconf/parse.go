package pgconf

import (
	"strings"
)

// Quote quotes s as a postgresql.conf string value: single quotes, inner
// single quotes doubled, backslashes doubled (the parser reads backslash
// escapes inside quoted values), newlines and carriage returns escaped
// (a quoted value cannot span lines).
func Quote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `''`)
	s = strings.ReplaceAll(s, "\n", `\n`)
	s = strings.ReplaceAll(s, "\r", `\r`)
	return "'" + s + "'"
}

// parseLine reads one line of a configuration file as PostgreSQL's
// scanner does: a name, an optional '=', a value (quoted, or a run of
// characters up to blank or '#'), an optional comment. key is the
// lower-case name, "" for blank and comment lines; ok is false when the
// line is not a well-formed setting (an unterminated quote, text after
// the value), key then still names what the line begins with.
func parseLine(s string) (key, value string, ok bool) {
	i := skipBlank(s, 0)
	j := i
	for j < len(s) && isNameByte(s[j], j == i) {
		j++
	}
	if j == i {
		return "", "", false
	}
	name := strings.ToLower(s[i:j])
	if i = skipBlank(s, j); i >= len(s) || s[i] == '#' { // a name alone
		return "", "", false
	}
	if s[i] == '=' {
		if i = skipBlank(s, i+1); i >= len(s) || s[i] == '#' {
			return name, "", false
		}
	}
	if s[i] == '\'' {
		value, i, ok = unquote(s, i)
		if !ok {
			return name, "", false
		}
	} else {
		j = i
		for j < len(s) && !isBlank(s[j]) && s[j] != '#' && s[j] != '\'' {
			j++
		}
		value, i = s[i:j], j
	}
	if i = skipBlank(s, i); i < len(s) && s[i] != '#' {
		return name, "", false
	}
	return name, value, true
}

// unquote reads the quoted value starting at s[i] (a quote) and returns
// it unescaped and the index after its closing quote; ok is false when
// the quote is not closed.
func unquote(s string, i int) (value string, end int, ok bool) {
	var b strings.Builder
	for j := i + 1; j < len(s); j++ {
		c := s[j]
		switch {
		case c == '\'' && j+1 < len(s) && s[j+1] == '\'':
			b.WriteByte('\'')
			j++
		case c == '\'':
			return b.String(), j + 1, true
		case c == '\\' && j+1 < len(s):
			j++
			switch e := s[j]; e {
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case '0', '1', '2', '3', '4', '5', '6', '7':
				n := int(e - '0')
				for k := 0; k < 2 && j+1 < len(s) && s[j+1] >= '0' && s[j+1] <= '7'; k++ {
					j++
					n = n*8 + int(s[j]-'0')
				}
				b.WriteByte(byte(n))
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, false
}

// isNameByte reports whether c may be in a parameter name (first: whether
// it may start one): letters, digits, '_', '.' (custom options) and the
// bytes of non-ASCII letters.
func isNameByte(c byte, first bool) bool {
	switch {
	case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
		return true
	case c >= '0' && c <= '9' || c == '.':
		return !first
	}
	return false
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v' }

func skipBlank(s string, i int) int {
	for i < len(s) && isBlank(s[i]) {
		i++
	}
	return i
}

// splitLines splits a file's content into lines, without the final
// newline's empty line.
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}
