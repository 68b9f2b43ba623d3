package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
	"github.com/walferry/walferry/storage"
)

// fixture is a fresh filesystem repository in which tests build backups
// and WAL synthetically (no PostgreSQL): data objects with r.Put, the
// manifest with backup.WriteManifest.
type fixture struct {
	t    *testing.T
	ctx  context.Context
	r    *repo.Repo
	st   storage.Store
	root string
	size pg.WALSegmentSize
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
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
	return &fixture{t: t, ctx: ctx, r: r, st: st, root: root, size: size}
}

// fxFile is one file of a synthetic backup.
type fxFile struct {
	path string
	data []byte
}

// fxSpec describes a synthetic backup.
type fxSpec struct {
	start    time.Time // the id is derived from it
	stop     time.Time // zero: start + 1 minute
	parent   *backup.Manifest
	tli      pg.TimeLineID // zero: 1
	startSeg pg.SegNo
	stopSeg  pg.SegNo
	files    []fxFile
	// objectSize splits the new bytes into objects of at most this many
	// bytes (files are cut across objects); zero: 4 MiB.
	objectSize int64
}

func fxID(t time.Time, full bool) string {
	if full {
		return t.UTC().Format("20060102T150405") + "F"
	}
	return t.UTC().Format("20060102T150405") + "I"
}

func fxSums(b []byte) []string {
	out := []string{}
	for off := 0; off < len(b); off += backup.UnitSize {
		s := sha256.Sum256(b[off:min(len(b), off+backup.UnitSize)])
		out = append(out, hex.EncodeToString(s[:]))
	}
	return out
}

// fxData returns n deterministic pseudo-random bytes.
func fxData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// backup stores a backup: files identical to the parent's (same path and
// content) keep the parent's extents, the others go to new objects.
func (f *fixture) backup(s fxSpec) *backup.Manifest {
	f.t.Helper()
	if s.tli == 0 {
		s.tli = 1
	}
	if s.stop.IsZero() {
		s.stop = s.start.Add(time.Minute)
	}
	if s.objectSize == 0 {
		s.objectSize = 4 << 20
	}
	id := fxID(s.start, s.parent == nil)
	m := f.manifest(id, s.parent, s.tli, s.startSeg, s.stopSeg)
	m.StartTime, m.StopTime = s.start, s.stop
	var parentFiles map[string]*backup.File
	var parentData map[string][]byte
	if s.parent != nil {
		parentFiles = s.parent.FileMap()
		parentData = fxContent[s.parent.ID]
	}
	// Pack the new bytes.
	var cur bytes.Buffer
	n := 0
	flush := func() {
		if cur.Len() == 0 {
			return
		}
		n++
		key := repo.BackupDataKey(id, n)
		sum, err := f.r.Put(f.ctx, key, bytes.NewReader(cur.Bytes()))
		if err != nil {
			f.t.Fatal(err)
		}
		m.Objects = append(m.Objects, backup.Object{Key: key, RawSize: sum.RawSize, StoredSize: sum.StoredSize, Sum: sum.Sum})
		m.Stats.StoredBytes += sum.StoredSize
		cur.Reset()
	}
	content := map[string][]byte{}
	for _, file := range s.files {
		content[file.path] = file.data
		bf := backup.File{Path: file.path, Size: int64(len(file.data)), Mode: 0o600, MTime: s.start.Unix(), Sums: fxSums(file.data)}
		m.Stats.DataBytes += bf.Size
		if pf := parentFiles[file.path]; pf != nil && bytes.Equal(parentData[file.path], file.data) {
			bf.Extents = slices.Clone(pf.Extents)
			m.Files = append(m.Files, bf)
			continue
		}
		m.Stats.NewBytes += bf.Size
		for off := int64(0); off < bf.Size; {
			room := s.objectSize - int64(cur.Len())
			take := min(room, bf.Size-off)
			bf.Extents = append(bf.Extents, backup.Extent{Off: off, Len: take, Key: repo.BackupDataKey(id, n+1), At: int64(cur.Len())})
			cur.Write(file.data[off : off+take])
			off += take
			if int64(cur.Len()) >= s.objectSize {
				flush()
			}
		}
		m.Files = append(m.Files, bf)
	}
	flush()
	m.Stats.Files = len(m.Files)
	fxContent[id] = content
	if err := backup.WriteManifest(f.ctx, f.r, m); err != nil {
		f.t.Fatal(err)
	}
	return m
}

// manifest returns the manifest of backup id, without files or objects,
// an incremental on parent when it is not nil, that needs WAL segments
// startSeg to stopSeg of timeline tli.
func (f *fixture) manifest(id string, parent *backup.Manifest, tli pg.TimeLineID, startSeg, stopSeg pg.SegNo) *backup.Manifest {
	m := &backup.Manifest{
		FormatVersion: backup.ManifestVersion, ID: id, Type: backup.Full, Mode: "local", Label: "test " + id,
		StartLSN: f.size.StartLSN(startSeg) + 0x28, StopLSN: f.size.StartLSN(stopSeg) + 0x138,
		Timeline: tli,
		StartWAL: pg.SegmentName(tli, startSeg, f.size), StopWAL: pg.SegmentName(tli, stopSeg, f.size),
		SystemID: 7310012345678901234, PGVersionNum: 150004, DataChecksums: true,
		BackupLabel: "START WAL LOCATION: test\n", Dirs: []backup.Dir{{Path: "base", Mode: 0o700}},
	}
	if parent != nil {
		m.Type, m.Parent = backup.Incremental, parent.ID
	}
	return m
}

// fxContent remembers every synthetic backup's file contents, by id.
var fxContent = map[string]map[string][]byte{}

// wal stores segments from..to (inclusive) of timeline tli.
func (f *fixture) wal(tli pg.TimeLineID, from, to pg.SegNo) {
	f.t.Helper()
	for s := from; s <= to; s++ {
		f.walFile(pg.SegmentName(tli, s, f.size))
	}
}

// walFile stores one WAL archive file (the content is a small stand-in).
func (f *fixture) walFile(name string) {
	f.t.Helper()
	key, err := repo.WALKey(name, f.size)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.r.Put(f.ctx, key, strings.NewReader("WAL "+name+strings.Repeat(".", 1000))); err != nil {
		f.t.Fatal(err)
	}
}

// history stores the history file of timeline tli.
func (f *fixture) history(tli pg.TimeLineID, entries ...pg.HistoryEntry) {
	f.t.Helper()
	var b bytes.Buffer
	if err := pg.FormatHistory(&b, entries); err != nil {
		f.t.Fatal(err)
	}
	key, _ := repo.WALKey(pg.HistoryFileName(tli), f.size)
	if _, err := f.r.Put(f.ctx, key, &b); err != nil {
		f.t.Fatal(err)
	}
}

// keys lists every key under prefix.
func (f *fixture) keys(prefix string) []string {
	f.t.Helper()
	var out []string
	if err := f.st.List(f.ctx, prefix, func(oi storage.ObjectInfo) error { out = append(out, oi.Key); return nil }); err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *fixture) exists(key string) bool {
	_, err := f.st.Stat(f.ctx, key)
	return err == nil
}

func (f *fixture) walKey(name string) string {
	k, err := repo.WALKey(name, f.size)
	if err != nil {
		f.t.Fatal(err)
	}
	return k
}

func (f *fixture) ids() []string {
	f.t.Helper()
	ids, _, err := backup.IDs(f.ctx, f.r)
	if err != nil {
		f.t.Fatal(err)
	}
	return ids
}

// flip flips one byte in the middle of a stored object's file.
func (f *fixture) flip(key string) {
	f.t.Helper()
	p := filepath.Join(f.root, filepath.FromSlash(key))
	b, err := os.ReadFile(p)
	if err != nil {
		f.t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(p, b, 0o600); err != nil {
		f.t.Fatal(err)
	}
}

var day0 = time.Date(2026, 11, 1, 2, 0, 0, 0, time.UTC)

func day(n float64) time.Time { return day0.Add(time.Duration(n * 24 * float64(time.Hour))) }

// chains builds three chains: F1 <- I1a <- I1b, F2 <- I2a, F3, with WAL
// segments 1..40 on timeline 1, each backup starting 5 segments after the
// previous one.
type chains struct {
	f                         *fixture
	f1, i1a, i1b, f2, i2a, f3 *backup.Manifest
}

func newChains(t *testing.T) *chains {
	f := newFixture(t)
	files := func(gen uint64) []fxFile {
		return []fxFile{
			{"PG_VERSION", []byte("15\n")},
			{"base/1/1259", fxData(1, 40000)},
			{"base/1/2000", fxData(100+gen, 30000)},
		}
	}
	c := &chains{f: f}
	c.f1 = f.backup(fxSpec{start: day(1), startSeg: 5, stopSeg: 6, files: files(1)})
	c.i1a = f.backup(fxSpec{start: day(2), parent: c.f1, startSeg: 10, stopSeg: 10, files: files(2)})
	c.i1b = f.backup(fxSpec{start: day(3), parent: c.i1a, startSeg: 15, stopSeg: 15, files: files(3)})
	c.f2 = f.backup(fxSpec{start: day(4), startSeg: 20, stopSeg: 21, files: files(4)})
	c.i2a = f.backup(fxSpec{start: day(5), parent: c.f2, startSeg: 25, stopSeg: 25, files: files(5)})
	c.f3 = f.backup(fxSpec{start: day(6), startSeg: 30, stopSeg: 31, files: files(6)})
	f.wal(1, 1, 40)
	return c
}

func ids(ms ...*backup.Manifest) []string {
	out := []string{}
	for _, m := range ms {
		out = append(out, m.ID)
	}
	slices.Sort(out)
	return out
}

func deletedIDs(res *backup.DeleteResult) []string {
	out := []string{}
	for _, d := range res.Deleted {
		out = append(out, d.ID)
	}
	return out
}

func TestDeleteRetainFull(t *testing.T) {
	c := newChains(t)
	f := c.f
	// Timeline 2 forked at segment 18: its low segments count too.
	f.history(2, pg.HistoryEntry{TLI: 1, SwitchLSN: f.size.StartLSN(18) + 0x100, Reason: "no recovery target specified"})
	f.wal(2, 18, 19)
	f.walFile(pg.SegmentName(2, 20, f.size))
	f.walFile(pg.PartialFileName(1, 19, f.size))
	f.walFile(pg.PartialFileName(1, 20, f.size))
	f.walFile(pg.BackupHistoryFileName(1, f.size.StartLSN(19)+0x28, f.size))
	f.walFile(pg.BackupHistoryFileName(1, f.size.StartLSN(20)+0x28, f.size))
	walBefore := len(f.keys(repo.WALPrefix))

	res, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{RetainFull: 2})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := deletedIDs(res), ids(c.f1, c.i1a, c.i1b); !slices.Equal(got, want) {
		t.Errorf("deleted %v, want %v", got, want)
	}
	if got, want := f.ids(), ids(c.f2, c.i2a, c.f3); !slices.Equal(got, want) {
		t.Errorf("remaining %v, want %v", got, want)
	}
	for _, m := range []*backup.Manifest{c.f1, c.i1a, c.i1b} {
		if left := f.keys(repo.BackupPrefix(m.ID)); len(left) > 0 {
			t.Errorf("backup %s left objects %v", m.ID, left)
		}
	}
	// WAL boundary: F2 starts at segment 20.
	gone := []string{
		pg.SegmentName(1, 1, f.size), pg.SegmentName(1, 19, f.size), pg.SegmentName(2, 18, f.size),
		pg.SegmentName(2, 19, f.size), pg.PartialFileName(1, 19, f.size),
		pg.BackupHistoryFileName(1, f.size.StartLSN(19)+0x28, f.size),
	}
	kept := []string{
		pg.SegmentName(1, 20, f.size), pg.SegmentName(1, 40, f.size), pg.SegmentName(2, 20, f.size),
		pg.PartialFileName(1, 20, f.size), pg.BackupHistoryFileName(1, f.size.StartLSN(20)+0x28, f.size),
		pg.HistoryFileName(2),
	}
	for _, name := range gone {
		if f.exists(f.walKey(name)) {
			t.Errorf("%s is below the oldest kept backup's start and still there", name)
		}
	}
	for _, name := range kept {
		if !f.exists(f.walKey(name)) {
			t.Errorf("%s was deleted; the kept backups need it", name)
		}
	}
	walAfter := len(f.keys(repo.WALPrefix))
	if res.WALObjects != walBefore-walAfter || res.WALObjects != 19+2+2 {
		t.Errorf("result says %d WAL objects deleted; the listing lost %d; want 23", res.WALObjects, walBefore-walAfter)
	}
	if res.WALKeptFrom != c.f2.StartWAL || res.WALBytes <= 0 || res.BytesFreed <= res.WALBytes {
		t.Errorf("result %+v", res)
	}
}

func TestDeleteRetainFullKeepsAll(t *testing.T) {
	c := newChains(t)
	res, err := backup.Delete(c.f.ctx, c.f.r, backup.DeleteOptions{RetainFull: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 0 || len(c.f.ids()) != 6 {
		t.Errorf("deleted %v with 3 fulls to keep", deletedIDs(res))
	}
	// WAL before the oldest backup (F1 starts at segment 5) is not needed.
	if res.WALObjects != 4 || c.f.exists(c.f.walKey(pg.SegmentName(1, 4, c.f.size))) ||
		!c.f.exists(c.f.walKey(pg.SegmentName(1, 5, c.f.size))) {
		t.Errorf("WAL objects deleted %d, want segments 1-4", res.WALObjects)
	}
}

func TestDeleteDryRun(t *testing.T) {
	c := newChains(t)
	f := c.f
	before := f.keys("")
	res, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{RetainFull: 1, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := deletedIDs(res), ids(c.f1, c.i1a, c.i1b, c.f2, c.i2a); !slices.Equal(got, want) {
		t.Errorf("dry run would delete %v, want %v", got, want)
	}
	if res.WALObjects != 29 || !res.DryRun || res.BytesFreed == 0 {
		t.Errorf("dry run result: %d WAL objects (want 29), %+v", res.WALObjects, res)
	}
	if after := f.keys(""); !slices.Equal(before, after) {
		t.Errorf("a dry run changed the repository:\nbefore %v\nafter  %v", before, after)
	}
}

func TestDeleteBefore(t *testing.T) {
	tests := []struct {
		name   string
		before time.Time
		want   func(c *chains) []string
	}{
		{"nothing older", day(0.5), func(c *chains) []string { return ids() }},
		{"first chain", day(3.5), func(c *chains) []string { return ids(c.f1, c.i1a, c.i1b) }},
		// F2 stopped before the time, but I2a after it and needs F2.
		{"full kept for its incremental", day(4.5), func(c *chains) []string { return ids(c.f1, c.i1a, c.i1b) }},
		{"two chains", day(5.5), func(c *chains) []string { return ids(c.f1, c.i1a, c.i1b, c.f2, c.i2a) }},
		// Everything stopped before: the newest backup stays.
		{"keeps the newest", day(30), func(c *chains) []string { return ids(c.f1, c.i1a, c.i1b, c.f2, c.i2a) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newChains(t)
			res, err := backup.Delete(c.f.ctx, c.f.r, backup.DeleteOptions{Before: tt.before})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := deletedIDs(res), tt.want(c); !slices.Equal(got, want) {
				t.Errorf("deleted %v, want %v", got, want)
			}
			if len(c.f.ids()) == 0 {
				t.Error("no backup left")
			}
		})
	}
}

func TestDeleteByID(t *testing.T) {
	c := newChains(t)
	f := c.f
	_, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{ID: c.f1.ID})
	if !errors.Is(err, backup.ErrHasDependents) || !strings.Contains(err.Error(), c.i1a.ID) ||
		!strings.Contains(err.Error(), c.i1b.ID) || !strings.Contains(err.Error(), "--retain-full") {
		t.Fatalf("deleting a full with incrementals: err = %v; want ErrHasDependents naming %s and %s", err, c.i1a.ID, c.i1b.ID)
	}
	if len(f.ids()) != 6 {
		t.Fatal("a refused delete deleted something")
	}
	if _, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{ID: "20991231T000000F"}); !errors.Is(err, backup.ErrNoBackup) {
		t.Errorf("deleting a backup that does not exist: err = %v", err)
	}
	// Newest first works, and WAL follows the oldest remaining backup.
	for _, m := range []*backup.Manifest{c.i1b, c.i1a} {
		res, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{ID: m.ID})
		if err != nil {
			t.Fatal(err)
		}
		if got := deletedIDs(res); !slices.Equal(got, []string{m.ID}) {
			t.Errorf("deleted %v, want %s", got, m.ID)
		}
	}
	res, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{ID: c.f1.ID})
	if err != nil {
		t.Fatal(err)
	}
	// Segments 1-4 went with the first delete (F1 starts at 5).
	if res.WALKeptFrom != c.f2.StartWAL || res.WALObjects != 15 {
		t.Errorf("after deleting F1: WAL kept from %s (want %s), %d objects deleted (want 15)", res.WALKeptFrom, c.f2.StartWAL, res.WALObjects)
	}
}

func TestDeleteLastBackupKeepsWAL(t *testing.T) {
	f := newFixture(t)
	m := f.backup(fxSpec{start: day(1), startSeg: 5, stopSeg: 5, files: []fxFile{{"PG_VERSION", []byte("15\n")}}})
	f.wal(1, 1, 8)
	res, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{ID: m.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.ids()) != 0 || res.WALObjects != 0 || len(f.keys(repo.WALPrefix)) != 8 {
		t.Errorf("deleting the only backup: %d WAL objects deleted, %d left (want 0 and 8)", res.WALObjects, len(f.keys(repo.WALPrefix)))
	}
	if len(res.Notes) == 0 || !strings.Contains(strings.Join(res.Notes, " "), "no WAL") {
		t.Errorf("notes %q do not say the WAL was kept", res.Notes)
	}
}

func TestDeleteRemovesIncomplete(t *testing.T) {
	c := newChains(t)
	f := c.f
	leftover := fxID(day(7), true)
	for i := 1; i <= 3; i++ {
		if _, err := f.r.Put(f.ctx, repo.BackupDataKey(leftover, i), strings.NewReader("interrupted")); err != nil {
			t.Fatal(err)
		}
	}
	res, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{RetainFull: 3, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Incomplete) != 1 || len(f.keys(repo.BackupPrefix(leftover))) != 3 {
		t.Fatalf("dry run: incomplete %+v; objects left %d", res.Incomplete, len(f.keys(repo.BackupPrefix(leftover))))
	}
	res, err = backup.Delete(f.ctx, f.r, backup.DeleteOptions{RetainFull: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Incomplete) != 1 || res.Incomplete[0].ID != leftover || res.Incomplete[0].Objects != 3 {
		t.Errorf("incomplete = %+v, want %s with 3 objects", res.Incomplete, leftover)
	}
	if left := f.keys(repo.BackupPrefix(leftover)); len(left) > 0 {
		t.Errorf("incomplete backup left %v", left)
	}
	if len(f.ids()) != 6 {
		t.Errorf("complete backups deleted: %v", f.ids())
	}
}

func TestDeleteWhileLocked(t *testing.T) {
	c := newChains(t)
	f := c.f
	lease, err := f.r.Acquire(f.ctx, "backup", repo.LeaseOptions{Purpose: "backup-push 20261122T101500F"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = backup.Delete(f.ctx, f.r, backup.DeleteOptions{RetainFull: 1})
	if !errors.Is(err, repo.ErrLocked) || !strings.Contains(err.Error(), "backup-push 20261122T101500F") {
		t.Errorf("delete under another's lease: err = %v, want ErrLocked naming the holder", err)
	}
	if len(f.ids()) != 6 {
		t.Error("deleted while locked")
	}
	// A dry run needs no lease.
	if _, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{RetainFull: 1, DryRun: true}); err != nil {
		t.Errorf("dry run under a lease: %v", err)
	}
	if err := lease.Release(f.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Delete(f.ctx, f.r, backup.DeleteOptions{RetainFull: 1}); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if f.exists(repo.LockKey("backup")) {
		t.Error("backup-delete left its lease behind")
	}
}

func TestDeleteOptionsValidate(t *testing.T) {
	for _, o := range []backup.DeleteOptions{
		{},
		{RetainFull: -1},
		{RetainFull: 1, ID: "20261101T020000F"},
		{RetainFull: 1, Before: day(1)},
		{ID: "yesterday"},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

func TestParseBefore(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
	}{
		{"2026-11-01T00:00:00Z", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{"2026-11-01T02:00:00+02:00", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{"2026-11-01 10:30:00", time.Date(2026, 11, 1, 10, 30, 0, 0, time.UTC)},
		{"2026-11-01", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{"14d", now.Add(-14 * 24 * time.Hour)},
		{"2w", now.Add(-14 * 24 * time.Hour)},
		{"36h", now.Add(-36 * time.Hour)},
		{"90m", now.Add(-90 * time.Minute)},
	}
	for _, tt := range tests {
		got, err := backup.ParseBefore(tt.in, now)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("ParseBefore(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "yesterday", "14", "-3d", "0h", "1.5d", "d", "2026-13-01", "-36h"} {
		if got, err := backup.ParseBefore(bad, now); err == nil {
			t.Errorf("ParseBefore(%q) = %v, want an error", bad, got)
		}
	}
}

func TestPGVersion(t *testing.T) {
	for num, want := range map[int]string{150004: "15.4", 170000: "17.0", 90624: "9.6.24", 0: ""} {
		if got := backup.PGVersion(num); got != want {
			t.Errorf("PGVersion(%d) = %q, want %q", num, got, want)
		}
	}
}

func TestDescribeChain(t *testing.T) {
	c := newChains(t)
	d, err := backup.Describe(c.f.ctx, c.f.r, c.i1b)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{c.i1b.ID, c.i1a.ID, c.f1.ID}; !slices.Equal(d.Chain, want) || d.BrokenChain != "" {
		t.Errorf("chain %v (broken %q), want %v", d.Chain, d.BrokenChain, want)
	}
	if d.PGVersion != "15.4" || d.Files != 3 || d.NewBytes != 30000 || d.ReferencedBytes != 40003 {
		t.Errorf("details %+v", d)
	}
	// I1b took its unchanged files' extents from I1a, which had them from F1.
	if fmt.Sprint(d.DependsOn) != fmt.Sprint([]string{c.f1.ID}) {
		t.Errorf("depends on %v", d.DependsOn)
	}
}
