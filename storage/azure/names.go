package azure

import "strings"

// Blob names.
//
// Azure Blob Storage drops dots at the end of a path segment: a blob created
// as "a/name." is stored, listed and read back as "a/name" (the service
// canonicalises the request path; the REST documentation says "no path
// segments should end with a dot"). Azurite keeps the dot, so tests against
// the emulator alone would not notice. To store every key faithfully on
// both, a dot that ends a segment is written as "%2E", and so that the
// mapping stays reversible every "%" is written as "%25". Keys without such
// dots or percent signs, which is every key walferry itself writes, are
// stored under their own name.
//
// The mapping preserves prefixes and, with one exception, order: a key with
// a segment ending in "." (stored as "%2E") lists before a sibling that
// continues that segment after the dot with one of the characters
// ` !"#$%&'()*+,-` although it sorts after it ("a./b" lists before "a.-").

// encodeName maps a key (with the store's prefix) to its blob name.
func encodeName(key string) string {
	if !strings.ContainsRune(key, '%') && !strings.HasSuffix(key, ".") && !strings.Contains(key, "./") {
		return key
	}
	var b strings.Builder
	b.Grow(len(key) + 8)
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case c == '%':
			b.WriteString("%25")
		case c == '.' && (i+1 == len(key) || key[i+1] == '/'):
			b.WriteString("%2E")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// decodeName inverts encodeName. It accepts any name, so that blobs written
// by other tools (with a bare "%") still list under some key.
func decodeName(name string) string {
	if !strings.ContainsRune(name, '%') {
		return name
	}
	var b strings.Builder
	b.Grow(len(name))
	for i := 0; i < len(name); i++ {
		if name[i] == '%' && i+2 < len(name) {
			switch name[i+1 : i+3] {
			case "25":
				b.WriteByte('%')
				i += 2
				continue
			case "2E":
				b.WriteByte('.')
				i += 2
				continue
			}
		}
		b.WriteByte(name[i])
	}
	return b.String()
}

// listPrefix returns the blob name prefix to list for the key prefix p: the
// encoding of p without its trailing dots, whose encoding depends on what
// follows them. List filters the decoded names by p itself.
func listPrefix(p string) string {
	return encodeName(strings.TrimRight(p, "."))
}
