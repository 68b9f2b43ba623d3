package backup

import (
	"testing"
	"time"
)

// FuzzParseBefore: --before of any content parses or fails, never
// panics; an age never lands after now.
func FuzzParseBefore(f *testing.F) {
	for _, s := range []string{"14d", "2w", "36h", "2026-11-01T00:00:00Z", "2026-11-01 00:00:00", "99999999999999999999d", "-3d", "0h", "yesterday", ""} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseBefore(s, now)
		if err == nil && len(s) > 0 && (s[len(s)-1] == 'd' || s[len(s)-1] == 'w' || s[len(s)-1] == 'h') && got.After(now) {
			t.Fatalf("ParseBefore(%q) = %s, after now %s", s, got, now)
		}
	})
}

// FuzzCheckID: a backup id either has the shape newID gives or is
// refused, whatever the bytes ("..", separators, NUL).
func FuzzCheckID(f *testing.F) {
	for _, s := range []string{"20261122T101500F", "20261122T101500I", "LATEST", "../x", "20261122T101500F/../x", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckID(s, true) == nil && s != Latest && (len(s) != 16 || !validID(s)) {
			t.Fatalf("CheckID(%q) accepted it", s)
		}
	})
}
