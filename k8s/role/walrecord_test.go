package role

import (
	"testing"

	"github.com/walferry/walferry/internal/pg"
)

func TestAdvance(t *testing.T) {
	const seg, page = 16 << 20, 8192
	for _, tt := range []struct {
		name string
		pos  pg.LSN
		n    uint64
		want pg.LSN
	}{
		{"inside a page", 0x1000028, 120, 0x10000A0},
		{"to the page's end", 8192 - 96, 96, 8192},
		{"over a page header", 8192 - 96, 152, 8192 + 24 + 56},
		{"over a segment's first page", seg - 16, 32, seg + 40 + 16},
		{"over two pages", 8192 - 8, 8 + 8192 - 24 + 8, 2*8192 + 24 + 8},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := advance(tt.pos, tt.n, seg, page); got != tt.want {
				t.Errorf("advance(%s, %d) = %s, want %s", tt.pos, tt.n, got, tt.want)
			}
		})
	}
}
