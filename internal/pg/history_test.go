package pg

import (
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseHistoryRealFile(t *testing.T) {
	// testdata/00000002.history was written by PostgreSQL 15 at promotion.
	f, err := os.Open("testdata/00000002.history")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := ParseHistory(f)
	if err != nil {
		t.Fatal(err)
	}
	want := []HistoryEntry{{TLI: 1, SwitchLSN: 0xF10B70, Reason: "no recovery target specified"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if err := ValidateHistory(got, 2); err != nil {
		t.Error(err)
	}
}

func TestParseHistory(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []HistoryEntry
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "comments and blanks", in: "# comment\n\n   \n\t# indented comment\n", want: nil},
		{
			name: "several timelines",
			in: "1\t0/3000000\tno recovery target specified\n" +
				"\n" +
				"2\t0/5000028\tat restore point \"before upgrade\"\n" +
				"# a comment between\n" +
				"4\t1A/FF000000\tbefore 2026-01-01 00:00:00+00\n",
			want: []HistoryEntry{
				{TLI: 1, SwitchLSN: 0x3000000, Reason: "no recovery target specified"},
				{TLI: 2, SwitchLSN: 0x5000028, Reason: `at restore point "before upgrade"`},
				{TLI: 4, SwitchLSN: 0x1AFF000000, Reason: "before 2026-01-01 00:00:00+00"},
			},
		},
		{name: "no reason", in: "1\t0/3000000\n", want: []HistoryEntry{{TLI: 1, SwitchLSN: 0x3000000}}},
		{name: "spaces instead of tabs", in: "  1   0/3000000   reason here  \n", want: []HistoryEntry{{TLI: 1, SwitchLSN: 0x3000000, Reason: "reason here"}}},
		{name: "CRLF", in: "1\t0/3000000\tr\r\n", want: []HistoryEntry{{TLI: 1, SwitchLSN: 0x3000000, Reason: "r"}}},
		{name: "no final newline", in: "1\t0/3000000\tr", want: []HistoryEntry{{TLI: 1, SwitchLSN: 0x3000000, Reason: "r"}}},
		{name: "not numeric", in: "one\t0/3000000\tr\n", wantErr: "numeric timeline ID"},
		{name: "hex timeline", in: "A\t0/3000000\tr\n", wantErr: "numeric timeline ID"},
		{name: "missing LSN", in: "1\n", wantErr: "switchpoint"},
		{name: "bad LSN", in: "1\t0-3000000\tr\n", wantErr: "switchpoint"},
		{name: "timeline zero", in: "0\t0/3000000\tr\n", wantErr: "timeline 0"},
		{name: "timeline too large", in: "4294967296\t0/3000000\tr\n", wantErr: "numeric timeline ID"},
		{name: "decreasing", in: "2\t0/3000000\tr\n1\t0/4000000\tr\n", wantErr: "increasing sequence"},
		{name: "repeated", in: "2\t0/3000000\tr\n2\t0/4000000\tr\n", wantErr: "increasing sequence"},
		{name: "huge line", in: strings.Repeat("x", maxHistoryLine+10), wantErr: "not a history file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHistory(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFormatHistoryRoundTrip(t *testing.T) {
	entries := []HistoryEntry{
		{TLI: 1, SwitchLSN: 0xF10B70, Reason: "no recovery target specified"},
		{TLI: 3, SwitchLSN: 0x1AFF000000, Reason: "at restore point \"x\""},
	}
	var buf bytes.Buffer
	if err := FormatHistory(&buf, entries[:1]); err != nil {
		t.Fatal(err)
	}
	real, err := os.ReadFile("testdata/00000002.history")
	if err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != string(real) {
		t.Errorf("FormatHistory = %q, PostgreSQL wrote %q", got, real)
	}
	buf.Reset()
	if err := FormatHistory(&buf, entries); err != nil {
		t.Fatal(err)
	}
	back, err := ParseHistory(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, entries) {
		t.Errorf("round trip: got %+v, want %+v", back, entries)
	}
}

func TestTimelineQueries(t *testing.T) {
	h := []HistoryEntry{
		{TLI: 1, SwitchLSN: 0x3000000},
		{TLI: 2, SwitchLSN: 0x5000000},
	}
	tests := []struct {
		lsn  LSN
		want TimeLineID
	}{
		{0, 1}, {0x2FFFFFF, 1}, {0x3000000, 2}, {0x4FFFFFF, 2}, {0x5000000, 3}, {0xFFFFFFFFFF, 3},
	}
	for _, tt := range tests {
		if got := TimelineAt(h, 3, tt.lsn); got != tt.want {
			t.Errorf("TimelineAt(%v) = %d, want %d", tt.lsn, got, tt.want)
		}
	}
	if lsn, ok := SwitchPoint(h, 2); !ok || lsn != 0x5000000 {
		t.Errorf("SwitchPoint(2) = %v, %v", lsn, ok)
	}
	if _, ok := SwitchPoint(h, 3); ok {
		t.Error("SwitchPoint of the current timeline reported found")
	}
	if err := ValidateHistory(h, 3); err != nil {
		t.Error(err)
	}
	if err := ValidateHistory(h, 2); err == nil {
		t.Error("ValidateHistory accepted an ancestor with the child's own ID")
	}
	if err := ValidateHistory(nil, 1); err != nil {
		t.Error(err)
	}
}
