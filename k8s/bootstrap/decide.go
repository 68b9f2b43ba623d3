package bootstrap

import (
	"fmt"
	"strings"

	"github.com/walferry/walferry/internal/humanize"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
)

// DefaultAutoMaxWALRatio is --from auto's threshold: the repository is
// used when the WAL written since its newest usable backup is at most this
// fraction of the database's size. Replaying a byte of WAL costs about as
// much as copying a byte of data files, so up to half the database in WAL
// the repository is about as fast as a fresh copy, and it spares the
// source (and the network between sites) the whole read.
const DefaultAutoMaxWALRatio = 0.5

// Sources of a standby's data.
const (
	FromAuto    = "auto"
	FromRepo    = "repo"
	FromPrimary = "primary"
)

// Decision is --from auto's choice and the numbers behind it.
type Decision struct {
	From   string `json:"from"`
	Reason string `json:"reason"`
	// Backup is the newest usable backup, its size (DataBytes) and end.
	Backup        string `json:"backup,omitempty"`
	DatabaseBytes int64  `json:"database_bytes,omitempty"`
	BackupStopLSN pg.LSN `json:"backup_stop_lsn,omitempty"`
	// SourceLSN is the source's current WAL position; WALSinceBytes the
	// WAL written since the backup ended, Ratio its share of the database.
	SourceLSN     pg.LSN  `json:"source_lsn,omitempty"`
	WALSinceBytes int64   `json:"wal_since_bytes,omitempty"`
	Ratio         float64 `json:"ratio,omitempty"`
	MaxRatio      float64 `json:"max_ratio"`
}

// candidate is what the auto rule needs to know about the newest usable
// backup; nil when there is none.
type candidate struct {
	ID       string
	Bytes    int64
	StopLSN  pg.LSN
	Timeline pg.TimeLineID
}

// decide applies the auto rule. source is nil when no source is
// configured or reachable.
func decide(b *candidate, source *replication.System, maxRatio float64) (Decision, error) {
	d := Decision{MaxRatio: maxRatio}
	if b != nil {
		d.Backup, d.DatabaseBytes, d.BackupStopLSN = b.ID, b.Bytes, b.StopLSN
	}
	switch {
	case b == nil && source == nil:
		return d, failure.New(failure.NoBackup,
			"bootstrap: no usable backup in the repository and no source to copy from; take a backup (walferry backup-push) or give --source-conn")
	case b == nil:
		d.From, d.Reason = FromPrimary, "no usable backup in the repository"
		return d, nil
	case source == nil:
		d.From, d.Reason = FromRepo, "no source configured or reachable"
		return d, nil
	}
	d.SourceLSN = source.XLogPos
	if source.XLogPos > b.StopLSN {
		d.WALSinceBytes = int64(source.XLogPos - b.StopLSN)
	}
	if b.Bytes > 0 {
		d.Ratio = float64(d.WALSinceBytes) / float64(b.Bytes)
	}
	if b.Bytes > 0 && d.Ratio <= maxRatio {
		d.From = FromRepo
		d.Reason = fmt.Sprintf("WAL since backup %s (%s) is %.2f of the database (%s), within --auto-max-wal-ratio %.2f",
			b.ID, humanize.Bytes(d.WALSinceBytes), d.Ratio, humanize.Bytes(b.Bytes), maxRatio)
	} else {
		d.From = FromPrimary
		d.Reason = fmt.Sprintf("WAL since backup %s (%s) is %.2f of the database (%s), above --auto-max-wal-ratio %.2f: a fresh copy is cheaper",
			b.ID, humanize.Bytes(d.WALSinceBytes), d.Ratio, humanize.Bytes(b.Bytes), maxRatio)
	}
	return d, nil
}

// DefaultSlotName is the slot a standby on host uses unless told:
// "walferry_" and the host name in the characters slot names allow
// (pod "site-b-0" -> walferry_site_b_0), cut to PostgreSQL's 63 bytes.
func DefaultSlotName(host string) string {
	var b strings.Builder
	b.WriteString("walferry_")
	for _, r := range strings.ToLower(host) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}
