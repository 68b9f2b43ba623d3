package pg

import (
	"math"
	"testing"
)

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in      string
		want    LSN
		wantErr bool
	}{
		{in: "0/0", want: 0},
		{in: "16/B374D848", want: 0x16B374D848},
		{in: "16/b374d848", want: 0x16B374D848},
		{in: "0/3000028", want: 0x3000028},
		{in: "00000000/00000001", want: 1},
		{in: "FFFFFFFF/FFFFFFFF", want: math.MaxUint64},
		{in: "", wantErr: true},
		{in: "/", wantErr: true},
		{in: "0/", wantErr: true},
		{in: "/0", wantErr: true},
		{in: "0", wantErr: true},
		{in: "123456789/0", wantErr: true}, // 9 digits
		{in: "0/123456789", wantErr: true},
		{in: "0/0 ", wantErr: true},
		{in: " 0/0", wantErr: true},
		{in: "0x1/0", wantErr: true},
		{in: "-1/0", wantErr: true},
		{in: "+1/0", wantErr: true},
		{in: "1/2/3", wantErr: true},
		{in: "G/0", wantErr: true},
		{in: "0/0\n", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseLSN(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseLSN(%q): err = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseLSN(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestLSNString(t *testing.T) {
	tests := []struct {
		lsn  LSN
		want string
	}{
		{0, "0/0"},
		{0x3000028, "0/3000028"},
		{0x16B374D848, "16/B374D848"},
		{math.MaxUint64, "FFFFFFFF/FFFFFFFF"},
		{1 << 32, "1/0"},
	}
	for _, tt := range tests {
		if got := tt.lsn.String(); got != tt.want {
			t.Errorf("LSN(%#x).String() = %q, want %q", uint64(tt.lsn), got, tt.want)
		}
		b, err := tt.lsn.MarshalText()
		if err != nil || string(b) != tt.want {
			t.Errorf("MarshalText = %q, %v; want %q", b, err, tt.want)
		}
		var back LSN
		if err := back.UnmarshalText(b); err != nil || back != tt.lsn {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", b, back, err, tt.lsn)
		}
	}
}

func TestLSNArithmetic(t *testing.T) {
	if got, ok := LSN(10).Add(5); got != 15 || !ok {
		t.Errorf("Add: got %v, %v", got, ok)
	}
	if got, ok := LSN(math.MaxUint64 - 1).Add(2); got != math.MaxUint64 || ok {
		t.Errorf("Add overflow: got %v, %v; want max, false", got, ok)
	}
	if got, ok := LSN(10).Sub(4); got != 6 || !ok {
		t.Errorf("Sub: got %v, %v", got, ok)
	}
	if got, ok := LSN(3).Sub(4); got != InvalidLSN || ok {
		t.Errorf("Sub underflow: got %v, %v; want 0, false", got, ok)
	}
	diffs := []struct {
		a, b LSN
		want int64
	}{
		{0x3000028, 0x3000000, 0x28},
		{0x3000000, 0x3000028, -0x28},
		{5, 5, 0},
		{math.MaxUint64, 0, math.MaxInt64},
		{0, math.MaxUint64, math.MinInt64},
	}
	for _, d := range diffs {
		if got := d.a.Diff(d.b); got != d.want {
			t.Errorf("%v.Diff(%v) = %d, want %d", d.a, d.b, got, d.want)
		}
	}
	if LSN(1).Compare(2) != -1 || LSN(2).Compare(1) != 1 || LSN(2).Compare(2) != 0 {
		t.Error("Compare is not ordering")
	}
	if InvalidLSN.IsValid() || !LSN(1).IsValid() {
		t.Error("IsValid")
	}
}
