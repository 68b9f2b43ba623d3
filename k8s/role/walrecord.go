package role

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
)

// WAL page headers (access/xlog_internal.h): every WAL page starts with a
// short header, the first page of a segment with a long one; both are
// MAXALIGNed.
const (
	shortPageHeader = 24
	longPageHeader  = 40
)

// recordEnd returns the end of the WAL record that starts at lsn on
// timeline tli, read from the segment in walDir: the position a standby
// reports as replayed (pg_last_wal_replay_lsn) once it applied the record.
// The record's length is its header's first field, xl_tot_len, and the
// next record starts MAXALIGNed after it (which is what PostgreSQL reports
// as the end: a standby that replayed the record says it replayed up to
// there, and a timeline forks there); a record longer than what is left of
// its page continues after the next page's header.
func recordEnd(walDir string, tli pg.TimeLineID, lsn pg.LSN, segSize pg.WALSegmentSize, pageSize uint32) (pg.LSN, error) {
	name := pg.SegmentNameOf(tli, lsn, segSize)
	f, err := os.Open(filepath.Join(walDir, name))
	if err != nil {
		return 0, failure.Wrap(failure.Postgres, fmt.Errorf("read the record at %s: %w", lsn, err))
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.ReadAt(b[:], int64(uint64(lsn)%uint64(segSize.Bytes()))); err != nil && err != io.EOF {
		return 0, failure.Wrap(failure.Postgres, fmt.Errorf("read the record at %s in %s: %w", lsn, name, err))
	}
	total := uint64(binary.LittleEndian.Uint32(b[:]))
	if total < 24 {
		return 0, failure.Wrap(failure.Postgres, fmt.Errorf("no WAL record at %s in %s (length %d)", lsn, name, total))
	}
	return advance(lsn, (total+7)&^7, uint64(segSize.Bytes()), uint64(pageSize)), nil
}

// advance returns where n bytes of record data starting at pos end,
// skipping the page headers in between.
func advance(pos pg.LSN, n, segBytes, pageSize uint64) pg.LSN {
	p := uint64(pos)
	for {
		pageEnd := (p/pageSize + 1) * pageSize
		if n <= pageEnd-p {
			return pg.LSN(p + n)
		}
		n -= pageEnd - p
		p = pageEnd + shortPageHeader
		if pageEnd%segBytes == 0 {
			p = pageEnd + longPageHeader
		}
	}
}
