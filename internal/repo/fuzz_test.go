package repo

import (
	"encoding/json"
	"testing"

	"github.com/walferry/walferry/internal/pg"
)

// FuzzLineage decodes a lineage record generation and a repository
// metadata object of any content as Lineage and Open do, and asks what
// they permit: never a panic.
func FuzzLineage(f *testing.F) {
	f.Add([]byte(`{"number":2,"timeline":2,"instance":"a","site":"s","reason":"promote","time":"2026-11-22T10:00:00Z","fenced_at":{"timeline":1,"lsn":"0/3000000"}}`),
		"000000020000000000000003")
	f.Add([]byte(`{"format_version":1,"system_identifier":"7","pg_major":15,"wal_segment_size":16777216}`), "00000002.history")
	f.Add([]byte(`{"number":1,"timeline":4294967295}`), "FFFFFFFFFFFFFFFFFFFFFFFF")
	f.Add([]byte(`null`), "../x")
	f.Fuzz(func(t *testing.T, b []byte, name string) {
		var g Generation
		if json.Unmarshal(b, &g) == nil {
			_ = g.String()
			_ = g.PermitsWAL(name, pg.WALSegmentSize{})
			_ = g.PermitsPrimary(pg.TimeLineID(g.Number))
		}
		var m Metadata
		if json.Unmarshal(b, &m) == nil {
			_, _ = m.SegmentSize()
		}
	})
}
