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
		{"inside a page", 0x1000028, 114, 0x100009A},
		{"to the page's end", 8192 - 100, 100, 8192},
		{"over a page header", 8192 - 100, 150, 8192 + 24 + 50},
		{"over a segment's first page", seg - 10, 30, seg + 40 + 20},
		{"over two pages", 8192 - 8, 8 + 8192 - 24 + 1, 2*8192 + 24 + 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := advance(tt.pos, tt.n, seg, page); got != tt.want {
				t.Errorf("advance(%s, %d) = %s, want %s", tt.pos, tt.n, got, tt.want)
			}
		})
	}
}
