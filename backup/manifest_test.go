package backup_test

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// cloneManifest returns a deep copy of m.
func cloneManifest(t *testing.T, m *backup.Manifest) *backup.Manifest {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := new(backup.Manifest)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDamagedManifests: every rule of the manifest format, broken once.
// ReadManifest refuses the manifest (so do list, show, delete, restore
// and backup-push --incremental, which read manifests through it), and
// verify reports the broken rule as a problem of that backup. Before the
// rules were written once, verify accepted most of these (paths outside
// the data directory, CRC counts, upper-case sums, a missing
// backup_label, another cluster's system identifier, WAL names that are
// not the LSNs', parents and ids), restore some (gaps, keys outside
// backups/), and ReadManifest all.
func TestDamagedManifests(t *testing.T) {
	f := newFixture(t)
	base := f.backup(fxSpec{start: day(1), startSeg: 2, stopSeg: 2, files: []fxFile{
		{"PG_VERSION", []byte("15\n")},
		{"base/1/1259", fxData(1, 100000)},
		{"global/pg_control", fxData(4, 8192)},
	}})
	f.wal(1, 2, 2)
	other := repo.BackupDataKey(base.ID, 1)
	tests := []struct {
		name string
		edit func(m *backup.Manifest)
		want string // in the problem's message
	}{
		// Paths.
		{"file outside the data directory", func(m *backup.Manifest) { m.Files[1].Path = "../../etc/cron.d/x" }, "outside the data directory"},
		{"absolute path", func(m *backup.Manifest) { m.Files[1].Path = "/etc/passwd" }, "outside the data directory"},
		{"path not clean", func(m *backup.Manifest) { m.Files[1].Path = "base/./1/1259" }, "is not clean"},
		{"empty path", func(m *backup.Manifest) { m.Files[0].Path = "" }, "empty path"},
		{"file listed twice", func(m *backup.Manifest) { m.Files[0].Path = "base/1/1259" }, "listed twice"},
		{"file where a directory is", func(m *backup.Manifest) { m.Files[0].Path = "base" }, "is also a directory"},
		{"file where the data directory is", func(m *backup.Manifest) { m.Files[0].Path = "." }, "names the data directory"},
		{"directory outside", func(m *backup.Manifest) { m.Dirs = append(m.Dirs, backup.Dir{Path: "base/../../x"}) }, "directory"},
		{"file at a tablespace link", func(m *backup.Manifest) {
			m.Tablespaces = []backup.Tablespace{{OID: 16390, Location: "/srv/ts"}}
			m.Files[0].Path = "pg_tblspc/16390"
		}, "is the link of tablespace 16390"},
		{"pg_wal as a file", func(m *backup.Manifest) { m.Files[0].Path = "pg_wal" }, "is also a directory"},
		// Sizes, sums, extents.
		{"negative size", func(m *backup.Manifest) { m.Files[0].Size = -3 }, "size -3"},
		{"sums missing", func(m *backup.Manifest) { m.Files[1].Sums = nil }, "0 unit checksums for 100000 bytes"},
		{"upper-case sum", func(m *backup.Manifest) { m.Files[1].Sums[0] = strings.ToUpper(m.Files[1].Sums[0]) }, "not a SHA-256"},
		{"CRC count", func(m *backup.Manifest) { m.Files[1].CRCs = []uint32{1, 2} }, "2 CRC-32C checks for 100000 bytes"},
		{"gap", func(m *backup.Manifest) { m.Files[1].Extents[0].Len -= 100 }, "bytes 99900-99999 of 100000 are in no extent"},
		{"overlap", func(m *backup.Manifest) {
			e := m.Files[1].Extents[0]
			e.Off, e.Len = 0, 10
			m.Files[1].Extents = append([]backup.Extent{e}, m.Files[1].Extents...)
			m.Files[1].Extents[1].Off, m.Files[1].Extents[1].Len = 0, 100000
		}, "inside the previous one"},
		{"empty extent", func(m *backup.Manifest) {
			m.Files[1].Extents = append(m.Files[1].Extents, backup.Extent{Off: 100000, Len: 0, Key: other})
		}, "has length 0"},
		{"negative object offset", func(m *backup.Manifest) { m.Files[1].Extents[0].At = -1 }, "negative object offset"},
		{"object offset overflows", func(m *backup.Manifest) { m.Files[1].Extents[0].At = math.MaxInt64 - 10 }, "past the largest offset"},
		{"extent outside backups/", func(m *backup.Manifest) { m.Files[1].Extents[0].Key = repo.MetadataKey }, "not a backup object"},
		{"extent key climbing out", func(m *backup.Manifest) { m.Files[1].Extents[0].Key = "backups/../" + repo.MetadataKey }, "not a backup object"},
		{"extent into a manifest", func(m *backup.Manifest) { m.Files[1].Extents[0].Key = repo.BackupManifestKey(base.ID) }, "not a backup object"},
		{"extent into a newer backup", func(m *backup.Manifest) {
			m.Files[1].Extents[0].Key = repo.BackupDataKey(fxID(day(30), true), 1)
		}, "newer"},
		{"full backup using another's objects", func(m *backup.Manifest) {
			m.ID, m.Type, m.Parent = fxID(day(20), true), backup.Full, ""
		}, "a full backup's files are all in its own objects"},
		// Objects.
		{"object of another backup", func(m *backup.Manifest) {
			m.Objects = append(m.Objects, backup.Object{Key: other, RawSize: 1})
		}, "not one of its own data objects"},
		{"object listed twice", func(m *backup.Manifest) {
			m.Objects = append(m.Objects, backup.Object{Key: repo.BackupDataKey(m.ID, 7)}, backup.Object{Key: repo.BackupDataKey(m.ID, 7)})
		}, "listed twice"},
		{"negative object size", func(m *backup.Manifest) {
			m.Objects = append(m.Objects, backup.Object{Key: repo.BackupDataKey(m.ID, 7), RawSize: -1})
		}, "negative size"},
		// The backup as a whole.
		{"format version 0", func(m *backup.Manifest) { m.FormatVersion = 0 }, "format_version 0"},
		{"unknown type", func(m *backup.Manifest) { m.Type = "differential" }, "type"},
		{"full with a parent", func(m *backup.Manifest) {
			m.ID, m.Type = fxID(day(21), true), backup.Full
			m.Files = nil
		}, "a full backup has no parent"},
		{"incremental without a parent", func(m *backup.Manifest) { m.Parent = "" }, "has no parent"},
		{"parent newer than the backup", func(m *backup.Manifest) { m.Parent = fxID(day(30), true) }, "not older"},
		{"parent not an id", func(m *backup.Manifest) { m.Parent = "../x" }, "not a backup id"},
		{"no backup_label", func(m *backup.Manifest) { m.BackupLabel = " \n" }, "backup_label"},
		{"another cluster", func(m *backup.Manifest) { m.SystemID++ }, "system identifier"},
		{"another major version", func(m *backup.Manifest) { m.PGVersionNum = 160002 }, "PostgreSQL 16.2"},
		{"timeline 0", func(m *backup.Manifest) { m.Timeline = 0 }, "timeline 0"},
		{"stop before start", func(m *backup.Manifest) { m.StopLSN = m.StartLSN - 1 }, "stop LSN"},
		{"start WAL not the start LSN's", func(m *backup.Manifest) {
			m.StartWAL = pg.SegmentName(1, 1, f.size)
		}, "start_wal"},
		{"WAL on another timeline", func(m *backup.Manifest) {
			m.StartWAL, m.StopWAL = pg.SegmentName(2, 2, f.size), pg.SegmentName(2, 2, f.size)
		}, "start_wal"},
		{"stop WAL not a segment name", func(m *backup.Manifest) { m.StopWAL = "00000001000000000000000G" }, "stop_wal"},
		{"relative tablespace", func(m *backup.Manifest) {
			m.Tablespaces = []backup.Tablespace{{OID: 16390, Location: "srv/ts"}}
		}, "not an absolute path"},
		{"tablespace listed twice", func(m *backup.Manifest) {
			m.Tablespaces = []backup.Tablespace{{OID: 16390, Location: "/srv/a"}, {OID: 16390, Location: "/srv/b"}}
		}, "tablespace 16390 is listed twice"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// An incremental on base that keeps base's files.
			m := cloneManifest(t, base)
			m.ID, m.Type, m.Parent = fxID(day(2+float64(i)/100), false), backup.Incremental, base.ID
			m.Objects = nil
			tt.edit(m)
			if err := backup.WriteManifest(f.ctx, f.r, m); err != nil {
				t.Fatal(err)
			}
			_, err := backup.ReadManifest(f.ctx, f.r, m.ID)
			var me *backup.ManifestError
			if !errors.As(err, &me) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), m.ID) {
				t.Errorf("ReadManifest: %v; want a *ManifestError naming %s and %q", err, m.ID, tt.want)
			}
			// Exit code 5 for another cluster's manifest, as restore had.
			if wrongCluster := strings.HasPrefix(tt.name, "another "); errors.Is(err, repo.ErrWrongCluster) != wrongCluster {
				t.Errorf("ReadManifest: %v; ErrWrongCluster: %v, want %v", err, !wrongCluster, wrongCluster)
			}
			rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{ID: m.ID, Jobs: 2})
			if !errors.Is(err, backup.ErrVerify) {
				t.Fatalf("verify: %v; want ErrVerify", err)
			}
			found := false
			for _, p := range rep.Problems {
				found = found || (p.Kind == backup.ProblemLayout || p.Kind == backup.ProblemManifest) &&
					strings.HasPrefix(p.Message, "backup "+m.ID+": ") && strings.Contains(p.Message, tt.want)
			}
			if !found || rep.OK || len(rep.Backups) != 1 || rep.Backups[0].OK {
				t.Errorf("verify: no layout or manifest problem naming %q, or the backup is ok: %+v", tt.want, rep)
			}
		})
	}
	// The rules hold for what the fixture, like backup-push, writes.
	if _, err := backup.ReadManifest(f.ctx, f.r, base.ID); err != nil {
		t.Errorf("the intact manifest: %v", err)
	}
}
