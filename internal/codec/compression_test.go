package codec

import "testing"

func TestParseCompression(t *testing.T) {
	tests := []struct {
		in    string
		want  Compression
		level int
		ok    bool
	}{
		{"none", None, 0, true},
		{"lz4", LZ4, 0, true},
		{"zstd", Zstd, 0, true},
		{"gzip", Gzip, 0, true},
		{"zstd:19", Zstd, 19, true},
		{"zstd:1", Zstd, 1, true},
		{"zstd:22", Zstd, 22, true},
		{"gzip:9", Gzip, 9, true},
		{"lz4:9", LZ4, 9, true},
		{" ZSTD:3 ", Zstd, 3, true},
		{"Gzip", Gzip, 0, true},
		{"", 0, 0, false},
		{"zstd:", 0, 0, false},
		{"zstd:0", 0, 0, false},
		{"zstd:23", 0, 0, false},
		{"zstd:-1", 0, 0, false},
		{"zstd:x", 0, 0, false},
		{"zstd:1:2", 0, 0, false},
		{"gzip:10", 0, 0, false},
		{"lz4:10", 0, 0, false},
		{"none:1", 0, 0, false},
		{"brotli", 0, 0, false},
		{"lz4 :1", 0, 0, false},
	}
	for _, tt := range tests {
		c, level, err := ParseCompression(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseCompression(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if tt.ok && (c != tt.want || level != tt.level) {
			t.Errorf("ParseCompression(%q) = %v, %d; want %v, %d", tt.in, c, level, tt.want, tt.level)
		}
	}
}

func TestCompressionString(t *testing.T) {
	for c, want := range map[Compression]string{None: "none", LZ4: "lz4", Zstd: "zstd", Gzip: "gzip", 9: "compression(9)"} {
		if got := c.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", c, got, want)
		}
	}
}
