package progress

import (
	"bytes"
	"strings"
	"testing"
)

// The phases of a restore: a bar per phase with bytes, nothing for a
// phase with nothing to do (it once printed "verify 0 B / 0 B"), the bar of
// a phase cut short left as it stood.
func TestBarPhases(t *testing.T) {
	var out bytes.Buffer
	b := &Bar{w: &out, label: "restore"}
	b.Bytes("fetch", 0, 3<<20)
	b.Bytes("fetch", 3<<20, 3<<20)
	b.Bytes("verify", 0, 0)
	b.Bytes("settle", 1<<20, 4<<20)
	b.Finish()
	s := out.String()
	for _, want := range []string{"restore fetch", "100%", "restore settle", "25%", "MB"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%q", want, s)
		}
	}
	if strings.Contains(s, "verify") {
		t.Errorf("a phase with nothing to do was drawn:\n%q", s)
	}
	if !strings.HasSuffix(s, "\n") {
		t.Errorf("the last bar's line is not ended:\n%q", s)
	}
	var nilBar *Bar
	nilBar.Bytes("fetch", 1, 2) // a nil Bar draws nothing and does not panic
	nilBar.Message("x", "y")
	nilBar.Finish()
	if New(&out, "x") != nil {
		t.Error("a Bar on a buffer: want nil off a terminal")
	}
}
