package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
)

const (
	parentID = "20261122T100000F"
	childID  = "20261122T110000I"
	mib      = 1 << 20
)

var testCluster = repo.Cluster{SystemID: 7310012345678901234, PGMajor: 15, WALSegmentSize: 16 << 20, Source: "test"}

// newRepo returns an initialized repository on a fresh directory and
// the directory (objects are files under it).
func newRepo(t testing.TB) (*repo.Repo, string) {
	t.Helper()
	ctx := context.Background()
	st, root := teststore.FS(t)
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: testCluster, Compression: "lz4", CreatedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r, root
}

// object accumulates the raw bytes of one data object.
type object struct {
	key string
	buf bytes.Buffer
}

// put appends b and returns its raw offset.
func (o *object) put(b []byte) int64 {
	at := int64(o.buf.Len())
	o.buf.Write(b)
	return at
}

// fixture is a synthetic backup and what restoring it must give.
type fixture struct {
	m       *backup.Manifest
	want    map[string][]byte // data directory path -> content
	objects map[string]*object
	tsDir   string // where the tablespace was when backed up
}

func sums(b []byte) []string {
	var out []string
	for off := 0; off < len(b); off += backup.UnitSize {
		s := sha256.Sum256(b[off:min(off+backup.UnitSize, len(b))])
		out = append(out, hex.EncodeToString(s[:]))
	}
	return out
}

func crcs(b []byte) []uint32 {
	var out []uint32
	for off := 0; off < len(b); off += backup.UnitSize {
		out = append(out, crc32.Checksum(b[off:min(off+backup.UnitSize, len(b))], castagnoli))
	}
	return out
}

func randomBytes(seed uint64, n int) []byte {
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

// addFile records a file whose extents are given as (object, length)
// pieces in file order.
func (fx *fixture) addFile(path string, content []byte, mode uint32, parts ...any) {
	f := backup.File{Path: path, Size: int64(len(content)), Mode: mode, MTime: 1763800000 + int64(len(fx.m.Files)), Sums: sums(content), CRCs: crcs(content)}
	if path == "base/5/2608" {
		f.CRCs = nil // as in manifests written before File.CRCs: checked by SHA-256
	}
	var off int64
	for i := 0; i < len(parts); i += 2 {
		o := parts[i].(*object)
		n := int64(parts[i+1].(int))
		at := o.put(content[off : off+n])
		f.Extents = append(f.Extents, backup.Extent{Off: off, Len: n, Key: o.key, At: at})
		off += n
	}
	if off != int64(len(content)) {
		panic("parts do not cover " + path)
	}
	fx.m.Files = append(fx.m.Files, f)
	fx.want[path] = content
}

// newFixture writes an incremental backup into r: its files are spread
// over three objects of its own and one of its parent's, with a file
// split across two objects, files bundled in one object, an empty file,
// a file mostly of zeros, a tablespace, and bytes in objects no file needs.
func newFixture(t *testing.T, r *repo.Repo) *fixture {
	t.Helper()
	ctx := context.Background()
	fx := &fixture{want: map[string][]byte{}, objects: map[string]*object{}, tsDir: filepath.Join(t.TempDir(), "ts-orig")}
	obj := func(key string) *object { o := &object{key: key}; fx.objects[key] = o; return o }
	a := obj(repo.BackupDataKey(childID, 0))
	b := obj(repo.BackupDataKey(childID, 1))
	c := obj(repo.BackupDataKey(childID, 2))
	p := obj(repo.BackupDataKey(parentID, 0))
	unused := obj(repo.BackupDataKey(childID, 3)) // no extent points here
	unused.put(randomBytes(99, 4096))
	p.put(randomBytes(98, 5000)) // parent bytes this backup does not use

	owner := ""
	if _, err := user.Lookup("postgres"); err == nil {
		owner = "postgres"
	}
	tsPath := "pg_tblspc/16385/PG_15_202209061"
	fx.m = &backup.Manifest{
		FormatVersion: backup.ManifestVersion, ID: childID, Type: backup.Incremental, Parent: parentID, Mode: "local",
		Label: "test", StartTime: time.Date(2026, 11, 22, 11, 0, 0, 0, time.UTC), StopTime: time.Date(2026, 11, 22, 11, 0, 5, 0, time.UTC),
		StartLSN: 0x3000028, StopLSN: 0x3000100, Timeline: 1, StartWAL: "000000010000000000000003", StopWAL: "000000010000000000000003",
		SystemID: testCluster.SystemID, PGVersionNum: 150004, Owner: owner,
		BackupLabel:   "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nCHECKPOINT LOCATION: 0/3000060\n",
		TablespaceMap: "16385 " + fx.tsDir + "\n",
		Tablespaces:   []backup.Tablespace{{OID: 16385, Name: "ts1", Location: fx.tsDir}},
		Dirs: []backup.Dir{
			{Path: ".", Mode: 0o700}, {Path: "base", Mode: 0o700}, {Path: "base/1", Mode: 0o700}, {Path: "base/5", Mode: 0o700},
			{Path: "global", Mode: 0o700}, {Path: "pg_wal", Mode: 0o700}, {Path: "pg_wal/archive_status", Mode: 0o700},
			{Path: "pg_tblspc", Mode: 0o700}, {Path: "pg_tblspc/16385", Mode: 0o700}, {Path: tsPath, Mode: 0o700},
			{Path: tsPath + "/5", Mode: 0o700}, {Path: "pg_stat", Mode: 0o700}, {Path: "pg_logical/snapshots", Mode: 0o700},
		},
	}
	big := randomBytes(1, 20*mib+12345) // three units, split over a and b
	fx.addFile("base/5/16384", big, 0o600, a, 10*mib, b, 10*mib+12345)
	fx.addFile("base/5/1259", randomBytes(2, 8192), 0o600, a, 8192) // bundled in a with the next ones
	fx.addFile("base/5/1259_fsm", randomBytes(3, 24576), 0o600, a, 24576)
	fx.addFile("base/5/2608", randomBytes(4, 9*mib), 0o600, a, 3*mib, c, 6*mib) // two units, over a and c
	fx.addFile("PG_VERSION", []byte("15\n"), 0o600, p, 3)                       // from the parent
	fx.addFile("base/1/112", randomBytes(5, 16384), 0o640, p, 16384)
	fx.addFile("base/5/16390_vm", nil, 0o600) // empty
	sparse := make([]byte, 3*mib)
	copy(sparse, randomBytes(6, 4096))
	copy(sparse[3*mib-8192:], randomBytes(7, 8192))
	fx.addFile("base/5/sparse", sparse, 0o600, c, 4096, c, 3*mib-4096-8192, c, 8192)
	fx.addFile("global/pg_control", randomBytes(8, 8192), 0o600, c, 8192)
	fx.addFile("postgresql.conf", []byte("shared_buffers = 32MB\n"), 0o600, c, 22)
	auto := []byte("# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\nwork_mem = '8MB'\nrestore_command = 'cp /old/%f %p'\n")
	fx.addFile(autoConf, auto, 0o600, b, len(auto))
	fx.addFile(tsPath+"/5/16391", randomBytes(9, 40000), 0o600, b, 40000)
	a.put(randomBytes(10, 3000)) // a tail no file needs

	for _, o := range fx.objects {
		if _, err := r.Put(ctx, o.key, bytes.NewReader(o.buf.Bytes())); err != nil {
			t.Fatal(err)
		}
	}
	if err := backup.WriteManifest(ctx, r, fx.m); err != nil {
		t.Fatal(err)
	}
	return fx
}

// fullManifest returns the manifest of a full backup id of no file, on
// timeline 1, from LSN start to stop.
func fullManifest(id string, start, stop pg.LSN) *backup.Manifest {
	size, _ := pg.NewWALSegmentSize(testCluster.WALSegmentSize)
	return &backup.Manifest{FormatVersion: backup.ManifestVersion, ID: id, Type: backup.Full, Mode: "local", Label: "test",
		StartLSN: start, StopLSN: stop, Timeline: 1,
		StartWAL: pg.SegmentNameOf(1, start, size), StopWAL: pg.SegmentName(1, size.SegNoBefore(stop), size),
		SystemID: testCluster.SystemID, PGVersionNum: 150004, BackupLabel: "START WAL LOCATION: " + start.String() + "\n"}
}

func testOptions(dir string) Options {
	return Options{
		Backup: backup.Latest, DataDir: dir, Jobs: 3,
		RestoreCommand: RestoreCommand{Executable: "/usr/local/bin/walferry", Repos: []string{"file:///backups/db"}},
		Now:            func() time.Time { return time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC) },
	}
}

// checkRestored compares every file of the backup with what dir holds,
// and checks the files a restore adds and the ones it must not leave.
func checkRestored(t *testing.T, fx *fixture, dir string) {
	t.Helper()
	for p, want := range fx.want {
		got, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if p == autoConf {
			if !bytes.HasPrefix(got, []byte("# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\nwork_mem = '8MB'\n# Added by walferry restore "+fx.m.ID)) {
				t.Errorf("%s:\n%s", p, got)
			}
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes differ from the backup's %d", p, len(got), len(want))
		}
	}
	for i := range fx.m.Files {
		f := &fx.m.Files[i]
		fi, err := os.Stat(filepath.Join(dir, f.Path))
		if err != nil || f.Path == autoConf { // rewritten by the restore
			continue
		}
		if fi.ModTime().Unix() != f.MTime {
			t.Errorf("%s: mtime %d, want %d", f.Path, fi.ModTime().Unix(), f.MTime)
		}
		if fi.Mode().Perm() != os.FileMode(f.Mode) {
			t.Errorf("%s: mode %v, want %v", f.Path, fi.Mode().Perm(), os.FileMode(f.Mode))
		}
	}
	label, err := os.ReadFile(filepath.Join(dir, backupLabel))
	if err != nil || string(label) != fx.m.BackupLabel {
		t.Errorf("backup_label = %q, %v", label, err)
	}
	for _, p := range []string{recoverySig, "pg_wal/archive_status", "pg_logical/snapshots", "pg_stat"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, controlTemp)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s is left: %v", controlTemp, err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode: %v, %v", fi.Mode(), err)
	}
}

func TestRestoreFull(t *testing.T) {
	r, _ := newRepo(t)
	fx := newFixture(t, r)
	dir := filepath.Join(t.TempDir(), "new", "pgdata") // missing, parent too
	ts := filepath.Join(t.TempDir(), "it's a tablespace")
	o := testOptions(dir)
	o.TablespaceMap = []string{"ts1=" + ts}
	var phases []string
	o.Progress = func(p Progress) {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
		if p.Done > p.Total {
			t.Errorf("progress %s: done %d > total %d", p.Phase, p.Done, p.Total)
		}
	}
	res, err := Run(context.Background(), r, o)
	if err != nil {
		t.Fatal(err)
	}
	checkRestored(t, fx, dir)

	if target, err := os.Readlink(filepath.Join(dir, "pg_tblspc/16385")); err != nil || target != ts {
		t.Errorf("pg_tblspc/16385 -> %q, %v; want %s", target, err, ts)
	}
	if _, err := os.Stat(fx.tsDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the original tablespace location was created: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(ts, "PG_15_202209061/5/16391")); !bytes.Equal(got, fx.want["pg_tblspc/16385/PG_15_202209061/5/16391"]) {
		t.Error("the tablespace file was not written into the relocated directory")
	}
	tsmap, _ := os.ReadFile(filepath.Join(dir, tablespaceMap))
	if string(tsmap) != "16385 "+ts+"\n" {
		t.Errorf("tablespace_map = %q", tsmap)
	}
	var total int64
	for _, f := range fx.m.Files {
		total += f.Size
	}
	want := Result{Backup: childID, DataDir: dir, Files: len(fx.m.Files), FilesFetched: len(fx.m.Files),
		Bytes: total, BytesFetched: total, ObjectsRead: 4, Signal: recoverySig,
		Tablespaces: map[string]string{"16385": ts}, Owner: fx.m.Owner}
	var rawAll int64
	for k, ob := range fx.objects {
		if k != repo.BackupDataKey(childID, 3) {
			rawAll += int64(ob.buf.Len())
		}
	}
	want.BytesRead, want.Duration = rawAll, res.Duration
	if got := res; !equalResults(got, want) {
		t.Errorf("result\n got %+v\nwant %+v", got, want)
	}
	if strings.Join(phases, ",") != "fetch,verify" {
		t.Errorf("progress phases %v", phases)
	}
	if os.Geteuid() == 0 && fx.m.Owner != "" {
		u, _ := user.Lookup(fx.m.Owner)
		for _, p := range []string{".", "base/5/16384", "pg_tblspc/16385", backupLabel, autoConf, "global/pg_control"} {
			fi, err := os.Lstat(filepath.Join(dir, p))
			if err != nil {
				t.Fatal(err)
			}
			if uid := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)); uid != u.Uid {
				t.Errorf("%s is owned by uid %s, want %s (%s)", p, uid, u.Uid, fx.m.Owner)
			}
		}
		if fi, _ := os.Stat(ts); strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)) != u.Uid {
			t.Errorf("the tablespace directory is not owned by %s", fx.m.Owner)
		}
	}
}

func equalResults(a, b Result) bool {
	if len(a.Tablespaces) != len(b.Tablespaces) {
		return false
	}
	for k, v := range a.Tablespaces {
		if b.Tablespaces[k] != v {
			return false
		}
	}
	a.Tablespaces, b.Tablespaces = nil, nil
	return reflect.DeepEqual(a, b)
}

func TestRestoreDelta(t *testing.T) {
	r, _ := newRepo(t)
	fx := newFixture(t, r)
	dir := filepath.Join(t.TempDir(), "pgdata")
	ts := filepath.Join(t.TempDir(), "ts")
	o := testOptions(dir)
	o.TablespaceMap = []string{"16385=" + ts}
	if _, err := Run(context.Background(), r, o); err != nil {
		t.Fatal(err)
	}

	// What an old primary looks like: changed, extra, shortened and
	// missing files, a directory the backup does not have.
	big := filepath.Join(dir, "base/5/16384")
	f, err := os.OpenFile(big, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff, 0xfe}, 9*mib+7); err != nil { // unit 1
		t.Fatal(err)
	}
	f.Close()
	must(t, os.WriteFile(filepath.Join(dir, "base/5/99999"), []byte("new relation"), 0o600))
	must(t, os.MkdirAll(filepath.Join(dir, "junk/sub"), 0o700))
	must(t, os.WriteFile(filepath.Join(dir, "junk/sub/file"), []byte("x"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "pg_wal/000000010000000000000009"), make([]byte, 1000), 0o600))
	must(t, os.Truncate(filepath.Join(dir, "base/5/1259_fsm"), 100))
	must(t, os.Remove(filepath.Join(dir, "PG_VERSION")))
	must(t, os.WriteFile(filepath.Join(ts, "PG_15_202209061/5/77777"), []byte("x"), 0o600))
	must(t, os.Mkdir(filepath.Join(ts, "PG_16_202307071"), 0o700)) // another version's: left alone
	// In the file of zeros, a unit whose zeros must come back.
	must(t, os.WriteFile(filepath.Join(dir, "base/5/sparse.tmp"), nil, 0o600))
	sf, _ := os.OpenFile(filepath.Join(dir, "base/5/sparse"), os.O_WRONLY, 0)
	sf.WriteAt([]byte("garbage in the gap"), mib)
	sf.Close()

	o.Delta = true
	res, err := Run(context.Background(), r, o)
	if err != nil {
		t.Fatal(err)
	}
	checkRestored(t, fx, dir)
	if _, err := os.Stat(filepath.Join(ts, "PG_16_202307071")); err != nil {
		t.Errorf("another version's tablespace directory was removed: %v", err)
	}
	// Fetched: 16384 (unit 1), 1259_fsm, PG_VERSION, sparse (unit 0), and
	// postgresql.auto.conf, which the first restore changed.
	autoSize := int64(len(fx.want[autoConf]))
	wantBytes := int64(8*mib) + 24576 + 3 + 3*mib + autoSize
	// Removed: 99999, junk/sub/file, the segment, 77777, sparse.tmp, and
	// the first restore's backup_label, tablespace_map and recovery.signal.
	if res.FilesFetched != 5 || res.FilesKept != len(fx.m.Files)-5 || res.FilesRemoved != 8 || res.DirsRemoved != 2 ||
		res.BytesFetched != wantBytes || res.ObjectsRead != 4 {
		t.Errorf("delta: fetched %d kept %d removed %d files and %d dirs, %d bytes from %d objects; want 5, %d, 8, 2, %d, 4",
			res.FilesFetched, res.FilesKept, res.FilesRemoved, res.DirsRemoved, res.BytesFetched, res.ObjectsRead, len(fx.m.Files)-5, wantBytes)
	}
	for _, p := range []string{"base/5/99999", "junk", "pg_wal/000000010000000000000009", "base/5/sparse.tmp"} {
		if _, err := os.Lstat(filepath.Join(dir, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s was not removed", p)
		}
	}

	// Only the last unit of the big file changed: its object (b) and the
	// one holding postgresql.auto.conf (b too) are read, nothing else.
	f, _ = os.OpenFile(big, os.O_WRONLY, 0)
	f.WriteAt([]byte{1}, 20*mib)
	f.Close()
	res, err = Run(context.Background(), r, o)
	if err != nil {
		t.Fatal(err)
	}
	checkRestored(t, fx, dir)
	lastUnit := int64(len(fx.want["base/5/16384"]) - 16*mib)
	if res.ObjectsRead != 1 || res.FilesFetched != 2 || res.BytesFetched != lastUnit+autoSize || res.FilesRemoved != 3 {
		t.Errorf("second delta: %d objects, %d files, %d bytes fetched, %d removed; want 1, 2, %d, 3",
			res.ObjectsRead, res.FilesFetched, res.BytesFetched, res.FilesRemoved, lastUnit+autoSize)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestRestoreCorruptObject(t *testing.T) {
	r, root := newRepo(t)
	fx := newFixture(t, r)
	key := repo.BackupDataKey(childID, 2)
	path := filepath.Join(root, filepath.FromSlash(key))
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0x40
	must(t, os.WriteFile(path, bad, 0o600))

	dir := filepath.Join(t.TempDir(), "pgdata")
	_, err = Run(context.Background(), r, testOptions(dir))
	if !errors.Is(err, codec.ErrCorrupt) || !errors.Is(err, ErrIncomplete) {
		t.Fatalf("restore from a corrupt object: %v; want ErrCorrupt and ErrIncomplete", err)
	}
	for _, s := range []string{key, childID, "restore incomplete", "--delta"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}
	for _, p := range []string{backupLabel, recoverySig, controlFile} {
		if _, err := os.Lstat(filepath.Join(dir, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists after a failed restore", p)
		}
	}

	// Repaired repository: a delta restore finishes the job.
	must(t, os.WriteFile(path, good, 0o600))
	o := testOptions(dir)
	o.Delta = true
	if _, err := Run(context.Background(), r, o); err != nil {
		t.Fatal(err)
	}
	checkRestored(t, fx, dir)
}

// TestRestoreSumMismatch: a restored unit that does not match its
// manifest checksum fails the restore, whether the manifest has CRC-32Cs
// (checked) or only SHA-256s (older manifests), and a manifest whose checks
// do not cover the file is refused as damaged.
func TestRestoreSumMismatch(t *testing.T) {
	content := randomBytes(1, 5000)
	other := randomBytes(2, 5000)
	for _, tc := range []struct {
		name string
		sums []string
		crcs []uint32
		want string
	}{
		{"SHA-256 only, wrong", sums(other), nil, "SHA-256"},
		{"CRC-32C wrong", sums(content), crcs(other), "CRC-32C"},
		{"CRC-32C count wrong", sums(content), []uint32{1, 2}, "CRC-32C checks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRepo(t)
			ctx := context.Background()
			o := &object{key: repo.BackupDataKey(parentID, 0)}
			at := o.put(content)
			m := fullManifest(parentID, 0x3000028, 0x3000100)
			m.Files = []backup.File{{Path: "base/1/1", Size: 5000, Mode: 0o600, Sums: tc.sums, CRCs: tc.crcs,
				Extents: []backup.Extent{{Off: 0, Len: 5000, Key: o.key, At: at}}}}
			if _, err := r.Put(ctx, o.key, bytes.NewReader(o.buf.Bytes())); err != nil {
				t.Fatal(err)
			}
			must(t, backup.WriteManifest(ctx, r, m))
			dir := t.TempDir()
			_, err := Run(ctx, r, testOptions(dir))
			if err == nil || !strings.Contains(err.Error(), "base/1/1") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v; want a failure naming base/1/1 and %s", err, tc.want)
			}
			if tc.want != "CRC-32C checks" && !errors.Is(err, codec.ErrCorrupt) {
				t.Errorf("got %v; want ErrCorrupt", err)
			}
			if _, err := os.Lstat(filepath.Join(dir, backupLabel)); err == nil {
				t.Error("backup_label written")
			}
		})
	}
}

// TestRestoreRefusesDamagedManifest: a manifest whose extents do not
// describe its files is refused before anything is written, as verify
// refuses it. Restore used to fill gaps with zeros, write overlapping
// extents twice and read any key as file content.
func TestRestoreRefusesDamagedManifest(t *testing.T) {
	content := randomBytes(1, 5000)
	key := repo.BackupDataKey(parentID, 0)
	for _, tc := range []struct {
		name    string
		extents []backup.Extent
		want    string
	}{
		{"gap", []backup.Extent{{Off: 0, Len: 4000, Key: key, At: 0}}, "bytes 4000-4999 of 5000 are in no extent"},
		{"overlap", []backup.Extent{{Off: 0, Len: 5000, Key: key, At: 0}, {Off: 10, Len: 10, Key: key, At: 10}}, "inside the previous one"},
		{"empty extent", []backup.Extent{{Off: 0, Len: 5000, Key: key, At: 0}, {Off: 5000, Len: 0, Key: key, At: 5000}}, "has length 0"},
		{"not a backup object", []backup.Extent{{Off: 0, Len: 5000, Key: repo.MetadataKey, At: 0}}, "not a backup object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRepo(t)
			ctx := context.Background()
			o := &object{key: key}
			o.put(content)
			if _, err := r.Put(ctx, o.key, bytes.NewReader(o.buf.Bytes())); err != nil {
				t.Fatal(err)
			}
			m := fullManifest(parentID, 0x3000028, 0x3000100)
			m.Files = []backup.File{{Path: "base/1/1", Size: 5000, Mode: 0o600, Sums: sums(content), Extents: tc.extents}}
			must(t, backup.WriteManifest(ctx, r, m))
			dir := t.TempDir()
			_, err := Run(ctx, r, testOptions(dir))
			var me *backup.ManifestError
			if !errors.As(err, &me) || !strings.Contains(err.Error(), "base/1/1") || !strings.Contains(err.Error(), tc.want) ||
				errors.Is(err, codec.ErrCorrupt) || errors.Is(err, ErrIncomplete) {
				t.Fatalf("got %v; want a damaged manifest naming base/1/1 and %q", err, tc.want)
			}
			if names, _ := os.ReadDir(dir); len(names) != 0 {
				t.Errorf("the refused restore wrote %d entries into %s", len(names), dir)
			}
		})
	}
}

// TestRestoreChecksUnitsWhileWritten: a full backup's units arrive in
// order, each in many writes (a unit is 8 MiB, a write at most bufSize),
// and are all checked as they are written, by CRC-32C or by SHA-256 for a
// manifest without CRCs: nothing is read back.
func TestRestoreChecksUnitsWhileWritten(t *testing.T) {
	r, _ := newRepo(t)
	ctx := context.Background()
	m := fullManifest(parentID, 0x3000028, 0x3000100)
	want := map[string][]byte{}
	for i, withCRCs := range []bool{true, false} {
		content := randomBytes(uint64(i), 2*backup.UnitSize+12345)
		o := &object{key: repo.BackupDataKey(parentID, i)}
		at := o.put(content)
		if _, err := r.Put(ctx, o.key, bytes.NewReader(o.buf.Bytes())); err != nil {
			t.Fatal(err)
		}
		f := backup.File{Path: "base/1/" + strconv.Itoa(16384+i), Size: int64(len(content)), Mode: 0o600, Sums: sums(content),
			Extents: []backup.Extent{{Off: 0, Len: int64(len(content)), Key: o.key, At: at}}}
		if withCRCs {
			f.CRCs = crcs(content)
		}
		m.Files = append(m.Files, f)
		want[f.Path] = content
	}
	must(t, backup.WriteManifest(ctx, r, m))
	dir := t.TempDir()
	o := testOptions(dir)
	readBack := int64(-1)
	o.Progress = func(p Progress) {
		if p.Phase == "verify" {
			readBack = p.Total
		}
	}
	if _, err := Run(ctx, r, o); err != nil {
		t.Fatal(err)
	}
	switch {
	case readBack > 0:
		t.Errorf("verify read back %d bytes; want 0 (every unit checked while written)", readBack)
	case readBack == 0:
		t.Error("progress showed a verify phase with nothing to read back (\"verify 0 B / 0 B\"); a phase with nothing to do is not shown")
	}
	for p, content := range want {
		if got, err := os.ReadFile(filepath.Join(dir, p)); err != nil || !bytes.Equal(got, content) {
			t.Errorf("%s: %d bytes differ from the backup's %d (%v)", p, len(got), len(content), err)
		}
	}
}

func TestRestoreRefusals(t *testing.T) {
	r, _ := newRepo(t)
	newFixture(t, r)
	ctx := context.Background()
	tests := []struct {
		name  string
		setup func(t *testing.T, o *Options)
		wants []string
	}{
		{"non-empty directory", func(t *testing.T, o *Options) {
			must(t, os.WriteFile(filepath.Join(o.DataDir, "precious"), nil, 0o600))
		}, []string{"not empty", "--delta"}},
		{"running server", func(t *testing.T, o *Options) {
			must(t, os.WriteFile(filepath.Join(o.DataDir, "PG_VERSION"), nil, 0o600))
			must(t, os.WriteFile(filepath.Join(o.DataDir, "postmaster.pid"), nil, 0o600))
			o.Delta = true
		}, []string{"postmaster.pid", "stop"}},
		{"delta on something else", func(t *testing.T, o *Options) {
			must(t, os.WriteFile(filepath.Join(o.DataDir, "notes.txt"), nil, 0o600))
			o.Delta = true
		}, []string{"does not look like a PostgreSQL data directory"}},
		{"non-empty tablespace directory", func(t *testing.T, o *Options) {
			ts := t.TempDir()
			must(t, os.WriteFile(filepath.Join(ts, "x"), nil, 0o600))
			o.TablespaceMap = []string{"16385=" + ts}
		}, []string{"tablespace 16385", "not empty"}},
		{"unknown tablespace", func(t *testing.T, o *Options) {
			o.TablespaceMap = []string{"ts9=/srv/ts9"}
		}, []string{"ts9", "16385 (ts1)"}},
		{"target before the backup", func(t *testing.T, o *Options) {
			o.Backup = childID
			o.Target.LSN = "0/3000000"
		}, []string{"before the end of backup " + childID, "0/3000100"}},
		{"tablespace inside the data directory", func(t *testing.T, o *Options) {
			o.TablespaceMap = []string{"16385=" + filepath.Join(o.DataDir, "ts")}
		}, []string{"inside the data directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t.TempDir())
			tt.setup(t, &o)
			before := listDir(t, o.DataDir)
			_, err := Run(ctx, r, o)
			if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrIncomplete) {
				t.Fatalf("got %v; want ErrInvalid", err)
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if after := listDir(t, o.DataDir); after != before {
				t.Errorf("the directory changed: %s -> %s", before, after)
			}
		})
	}
}

func listDir(t *testing.T, dir string) string {
	var names []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		names = append(names, p)
		return nil
	})
	return strings.Join(names, ",")
}

func TestSelectBackupForTarget(t *testing.T) {
	r, _ := newRepo(t)
	ctx := context.Background()
	for i, id := range []string{"20261120T100000F", "20261121T100000F", "20261122T100000F"} {
		stop := pg.LSN(uint64(i+1) << 32)
		m := fullManifest(id, stop-0x1000, stop)
		m.StopTime = time.Date(2026, 11, 20+i, 10, 5, 0, 0, time.UTC)
		must(t, backup.WriteManifest(ctx, r, m))
	}
	tests := []struct {
		name string
		t    Target
		want string
	}{
		{"no target", Target{}, "20261122T100000F"},
		{"time between", Target{Time: "2026-11-21 12:00:00+00"}, "20261121T100000F"},
		{"time in another zone", Target{Time: "2026-11-22 12:00:00+05"}, "20261121T100000F"},
		{"time after all", Target{Time: "2026-11-23T00:00:00Z"}, "20261122T100000F"},
		{"lsn", Target{LSN: "1/FFFFFFFF"}, "20261120T100000F"},
		{"name cannot be compared", Target{Name: "before_upgrade"}, "20261122T100000F"},
	}
	for _, tt := range tests {
		m, err := selectBackup(ctx, r, "latest", tt.t)
		if err != nil || m.ID != tt.want {
			t.Errorf("%s: got %v, %v; want %s", tt.name, m, err, tt.want)
		}
	}
	_, err := selectBackup(ctx, r, "LATEST", Target{Time: "2026-11-19 00:00:00 UTC"})
	if !errors.Is(err, backup.ErrNoBackup) || !strings.Contains(err.Error(), "20261120T100000F") {
		t.Errorf("target before every backup: %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Options)
		want string // "" when valid
	}{
		{"plain", func(o *Options) {}, ""},
		{"no data directory", func(o *Options) { o.DataDir = "" }, "--pgdata"},
		{"two targets", func(o *Options) { o.Target.Time, o.Target.LSN = "2026-11-22 10:15:00+00", "0/1" }, "at most one"},
		{"immediate and name", func(o *Options) { o.Target.Immediate, o.Target.Name = true, "x" }, "at most one"},
		{"bad LSN", func(o *Options) { o.Target.LSN = "0x16" }, "--target-lsn"},
		{"bad xid", func(o *Options) { o.Target.XID = "-3" }, "--target-xid"},
		{"bad time", func(o *Options) { o.Target.Time = "yesterday" }, "--target-time"},
		{"bad zone", func(o *Options) { o.Target.Time = "2026-11-22 10:15:00 Mars/Olympus" }, "time zone"},
		{"pg time", func(o *Options) { o.Target.Time = "2026-11-22 10:15:00.123+00" }, ""},
		{"pg time, minutes offset", func(o *Options) { o.Target.Time = "2026-11-22 10:15:00+05:30" }, ""},
		{"pg time, zone name", func(o *Options) { o.Target.Time = "2026-11-22 10:15:00 Europe/Paris" }, ""},
		{"rfc3339", func(o *Options) { o.Target.Time = "2026-11-22T10:15:00Z" }, ""},
		{"no zone", func(o *Options) { o.Target.Time = "2026-11-22 10:15:00" }, "no time zone"},
		{"date without zone", func(o *Options) { o.Target.Time = "2026-11-22" }, "no time zone"},
		{"date with zone", func(o *Options) { o.Target.Time = "2026-11-22 UTC" }, ""},
		{"bad action", func(o *Options) { o.Target.LSN, o.Target.Action = "0/1", "explode" }, "promote, pause or shutdown"},
		{"action without target", func(o *Options) { o.Target.Action = "promote" }, "needs a recovery target"},
		{"exclusive without target", func(o *Options) { o.Target.Exclusive = true }, "--target-exclusive"},
		{"exclusive with lsn", func(o *Options) { o.Target.Exclusive, o.Target.LSN = true, "0/1" }, ""},
		{"bad timeline", func(o *Options) { o.Target.Timeline = "newest" }, "--target-timeline"},
		{"timeline number", func(o *Options) { o.Target.Timeline = "3" }, ""},
		{"long name", func(o *Options) { o.Target.Name = strings.Repeat("n", 64) }, "at most 63"},
		{"bad map", func(o *Options) { o.TablespaceMap = []string{"16385"} }, "OID=DIR"},
		{"relative map", func(o *Options) { o.TablespaceMap = []string{"16385=ts"} }, "absolute"},
		{"map twice", func(o *Options) { o.TablespaceMap = []string{"1=/a", "1=/b"} }, "twice"},
		{"negative jobs", func(o *Options) { o.Jobs = -1 }, "--jobs"},
	}
	for _, tt := range tests {
		o := testOptions("/tmp/pgdata")
		tt.edit(&o)
		err := o.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: got %v; want ErrInvalid containing %q", tt.name, err, tt.want)
		}
	}
}

// BenchmarkRestore restores a synthetic 512 MiB backup (16 files of 32
// MiB, pages half random half zeros, one object per file, lz4) from a
// filesystem repository and reports the throughput and each phase's share.
func BenchmarkRestore(b *testing.B) {
	ctx := context.Background()
	r, _ := newRepo(b)
	const files, size = 16, 32 * mib
	m := &backup.Manifest{FormatVersion: 1, ID: parentID, Type: backup.Full, SystemID: testCluster.SystemID, BackupLabel: "x\n",
		Dirs: []backup.Dir{{Path: "base", Mode: 0o700}, {Path: "base/5", Mode: 0o700}}}
	for i := 0; i < files; i++ {
		content := make([]byte, size)
		rnd := randomBytes(uint64(i), size/2)
		for p := 0; p < size/8192; p++ {
			copy(content[p*8192:p*8192+4096], rnd[p*4096:])
		}
		key := repo.BackupDataKey(parentID, i)
		if _, err := r.Put(ctx, key, bytes.NewReader(content)); err != nil {
			b.Fatal(err)
		}
		m.Files = append(m.Files, backup.File{Path: "base/5/" + strconv.Itoa(16384+i), Size: size, Mode: 0o600, Sums: sums(content),
			CRCs: crcs(content), Extents: []backup.Extent{{Off: 0, Len: size, Key: key}}})
	}
	if err := backup.WriteManifest(ctx, r, m); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(files * size)
	phases := map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := filepath.Join(b.TempDir(), "pgdata")
		o := testOptions(dir)
		o.Jobs = 0
		o.Progress = func(p Progress) { phases[p.Phase] = max(phases[p.Phase], p.Elapsed) }
		b.StartTimer()
		if _, err := Run(ctx, r, o); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		for k, v := range phases {
			b.ReportMetric(v.Seconds(), k+"-s")
		}
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

// TestTargetTimeReachable: a --target-time after every archived WAL object
// (beyond the clock-skew allowance) is refused, naming the newest WAL and
// its time; within the allowance it is tried; .partial files count only
// with --use-partial.
func TestTargetTimeReachable(t *testing.T) {
	ctx := context.Background()
	r, root := newRepo(t)
	stored := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	for key, at := range map[string]time.Time{
		"wal/0000000100000000/000000010000000000000003":         stored.Add(-time.Hour),
		"wal/0000000100000000/000000010000000000000004":         stored,
		"wal/0000000100000000/000000010000000000000005.partial": stored.Add(time.Hour),
		"wal/history/00000002.history":                          stored.Add(2 * time.Hour),
	} {
		if _, err := r.Put(ctx, key, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(filepath.Join(root, key), at, at); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		target  string
		partial bool
		want    string // "" when accepted
	}{
		{"2026-11-22 11:59:00+00", false, ""},
		{"2026-11-22 12:03:00+00", false, ""}, // within the clock-skew allowance
		{"2026-11-22 12:30:00+00", false, "000000010000000000000004"},
		{"2026-11-22 14:30:00+02", false, "2026-11-22 12:00:00Z"},
		{"2026-11-22 12:30:00+00", true, ""}, // the partial reaches further
		{"2026-11-22 14:00:00+00", true, "000000010000000000000005.partial"},
	} {
		o := testOptions(t.TempDir())
		o.Log = slog.New(slog.DiscardHandler)
		o.Target.Time, o.RestoreCommand.Partial = tt.target, tt.partial
		err := checkTimeReachable(ctx, r, o)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s (partial %v): %v", tt.target, tt.partial, err)
		case tt.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s (partial %v): got %v; want ErrInvalid naming %q", tt.target, tt.partial, err, tt.want)
		}
	}
}
