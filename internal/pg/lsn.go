package pg

import (
	"fmt"
	"math"
	"strconv"
)

// LSN is a PostgreSQL log sequence number (XLogRecPtr): a byte position in the
// write-ahead log stream. Its text form is two hexadecimal numbers of at most
// eight digits separated by a slash, e.g. "16/B374D848".
type LSN uint64

// InvalidLSN is the zero LSN, which PostgreSQL uses for "no position".
const InvalidLSN LSN = 0

// maxLSNComponent is the most hex digits either half of an LSN may have.
const maxLSNComponent = 8

// ParseLSN parses the text form of an LSN exactly as PostgreSQL's pg_lsn input
// function does: 1 to 8 hex digits (either case), a slash, 1 to 8 hex digits,
// and nothing else (no sign, no spaces, no 0x prefix).
func ParseLSN(s string) (LSN, error) {
	hi, rest, ok := cutHex(s)
	if !ok || len(rest) == 0 || rest[0] != '/' {
		return 0, fmt.Errorf("pg: invalid LSN %q: want two hex numbers separated by '/', e.g. 16/B374D848", s)
	}
	lo, rest, ok := cutHex(rest[1:])
	if !ok || rest != "" {
		return 0, fmt.Errorf("pg: invalid LSN %q: want two hex numbers separated by '/', e.g. 16/B374D848", s)
	}
	return LSN(hi<<32 | lo), nil
}

// cutHex consumes 1..8 leading hex digits of s and returns their value and
// the remainder.
func cutHex(s string) (v uint64, rest string, ok bool) {
	n := 0
	for n < len(s) && isHexDigit(s[n]) {
		n++
	}
	if n < 1 || n > maxLSNComponent {
		return 0, s, false
	}
	v, err := strconv.ParseUint(s[:n], 16, 32)
	if err != nil {
		return 0, s, false
	}
	return v, s[n:], true
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isUpperHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'F'
}

// String formats l the way PostgreSQL's pg_lsn output does: "%X/%X", upper
// case, without zero padding (e.g. "0/3000028").
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// MarshalText implements encoding.TextMarshaler (JSON, YAML, slog).
func (l LSN) MarshalText() ([]byte, error) {
	return []byte(l.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// IsValid reports whether l is not InvalidLSN.
func (l LSN) IsValid() bool { return l != InvalidLSN }

// Add returns l advanced by n bytes. It reports false, and returns the
// largest LSN, when the result would not fit in 64 bits.
func (l LSN) Add(n uint64) (LSN, bool) {
	if n > math.MaxUint64-uint64(l) {
		return LSN(math.MaxUint64), false
	}
	return l + LSN(n), true
}

// Sub returns l moved back by n bytes. It reports false, and returns
// InvalidLSN, when n is larger than l.
func (l LSN) Sub(n uint64) (LSN, bool) {
	if n > uint64(l) {
		return InvalidLSN, false
	}
	return l - LSN(n), true
}

// Diff returns the number of bytes from o to l (l - o), like
// pg_wal_lsn_diff(l, o). The result saturates at the int64 range, which no
// real WAL distance comes near.
func (l LSN) Diff(o LSN) int64 {
	if l >= o {
		d := uint64(l - o)
		if d > math.MaxInt64 {
			return math.MaxInt64
		}
		return int64(d)
	}
	d := uint64(o - l)
	if d > math.MaxInt64 {
		return math.MinInt64
	}
	return -int64(d)
}

// Compare returns -1, 0 or +1 as l is before, at or after o.
func (l LSN) Compare(o LSN) int {
	switch {
	case l < o:
		return -1
	case l > o:
		return 1
	}
	return 0
}
