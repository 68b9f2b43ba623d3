package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
	"github.com/walferry/walferry/storage"
)

// adminRepo is a fresh filesystem repository with synthetic backups
// (stored the way backup-push stores them) and WAL.
type adminRepo struct {
	t    *testing.T
	ctx  context.Context
	r    *repo.Repo
	root string
	url  string
	size pg.WALSegmentSize
}

func newAdminRepo(t *testing.T) *adminRepo {
	t.Helper()
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("WALFERRY_ENCRYPTION_PASSPHRASE", "")
	st, root := teststore.FS(t)
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	cl := repo.Cluster{SystemID: 7310012345678901234, PGMajor: 15, WALSegmentSize: 16 << 20, Source: "test"}
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: cl, Compression: "lz4", CreatedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	size, _ := pg.NewWALSegmentSize(16 << 20)
	return &adminRepo{t: t, ctx: ctx, r: r, root: root, url: "file://" + root, size: size}
}

// backup stores a backup of one file per entry in files, each in its own
// object; an incremental keeps its parent's extents for the files it
// does not list.
func (a *adminRepo) backup(start time.Time, parent *backup.Manifest, seg pg.SegNo, files map[string]string) *backup.Manifest {
	a.t.Helper()
	typ, suffix := backup.Full, "F"
	if parent != nil {
		typ, suffix = backup.Incremental, "I"
	}
	id := start.UTC().Format("20060102T150405") + suffix
	m := &backup.Manifest{FormatVersion: backup.ManifestVersion, ID: id, Type: typ, Mode: "local",
		StartTime: start, StopTime: start.Add(time.Minute), Timeline: 1,
		StartLSN: a.size.StartLSN(seg) + 0x28, StopLSN: a.size.StartLSN(seg) + 0x200,
		StartWAL: pg.SegmentName(1, seg, a.size), StopWAL: pg.SegmentName(1, seg, a.size),
		SystemID: 7310012345678901234, PGVersionNum: 150004, BackupLabel: "START WAL LOCATION: test\n",
		Tablespaces: []backup.Tablespace{{OID: 16390, Name: "fast", Location: "/ssd/pg"}}}
	if parent != nil {
		m.Parent = parent.ID
		for _, f := range parent.Files {
			if _, changed := files[f.Path]; !changed {
				m.Files = append(m.Files, f)
				m.Stats.DataBytes += f.Size
			}
		}
	}
	n := 0
	for path, content := range files {
		n++
		key := repo.BackupDataKey(id, n)
		sum, err := a.r.Put(a.ctx, key, strings.NewReader(content))
		if err != nil {
			a.t.Fatal(err)
		}
		h := sha256.Sum256([]byte(content))
		m.Objects = append(m.Objects, backup.Object{Key: key, RawSize: sum.RawSize, StoredSize: sum.StoredSize, Sum: sum.Sum})
		m.Files = append(m.Files, backup.File{Path: path, Size: int64(len(content)), Mode: 0o600,
			Sums: []string{hex.EncodeToString(h[:])}, Extents: []backup.Extent{{Off: 0, Len: int64(len(content)), Key: key}}})
		m.Stats.DataBytes += int64(len(content))
		m.Stats.NewBytes += int64(len(content))
		m.Stats.StoredBytes += sum.StoredSize
	}
	m.Stats.Files = len(m.Files)
	if err := backup.WriteManifest(a.ctx, a.r, m); err != nil {
		a.t.Fatal(err)
	}
	return m
}

func (a *adminRepo) wal(from, to pg.SegNo) {
	a.t.Helper()
	for s := from; s <= to; s++ {
		key, _ := repo.WALKey(pg.SegmentName(1, s, a.size), a.size)
		if _, err := a.r.Put(a.ctx, key, strings.NewReader("segment")); err != nil {
			a.t.Fatal(err)
		}
	}
}

func (a *adminRepo) count(prefix string) int {
	n := 0
	_ = a.r.Store().List(a.ctx, prefix, func(storage.ObjectInfo) error { n++; return nil })
	return n
}

// threeBackups: F1 (segment 3), I1 on F1 (segment 5), F2 (segment 7),
// WAL 1..9.
func threeBackups(t *testing.T) (*adminRepo, *backup.Manifest, *backup.Manifest, *backup.Manifest) {
	a := newAdminRepo(t)
	t0 := time.Date(2026, 11, 1, 2, 0, 0, 0, time.UTC)
	f1 := a.backup(t0, nil, 3, map[string]string{"PG_VERSION": "15\n", "base/1/1259": strings.Repeat("a", 5000)})
	i1 := a.backup(t0.Add(24*time.Hour), f1, 5, map[string]string{"base/1/1259": strings.Repeat("b", 5000)})
	f2 := a.backup(t0.Add(48*time.Hour), nil, 7, map[string]string{"PG_VERSION": "15\n", "base/1/1259": strings.Repeat("c", 5000)})
	a.wal(1, 9)
	return a, f1, i1, f2
}

func TestBackupListAndShow(t *testing.T) {
	a := newAdminRepo(t)
	code, out, stderr := run(t, "backup-list", "--repo", a.url)
	if code != 0 || strings.TrimSpace(out) != "no backups in "+a.url {
		t.Errorf("backup-list of an empty repository: code %d, out %q, err %q", code, out, stderr)
	}
	code, out, _ = run(t, "backup-list", "--repo", a.url, "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("backup-list --json of an empty repository: code %d, out %q", code, out)
	}

	a, f1, i1, f2 := threeBackups(t)
	code, out, stderr = run(t, "backup-list", "--repo", a.url)
	if code != 0 {
		t.Fatalf("backup-list: %d %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID") || !strings.HasPrefix(lines[1], f1.ID) ||
		!strings.HasPrefix(lines[2], i1.ID) || !strings.HasPrefix(lines[3], f2.ID) {
		t.Fatalf("backup-list:\n%s", out)
	}
	for _, w := range []string{"incremental", f1.ID, "15.4", "000000010000000000000005..000000010000000000000005", "2026-11-02 02:00:00 UTC", "0/5000028"} {
		if !strings.Contains(lines[2], w) {
			t.Errorf("row %q lacks %q", lines[2], w)
		}
	}
	code, out, _ = run(t, "backup-list", "--repo", a.url, "--json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); code != 0 || err != nil || len(rows) != 3 {
		t.Fatalf("backup-list --json: code %d, %v:\n%s", code, err, out)
	}
	if rows[1]["id"] != i1.ID || rows[1]["parent"] != f1.ID || rows[1]["pg_version"] != "15.4" || rows[1]["repository"] != a.url ||
		rows[1]["data_bytes"].(float64) != 5003 || rows[1]["start_wal"] != i1.StartWAL {
		t.Errorf("row %v", rows[1])
	}

	code, out, stderr = run(t, "backup-show", "--repo", a.url, i1.ID)
	if code != 0 {
		t.Fatalf("backup-show: %d %s", code, stderr)
	}
	for _, w := range []string{i1.ID + " <- " + f1.ID, "incremental (parent " + f1.ID + ")", "16390 fast -> /ssd/pg", "files", "2 in 0 directories",
		"referenced", "3 B (from its ancestors)", "15.4"} {
		if !strings.Contains(out, w) {
			t.Errorf("backup-show lacks %q:\n%s", w, out)
		}
	}
	code, out, _ = run(t, "backup-show", "--repo", a.url, "latest", "--json")
	var sj map[string]any
	if err := json.Unmarshal([]byte(out), &sj); code != 0 || err != nil {
		t.Fatalf("backup-show --json: %d %v\n%s", code, err, out)
	}
	if sj["id"] != f2.ID || sj["files"] != nil || sj["objects"] == nil || sj["chain"] == nil {
		t.Errorf("backup-show LATEST --json: %v", sj)
	}
	code, out, _ = run(t, "backup-show", "--repo", a.url, f2.ID, "--json", "--files")
	if code != 0 || !strings.Contains(out, `"base/1/1259"`) {
		t.Errorf("backup-show --json --files lacks the files: %s", out)
	}
	code, _, stderr = run(t, "backup-show", "--repo", a.url, "20991231T000000F")
	expectFailure(t, exitRepository, stderr, code, "20991231T000000F", "backup-list")
}

func TestBackupDeleteUsage(t *testing.T) {
	a, f1, _, _ := threeBackups(t)
	tests := []struct {
		name  string
		args  []string
		wants []string
	}{
		{"no rule", nil, []string{"--retain-full"}},
		{"retain zero", []string{"--retain-full", "0"}, []string{"--retain-full 0", "at least 1"}},
		{"retain and id", []string{"--retain-full", "1", f1.ID}, []string{"exclude each other"}},
		{"retain and before", []string{"--retain-full", "1", "--before", "14d"}, []string{"exclude each other"}},
		{"bad before", []string{"--before", "last tuesday"}, []string{"--before", "14d"}},
		{"bad id", []string{"yesterday"}, []string{"not a backup id"}},
		{"two ids", []string{f1.ID, f1.ID}, []string{"at most one"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, append([]string{"backup-delete", "--repo", a.url}, tt.args...)...)
			expectFailure(t, exitUsage, stderr, code, tt.wants...)
		})
	}
	if n := a.count(repo.BackupsPrefix); n != 8 {
		t.Errorf("usage errors changed the repository: %d backup objects, want 8", n)
	}
}

func TestBackupDelete(t *testing.T) {
	a, f1, i1, f2 := threeBackups(t)
	walBefore := a.count(repo.WALPrefix)

	code, out, stderr := run(t, "backup-delete", "--repo", a.url, "--retain-full", "1", "--dry-run")
	if code != 0 || !strings.Contains(out, "would delete backup "+f1.ID) || !strings.Contains(out, "would delete backup "+i1.ID) ||
		!strings.Contains(out, "would delete 6 WAL files") || !strings.Contains(out, "nothing was deleted") {
		t.Errorf("dry run: code %d\n%s%s", code, out, stderr)
	}
	if a.count(repo.BackupsPrefix) != 8 || a.count(repo.WALPrefix) != walBefore {
		t.Fatal("the dry run deleted something")
	}

	// The full has an incremental: refused by id, naming it.
	code, _, stderr = run(t, "backup-delete", "--repo", a.url, f1.ID)
	expectFailure(t, exitFailure, stderr, code, "cannot delete backup "+f1.ID, i1.ID, "delete them first")

	code, out, stderr = run(t, "backup-delete", "--repo", a.url, "--retain-full", "1", "--json")
	var res backup.DeleteResult
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil {
		t.Fatalf("backup-delete --json: code %d, %v\n%s%s", code, err, out, stderr)
	}
	if len(res.Deleted) != 2 || res.Deleted[0].ID != f1.ID || res.Deleted[1].ID != i1.ID ||
		len(res.Kept) != 1 || res.Kept[0] != f2.ID || res.WALObjects != 6 || res.WALKeptFrom != f2.StartWAL {
		t.Errorf("result %+v", res)
	}
	code, out, _ = run(t, "backup-list", "--repo", a.url, "--json")
	if code != 0 || strings.Contains(out, f1.ID) || !strings.Contains(out, f2.ID) {
		t.Errorf("after the delete: %s", out)
	}
}

func TestBackupDeleteLocked(t *testing.T) {
	a, _, _, _ := threeBackups(t)
	lease, err := a.r.Acquire(a.ctx, "backup", repo.LeaseOptions{Purpose: "backup-push 20261122T101500F"})
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release(a.ctx)
	code, _, stderr := run(t, "backup-delete", "--repo", a.url, "--retain-full", "1")
	expectFailure(t, exitLocked, stderr, code, "locked", "backup-push 20261122T101500F", "lock/backup")
	if n := a.count(repo.BackupsPrefix); n != 8 {
		t.Errorf("deleted while locked: %d backup objects left, want 8", n)
	}
}

func TestVerifyCommand(t *testing.T) {
	a, f1, i1, f2 := threeBackups(t)
	code, out, stderr := run(t, "verify", "--repo", a.url, "--wal")
	if code != 0 || !strings.Contains(out, "backup "+i1.ID+": ok") || !strings.HasSuffix(strings.TrimSpace(out), "ok") ||
		!strings.Contains(out, "WAL 000000010000000000000003..000000010000000000000009 (timelines 1): continuous") {
		t.Fatalf("verify --wal: code %d\n%s%s", code, out, stderr)
	}
	code, out, _ = run(t, "verify", "--repo", a.url, f2.ID, "--json", "--jobs", "2")
	var rep backup.VerifyReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || !rep.OK || len(rep.Backups) != 1 || rep.Objects != 2 {
		t.Errorf("verify --json: code %d, %v, %+v", code, err, rep)
	}

	// One flipped byte in the object F1 and I1 share.
	key := f1.Files[0].Extents[0].Key
	if f1.Files[0].Path != "PG_VERSION" {
		key = f1.Files[1].Extents[0].Key
	}
	damageObject(t, filepath.Join(a.root, filepath.FromSlash(key)))
	code, out, stderr = run(t, "verify", "--repo", a.url)
	expectFailure(t, exitCorrupt, stderr, code, key, "corrupt")
	if !strings.Contains(out, "backup "+f1.ID+": DAMAGED") || !strings.Contains(out, "backup "+i1.ID+": DAMAGED") ||
		!strings.Contains(out, "backup "+f2.ID+": ok") || !strings.Contains(out, "problem: backup "+f1.ID+": object "+key+" is corrupt") {
		t.Errorf("verify of a corrupt object:\n%s", out)
	}
	// The intact backup still verifies alone.
	if code, _, stderr := run(t, "verify", "--repo", a.url, f2.ID); code != 0 {
		t.Errorf("verify %s: %d %s", f2.ID, code, stderr)
	}

	// A missing WAL segment: exit 1, naming it.
	walKey, _ := repo.WALKey("000000010000000000000008", a.size)
	if err := a.r.Store().Delete(a.ctx, walKey); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = run(t, "verify", "--repo", a.url, f2.ID, "--wal")
	expectFailure(t, exitFailure, stderr, code, "timeline 1: 000000010000000000000008 missing")
	if !strings.Contains(out, "1 of 3 segments MISSING") {
		t.Errorf("verify --wal with a gap:\n%s", out)
	}

	code, _, stderr = run(t, "verify", "--repo", a.url, "--jobs", "0")
	expectFailure(t, exitUsage, stderr, code, "--jobs")
}

// plantTemp writes a temporary file as the fs store names them, as a
// writer killed mid-write leaves it, last modified age ago.
func (a *adminRepo) plantTemp(rel string, size int, age time.Duration) string {
	a.t.Helper()
	p := filepath.Join(a.root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		a.t.Fatal(err)
	}
	if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
		a.t.Fatal(err)
	}
	at := time.Now().Add(-age)
	if err := os.Chtimes(p, at, at); err != nil {
		a.t.Fatal(err)
	}
	return p
}

// TestBackupDeleteSweepsTemps: the temporary files a backup-push killed
// with -9 leaves (backups/<id>/data/.tmp-*) are invisible to listings;
// backup-delete reports them in a dry run and removes them, with the
// directories they leave empty, sparing a temporary file still being
// written (an archive-push in flight).
func TestBackupDeleteSweepsTemps(t *testing.T) {
	a, _, _, _ := threeBackups(t)
	// A dry run holds no lease, so it counts under backups/ only what is
	// as old as elsewhere; the real run, holding the lease, takes all
	// that is older than its lease.
	killed := a.plantTemp("backups/20261123T000000F/data/.tmp-00000000deadbeef", 40000, 10*time.Minute)
	killedLongAgo := a.plantTemp("backups/20261120T000000F/data/.tmp-00000000abcdef01", 4000, 3*time.Hour)
	oldWAL := a.plantTemp("wal/0000000100000000/.tmp-00000000feedface", 1000, 2*time.Hour)
	live := a.plantTemp("wal/0000000100000000/.tmp-0000000012345678", 500, 0)

	code, out, stderr := run(t, "backup-delete", "--repo", a.url, "--retain-full", "3", "--dry-run")
	if code != 0 || !strings.Contains(out, "would delete 2 temporary objects left by interrupted writers") {
		t.Errorf("dry run: code %d\n%s%s", code, out, stderr)
	}
	for _, p := range []string{killed, killedLongAgo, oldWAL, live} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the dry run removed %s", p)
		}
	}
	code, out, stderr = run(t, "backup-delete", "--repo", a.url, "--retain-full", "3", "--json")
	var res backup.DeleteResult
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil {
		t.Fatalf("backup-delete --json: code %d, %v\n%s%s", code, err, out, stderr)
	}
	if res.Temporary != (repo.TempSweep{Objects: 3, Bytes: 45000, Removed: true}) {
		t.Errorf("temporary objects: %+v, want 3 removed, 45000 bytes", res.Temporary)
	}
	for _, p := range []string{killed, killedLongAgo, oldWAL, filepath.Join(a.root, "backups", "20261123T000000F")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there after backup-delete (%v)", p, err)
		}
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a temporary file being written was removed: %v", err)
	}
}
