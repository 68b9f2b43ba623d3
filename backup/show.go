package backup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// Summary is one row of backup-list: what a DBA picks a backup by.
type Summary struct {
	ID          string        `json:"id"`
	Type        Type          `json:"type"`
	Parent      string        `json:"parent,omitempty"`
	StartTime   time.Time     `json:"start_time"`
	StopTime    time.Time     `json:"stop_time"`
	StartLSN    pg.LSN        `json:"start_lsn"`
	StopLSN     pg.LSN        `json:"stop_lsn"`
	Timeline    pg.TimeLineID `json:"timeline"`
	DataBytes   int64         `json:"data_bytes"`
	StoredBytes int64         `json:"stored_bytes"`
	PGVersion   string        `json:"pg_version"`
	StartWAL    string        `json:"start_wal"`
	StopWAL     string        `json:"stop_wal"`
}

// Summarize returns m's list row.
func (m *Manifest) Summarize() Summary {
	return Summary{
		ID: m.ID, Type: m.Type, Parent: m.Parent,
		StartTime: m.StartTime, StopTime: m.StopTime, StartLSN: m.StartLSN, StopLSN: m.StopLSN,
		Timeline: m.Timeline, DataBytes: m.Stats.DataBytes, StoredBytes: m.Stats.StoredBytes,
		PGVersion: PGVersion(m.PGVersionNum), StartWAL: m.StartWAL, StopWAL: m.StopWAL,
	}
}

// PGVersion formats server_version_num the way PostgreSQL prints its
// version: 150004 is "15.4", 90624 is "9.6.24"; 0 is "".
func PGVersion(num int) string {
	switch {
	case num <= 0:
		return ""
	case num >= 100000:
		return fmt.Sprintf("%d.%d", num/10000, num%10000)
	default:
		return fmt.Sprintf("%d.%d.%d", num/10000, num/100%100, num%100)
	}
}

// Details is everything backup-show prints about one backup.
type Details struct {
	Summary
	Label string `json:"label"`
	Mode  string `json:"mode"`
	// Chain is the backup and its ancestors through Parent, newest first,
	// ending at a full backup (or at the first missing ancestor).
	Chain []string `json:"chain"`
	// BrokenChain names the ancestor whose manifest is missing, if any:
	// such a backup cannot be restored.
	BrokenChain string       `json:"broken_chain,omitempty"`
	Tablespaces []Tablespace `json:"tablespaces,omitempty"`
	Files       int          `json:"files"`
	Dirs        int          `json:"dirs"`
	// Objects counts the objects this backup wrote; ReferencedObjects
	// every object its files need (ancestors' included).
	Objects            int         `json:"objects"`
	ReferencedObjects  int         `json:"referenced_objects"`
	DependsOn          []string    `json:"depends_on,omitempty"`
	PageChecksumErrors []PageError `json:"page_checksum_errors,omitempty"`
	DataChecksums      bool        `json:"data_checksums"`
	// NewBytes is what this backup stored itself; ReferencedBytes what it
	// takes from its ancestors (DataBytes - NewBytes).
	NewBytes        int64   `json:"new_bytes"`
	ReferencedBytes int64   `json:"referenced_bytes"`
	Duration        Seconds `json:"duration_seconds"`
	SystemID        uint64  `json:"system_identifier,string"`
	Owner           string  `json:"owner,omitempty"`
}

// Describe reads what backup-show needs about m: its chain of ancestors
// is followed through their manifests.
func Describe(ctx context.Context, r *repo.Repo, m *Manifest) (*Details, error) {
	d := &Details{
		Summary: m.Summarize(), Label: m.Label, Mode: m.Mode,
		Tablespaces: m.Tablespaces, Files: len(m.Files), Dirs: len(m.Dirs),
		Objects: len(m.Objects), ReferencedObjects: len(m.ObjectKeys()), DependsOn: m.DependsOn(),
		PageChecksumErrors: m.PageChecksumErrors, DataChecksums: m.DataChecksums,
		NewBytes: m.Stats.NewBytes, ReferencedBytes: m.Stats.DataBytes - m.Stats.NewBytes,
		Duration: m.Stats.Duration, SystemID: m.SystemID, Owner: m.Owner,
	}
	if d.ReferencedBytes < 0 {
		d.ReferencedBytes = 0
	}
	chain, broken, err := Chain(ctx, r, m)
	if err != nil {
		return nil, err
	}
	for _, c := range chain {
		d.Chain = append(d.Chain, c.ID)
	}
	d.BrokenChain = broken
	return d, nil
}

// Chain returns m and its ancestors through Parent, newest first. When an
// ancestor's manifest is missing the chain stops before it and broken
// names it; other read failures are errors. Every manifest ReadManifest
// returns names an older parent (Manifest.Check), so the chain ends.
func Chain(ctx context.Context, r *repo.Repo, m *Manifest) (chain []*Manifest, broken string, err error) {
	chain = []*Manifest{m}
	for cur := m; cur.Parent != ""; {
		p, err := ReadManifest(ctx, r, cur.Parent)
		if err != nil {
			if isNoBackup(err) {
				return chain, cur.Parent, nil
			}
			return nil, "", err
		}
		chain = append(chain, p)
		cur = p
	}
	return chain, "", nil
}

func isNoBackup(err error) bool { return errors.Is(err, ErrNoBackup) }
