package backup_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// bigChain builds a full and an incremental. The large file (20 MiB,
// three units) is cut across several objects; the incremental changes it
// (and stores it again) and keeps the other files' extents, which point
// into the full's objects.
func bigChain(t *testing.T, objectSize int64) (*fixture, *backup.Manifest, *backup.Manifest) {
	f := newFixture(t)
	big := fxData(7, 20<<20+12345)
	files := []fxFile{
		{"PG_VERSION", []byte("15\n")},
		{"base/1/1259", fxData(1, 100000)},
		{"base/1/16384", big},
		{"base/1/16384_fsm", fxData(3, 24576)},
		{"global/pg_control", fxData(4, 8192)},
	}
	full := f.backup(fxSpec{start: day(1), startSeg: 3, stopSeg: 4, files: files, objectSize: objectSize})
	big2 := slices.Clone(big)
	copy(big2[9<<20:], []byte("changed"))
	files[2] = fxFile{"base/1/16384", big2}
	incr := f.backup(fxSpec{start: day(2), parent: full, startSeg: 6, stopSeg: 6, files: files, objectSize: objectSize})
	f.wal(1, 3, 8)
	return f, full, incr
}

func problemsOf(rep *backup.VerifyReport, kind string) []backup.Problem {
	var out []backup.Problem
	for _, p := range rep.Problems {
		if p.Kind == kind {
			out = append(out, p)
		}
	}
	return out
}

func TestVerifyIntact(t *testing.T) {
	for _, tt := range []struct {
		name       string
		objectSize int64
		jobs       int
		budget     int64
	}{
		{"one object per file piece, parallel", 3 << 20, 4, 0},
		// A budget too small for any out-of-order piece: those units are
		// hashed again by reading their pieces.
		{"tiny buffer budget", 3 << 20, 4, 1},
		{"sequential", 5 << 20, 1, 0},
		{"one object", 64 << 20, 2, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, full, incr := bigChain(t, tt.objectSize)
			rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{WAL: true, Jobs: tt.jobs, BufferBudget: tt.budget})
			if err != nil {
				t.Fatalf("verify: %v; problems %+v", err, rep.Problems)
			}
			if !rep.OK || len(rep.Backups) != 2 || !rep.Backups[0].OK || !rep.Backups[1].OK {
				t.Errorf("report %+v", rep)
			}
			// Units: 1+1+3+1+1 per backup.
			if rep.Units != 14 {
				t.Errorf("%d units checked, want 14", rep.Units)
			}
			keys := map[string]bool{}
			for _, m := range []*backup.Manifest{full, incr} {
				for _, k := range m.ObjectKeys() {
					keys[k] = true
				}
			}
			if rep.Objects != len(keys) {
				t.Errorf("%d objects read, want %d", rep.Objects, len(keys))
			}
			if rep.WAL == nil || rep.WAL.From != pg.SegmentName(1, 3, f.size) || rep.WAL.To != pg.SegmentName(1, 8, f.size) ||
				rep.WAL.Missing != 0 || rep.WAL.Objects != 6 {
				t.Errorf("WAL check %+v", rep.WAL)
			}
			// One backup: its ancestors' objects are read too.
			rep, err = backup.Verify(f.ctx, f.r, backup.VerifyOptions{ID: "LATEST"})
			if err != nil || len(rep.Backups) != 1 || rep.Backups[0].ID != incr.ID || rep.Units != 7 || rep.Objects != len(incr.ObjectKeys()) {
				t.Errorf("verify LATEST: %v, %+v", err, rep)
			}
		})
	}
}

func TestVerifyFlippedByte(t *testing.T) {
	f, full, incr := bigChain(t, 3<<20)
	// An object of the full that the incremental also needs.
	key := incr.Files[1].Extents[0].Key
	if !strings.HasPrefix(key, repo.BackupPrefix(full.ID)) {
		t.Fatalf("fixture: %s is not the full's", key)
	}
	f.flip(key)
	rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{Jobs: 2})
	if !errors.Is(err, codec.ErrCorrupt) || !errors.Is(err, backup.ErrVerify) {
		t.Fatalf("err = %v, want ErrCorrupt and ErrVerify", err)
	}
	ps := problemsOf(rep, backup.ProblemCorrupt)
	if len(ps) != 1 || ps[0].Key != key || !strings.Contains(ps[0].Message, "object "+key+" is corrupt") ||
		!strings.Contains(ps[0].Message, "base/1/1259") || !slices.Equal(ps[0].Backups, []string{full.ID, incr.ID}) {
		t.Errorf("problems %+v; want one naming %s, base/1/1259 and both backups", rep.Problems, key)
	}
	if len(rep.Problems) != 1 {
		t.Errorf("one flipped byte gave %d problems: %+v", len(rep.Problems), rep.Problems)
	}
	if rep.OK || rep.Backups[0].OK || rep.Backups[1].OK {
		t.Errorf("backups reported ok: %+v", rep.Backups)
	}
}

func TestVerifyMissingObject(t *testing.T) {
	f, full, incr := bigChain(t, 3<<20)
	key := incr.Objects[0].Key
	if err := f.st.Delete(f.ctx, key); err != nil {
		t.Fatal(err)
	}
	rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{})
	if !errors.Is(err, backup.ErrVerify) || errors.Is(err, codec.ErrCorrupt) {
		t.Fatalf("err = %v, want ErrVerify, not ErrCorrupt", err)
	}
	ps := problemsOf(rep, backup.ProblemMissing)
	if len(ps) != 1 || !strings.Contains(ps[0].Message, "backup "+incr.ID+": object "+key+" is missing (the repository lost it)") ||
		!slices.Equal(ps[0].Backups, []string{incr.ID}) {
		t.Errorf("problems %+v", rep.Problems)
	}
	if rep.Backups[0].ID != full.ID || !rep.Backups[0].OK || rep.Backups[1].OK {
		t.Errorf("verdicts %+v: the full is intact, the incremental is not", rep.Backups)
	}
}

func TestVerifyBadManifests(t *testing.T) {
	f, full, _ := bigChain(t, 3<<20)
	// An incremental on the full that keeps all its files, in which
	// base/1/1259's extent stops short of its end, base/1/16384's second
	// unit has a wrong sum, and global/pg_control's extent points past its
	// object's end.
	m := *full
	m.ID, m.Type, m.Parent, m.Objects = fxID(day(3), false), backup.Incremental, full.ID, nil
	m.StartTime, m.StopTime = day(3), day(3).Add(time.Minute)
	m.Files = slices.Clone(full.Files)
	for i := range m.Files {
		m.Files[i].Extents = slices.Clone(m.Files[i].Extents)
		m.Files[i].Sums = slices.Clone(m.Files[i].Sums)
	}
	fm := map[string]*backup.File{}
	for i := range m.Files {
		fm[m.Files[i].Path] = &m.Files[i]
	}
	gap := fm["base/1/1259"]
	gap.Extents[0].Len -= 100
	if len(gap.Extents) > 1 {
		t.Fatal("fixture: base/1/1259 should be one extent")
	}
	big := fm["base/1/16384"]
	big.Sums[1] = strings.Repeat("ab", 32)
	ctl := fm["global/pg_control"]
	last := ctl.Extents[len(ctl.Extents)-1]
	var raw int64
	for _, o := range full.Objects {
		if o.Key == last.Key {
			raw = o.RawSize
		}
	}
	ctl.Extents[len(ctl.Extents)-1].At = raw - last.Len + 10
	if err := backup.WriteManifest(f.ctx, f.r, &m); err != nil {
		t.Fatal(err)
	}

	rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{ID: m.ID, Jobs: 3})
	if !errors.Is(err, backup.ErrVerify) || errors.Is(err, codec.ErrCorrupt) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		"backup " + m.ID + ": file base/1/1259: the extents do not tile the file: bytes 99900-99999 of 100000 are in no extent",
		"backup " + m.ID + ": file base/1/16384: bytes 8388608-16777215 do not match the manifest",
		"backup " + m.ID + ": file global/pg_control: bytes ",
	}
	for _, w := range want {
		found := false
		for _, p := range rep.Problems {
			found = found || strings.HasPrefix(p.Message, w)
		}
		if !found {
			t.Errorf("no problem starts with %q; problems:\n%+v", w, rep.Problems)
		}
	}
	if len(rep.Problems) != 3 {
		t.Errorf("%d problems, want 3: %+v", len(rep.Problems), rep.Problems)
	}
	// The other backups are unaffected.
	if _, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{ID: full.ID}); err != nil {
		t.Errorf("verify %s: %v", full.ID, err)
	}
}

func TestVerifyReplacedObject(t *testing.T) {
	f, full, _ := bigChain(t, 3<<20)
	key := full.Objects[0].Key
	if err := f.st.Delete(f.ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := f.r.Put(f.ctx, key, strings.NewReader(strings.Repeat("x", int(full.Objects[0].RawSize)))); err != nil {
		t.Fatal(err)
	}
	rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{ID: full.ID})
	if !errors.Is(err, backup.ErrVerify) {
		t.Fatalf("err = %v", err)
	}
	if ps := problemsOf(rep, backup.ProblemObject); len(ps) != 1 || !strings.Contains(ps[0].Message, "has checksum") {
		t.Errorf("object problems %+v", rep.Problems)
	}
	if ps := problemsOf(rep, backup.ProblemContent); len(ps) == 0 {
		t.Errorf("no content problem for the files in the replaced object: %+v", rep.Problems)
	}
}

func TestVerifyWALGapAcrossTimelines(t *testing.T) {
	f := newFixture(t)
	b1 := f.backup(fxSpec{start: day(1), startSeg: 2, stopSeg: 2, files: []fxFile{{"PG_VERSION", []byte("15\n")}}})
	// Timeline 1: 2..6 but 3 missing. Promotion inside segment 5: timeline
	// 2 has 5 and 8..9, so its 6..7 are missing; timeline 1's 6 is the old
	// primary's and does not count.
	f.wal(1, 2, 2)
	f.wal(1, 4, 6)
	f.walFile(pg.PartialFileName(1, 5, f.size))
	f.history(2, pg.HistoryEntry{TLI: 1, SwitchLSN: f.size.StartLSN(5) + 0x1000, Reason: "no recovery target specified"})
	f.wal(2, 5, 5)
	f.wal(2, 8, 9)
	b2 := f.backup(fxSpec{start: day(2), tli: 2, startSeg: 8, stopSeg: 9, files: []fxFile{{"PG_VERSION", []byte("15\n")}}})

	rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{WAL: true})
	if !errors.Is(err, backup.ErrVerify) || errors.Is(err, codec.ErrCorrupt) {
		t.Fatalf("err = %v", err)
	}
	var got []string
	for _, p := range problemsOf(rep, backup.ProblemWALGap) {
		got = append(got, p.Message)
	}
	want := []string{
		"timeline 1: 000000010000000000000003 missing (point-in-time recovery from " + b1.ID + " stops before it)",
		"timeline 2: 000000020000000000000006..000000020000000000000007 missing (point-in-time recovery from " + b1.ID + " stops before it)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("gaps:\n%q\nwant\n%q", got, want)
	}
	if len(rep.Problems) != 2 {
		t.Errorf("problems %+v", rep.Problems)
	}
	w := rep.WAL
	if w.From != "000000010000000000000002" || w.To != "000000020000000000000009" || w.Segments != 8 || w.Missing != 3 ||
		!slices.Equal(w.Timelines, []pg.TimeLineID{1, 2}) {
		t.Errorf("WAL check %+v", w)
	}
	// Everything from 2 to 9 is re-read, on both timelines: 2,4,5,6 and
	// the partial on 1, 5,8,9 on 2, and the history file.
	if w.Objects != 9 {
		t.Errorf("%d WAL objects re-read, want 9", w.Objects)
	}
	// From the newer backup on, the archive is continuous.
	if _, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{ID: b2.ID, WAL: true}); err != nil {
		t.Errorf("verify %s --wal: %v", b2.ID, err)
	}

	// A corrupt segment in the range.
	f.flip(f.walKey("000000020000000000000008"))
	rep, err = backup.Verify(f.ctx, f.r, backup.VerifyOptions{ID: b2.ID, WAL: true})
	if !errors.Is(err, codec.ErrCorrupt) {
		t.Fatalf("corrupt WAL: err = %v", err)
	}
	if ps := problemsOf(rep, backup.ProblemWALCorrupt); len(ps) != 1 || !strings.Contains(ps[0].Message, "000000020000000000000008 is corrupt") {
		t.Errorf("problems %+v", rep.Problems)
	}
}

func TestVerifyBackupWithoutWAL(t *testing.T) {
	f := newFixture(t)
	m := f.backup(fxSpec{start: day(1), startSeg: 2, stopSeg: 4, files: []fxFile{{"PG_VERSION", []byte("15\n")}}})
	f.wal(1, 2, 2)
	f.wal(1, 4, 5)
	rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{})
	if !errors.Is(err, backup.ErrVerify) {
		t.Fatalf("err = %v", err)
	}
	ps := problemsOf(rep, backup.ProblemBackupWAL)
	if len(ps) != 1 || ps[0].Message != "backup "+m.ID+": WAL 000000010000000000000003 missing: the backup cannot be restored" {
		t.Errorf("problems %+v", rep.Problems)
	}
}

func TestVerifyMissingHistory(t *testing.T) {
	f := newFixture(t)
	f.backup(fxSpec{start: day(1), startSeg: 2, stopSeg: 2, files: []fxFile{{"PG_VERSION", []byte("15\n")}}})
	f.wal(1, 2, 4)
	f.wal(2, 4, 5)
	rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{WAL: true})
	if !errors.Is(err, backup.ErrVerify) {
		t.Fatalf("err = %v", err)
	}
	if ps := problemsOf(rep, backup.ProblemHistory); len(ps) != 1 || !strings.Contains(ps[0].Message, "00000002.history is missing") {
		t.Errorf("problems %+v", rep.Problems)
	}
}

// TestVerifyOutOfOrderPieces stores a file's first half after its second
// half, so the pieces of its first unit arrive in reverse order: they are
// buffered, or, without budget, hashed again afterwards; a wrong sum is
// caught either way.
func TestVerifyOutOfOrderPieces(t *testing.T) {
	f := newFixture(t)
	data := fxData(9, 10<<20)
	half := int64(5 << 20)
	// store writes a full backup of data, its second half first.
	store := func(id string, sums []string) {
		m := f.manifest(id, nil, 1, 2, 2)
		for i, part := range [][]byte{data[half:], data[:half]} {
			key := repo.BackupDataKey(id, i+1)
			sum, err := f.r.Put(f.ctx, key, strings.NewReader(string(part)))
			if err != nil {
				t.Fatal(err)
			}
			m.Objects = append(m.Objects, backup.Object{Key: key, RawSize: sum.RawSize, StoredSize: sum.StoredSize, Sum: sum.Sum})
		}
		m.Files = []backup.File{{Path: "base/1/2", Size: int64(len(data)), Sums: sums, Extents: []backup.Extent{
			{Off: 0, Len: half, Key: repo.BackupDataKey(id, 2), At: 0},
			{Off: half, Len: half, Key: repo.BackupDataKey(id, 1), At: 0},
		}}}
		if err := backup.WriteManifest(f.ctx, f.r, m); err != nil {
			t.Fatal(err)
		}
	}
	store(fxID(day(1), true), fxSums(data))
	f.wal(1, 2, 2)
	for _, budget := range []int64{0, 1} {
		rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{Jobs: 1, BufferBudget: budget})
		if err != nil || rep.Units != 2 {
			t.Errorf("budget %d: %v, %d units", budget, err, rep.Units)
		}
	}

	id := fxID(day(2), true)
	store(id, append([]string{strings.Repeat("0", 64)}, fxSums(data)[1:]...))
	for _, budget := range []int64{0, 1} {
		rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{ID: id, Jobs: 1, BufferBudget: budget})
		ps := problemsOf(rep, backup.ProblemContent)
		if !errors.Is(err, backup.ErrVerify) || len(ps) != 1 ||
			!strings.HasPrefix(ps[0].Message, "backup "+id+": file base/1/2: bytes 0-8388607 do not match the manifest") {
			t.Errorf("budget %d: %v, %+v", budget, err, rep.Problems)
		}
	}
}

// TestVerifyPageIncremental builds an incremental the way backup-push
// stores changed pages: every unit of a relation file alternates between
// the parent's object (unchanged pages) and the incremental's (changed
// ones), so each unit's pieces come from two objects read in parallel.
func TestVerifyPageIncremental(t *testing.T) {
	f := newFixture(t)
	const page = 8192
	data := fxData(11, 20<<20)
	full := f.backup(fxSpec{start: day(1), startSeg: 2, stopSeg: 2, files: []fxFile{{"base/5/16400", data}}, objectSize: 32 << 20})
	pf := full.Files[0]
	if len(pf.Extents) != 1 {
		t.Fatalf("fixture: %d extents", len(pf.Extents))
	}
	changed := slices.Clone(data)
	id := fxID(day(2), false)
	key := repo.BackupDataKey(id, 1)
	var fresh []byte
	var exts []backup.Extent
	for off := int64(0); off < int64(len(data)); off += page {
		e := backup.Extent{Off: off, Len: page, Key: pf.Extents[0].Key, At: pf.Extents[0].At + off}
		if (off/page)%7 == 3 {
			copy(changed[off:], fxData(uint64(off), 64))
			e.Key, e.At = key, int64(len(fresh))
			fresh = append(fresh, changed[off:off+page]...)
		}
		if k := len(exts); k > 0 && exts[k-1].Key == e.Key && exts[k-1].At+exts[k-1].Len == e.At {
			exts[k-1].Len += e.Len
			continue
		}
		exts = append(exts, e)
	}
	sum, err := f.r.Put(f.ctx, key, strings.NewReader(string(fresh)))
	if err != nil {
		t.Fatal(err)
	}
	m := f.manifest(id, full, 1, 3, 3)
	m.Objects = []backup.Object{{Key: key, RawSize: sum.RawSize, StoredSize: sum.StoredSize, Sum: sum.Sum}}
	m.Files = []backup.File{{Path: "base/5/16400", Size: int64(len(changed)), Sums: fxSums(changed), Extents: exts}}
	if err := backup.WriteManifest(f.ctx, f.r, m); err != nil {
		t.Fatal(err)
	}
	f.wal(1, 2, 3)
	for _, budget := range []int64{0, 1, 3 * page} {
		rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{Jobs: 2, BufferBudget: budget})
		if err != nil || rep.Units != 6 || rep.Objects != 2 {
			t.Errorf("budget %d: %v, %d units (want 6), %d objects", budget, err, rep.Units, rep.Objects)
		}
	}
	// A changed page stored wrong: the unit holding it no longer matches.
	m.ID, m.Objects = fxID(day(3), false), nil
	m.Files[0].Extents = slices.Clone(exts)
	m.Files[0].Extents[1].At += 1
	if err := backup.WriteManifest(f.ctx, f.r, m); err != nil {
		t.Fatal(err)
	}
	for _, budget := range []int64{0, 1} {
		rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{ID: m.ID, Jobs: 2, BufferBudget: budget})
		ps := problemsOf(rep, backup.ProblemContent)
		if !errors.Is(err, backup.ErrVerify) || len(ps) != 1 ||
			!strings.HasPrefix(ps[0].Message, "backup "+m.ID+": file base/5/16400: bytes 0-8388607 do not match the manifest") {
			t.Errorf("budget %d: %v, %+v", budget, err, rep.Problems)
		}
	}
}
