package archive

import (
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/teststore"
)

func TestParseSpoolFileName(t *testing.T) {
	size := getSegSize(t, 16<<20)
	sum := "abcdef01"
	good := spoolFileName("0000000200000001000000FE", 7310000000000000042, 16<<20, 0xabcdef01)
	sf, ok := parseSpoolFileName(good, size)
	if !ok || sf.name != "0000000200000001000000FE" || sf.sys != 7310000000000000042 || sf.tli != 2 || sf.seg != 0x1FE || sf.size != 16<<20 ||
		sf.crc != 0xabcdef01 || sf.file != good {
		t.Fatalf("parse %q: %+v, %v", good, sf, ok)
	}
	for _, bad := range []string{
		"",
		"000000010000000000000001",
		"000000010000000000000001.1.16777216",
		"000000010000000000000001.16777216." + sum, // no system identifier
		"000000010000000000000001.1.16777216." + sum[:7],
		"000000010000000000000001.1.16777216." + sum + "0",
		"000000010000000000000001.1.16777216." + strings.ToUpper(sum),
		"000000010000000000000001.1.016777216." + sum,
		"000000010000000000000001.01.16777216." + sum,
		"000000010000000000000001.-1.16777216." + sum,
		"000000010000000000000001.1.-1." + sum,
		"000000010000000000000001.1.x." + sum,
		"000000010000000000000001.18446744073709551616.1." + sum,
		"000000010000000000000100.1.16777216." + sum, // impossible low field
		"00000002.history.1.1." + sum,
		spoolTempPrefix + "000000010000000000000001-abc",
		"000000010000000000000001.1.16777216." + sum + ".x",
	} {
		if sf, ok := parseSpoolFileName(bad, size); ok {
			t.Errorf("parse %q accepted: %+v", bad, sf)
		}
	}
}

func FuzzParseSpoolFileName(f *testing.F) {
	f.Add(spoolFileName("000000010000000000000001", 1, 16<<20, 0x0f0f0f0f))
	f.Add(spoolFileName("00000001000000000000000A", 0, 0, 0))
	f.Add("000000010000000000000001.1.2")
	f.Add(".tmp-x")
	size, _ := pg.NewWALSegmentSize(16 << 20)
	f.Fuzz(func(t *testing.T, s string) {
		sf, ok := parseSpoolFileName(s, size)
		if !ok {
			return
		}
		if got := spoolFileName(sf.name, sf.sys, sf.size, sf.crc); got != s || sf.file != s {
			t.Fatalf("parse %q then format: %q", s, got)
		}
		if pg.SegmentName(sf.tli, sf.seg, size) != sf.name {
			t.Fatalf("parse %q: segment fields do not match the name %s", s, sf.name)
		}
	})
}

// spoolPut writes data as a complete spool file of cluster sys for
// segment name in dir.
func spoolPut(t testing.TB, dir string, sys uint64, name string, data []byte) spoolFile {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	crc := crc32.Checksum(data, castagnoli)
	file := spoolFileName(name, sys, int64(len(data)), crc)
	if err := os.WriteFile(filepath.Join(dir, file), data, 0o640); err != nil {
		t.Fatal(err)
	}
	return spoolFile{file: file, name: name, sys: sys, size: int64(len(data)), crc: crc}
}

// spoolLocked creates a temporary-looking file in dir and holds its lock
// until the test ends.
func spoolLocked(t testing.TB, dir, name string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := lockFile(f, true); err != nil && runtime.GOOS == "linux" {
		t.Fatal(err)
	}
}

// TestClaimSpooledRace: many claimers of one spool file, one winner; the
// losers see no error and leave nothing behind.
func TestClaimSpooledRace(t *testing.T) {
	dir := t.TempDir()
	data := getWALLike(getSegBytes, 7)
	for round := range 20 {
		sf := spoolPut(t, dir, 1, "000000010000000000000005", data)
		var wins atomic.Int32
		var wg sync.WaitGroup
		dests := t.TempDir()
		for i := range 32 {
			wg.Go(func() {
				buf := make([]byte, copyBufSize)
				dest := filepath.Join(dests, strings.Repeat("d", i+1))
				ok, err := claimSpooled(dir, sf, dest, buf)
				if err != nil {
					t.Errorf("round %d: claim: %v", round, err)
				}
				if ok {
					wins.Add(1)
					getCheck(t, dest, data)
				} else if _, err := os.Stat(dest); err == nil {
					t.Errorf("round %d: a losing claim wrote %s", round, dest)
				}
			})
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d claims won", round, n)
		}
		if left := getDirNames(t, dir); len(left) != 0 {
			t.Fatalf("round %d: spool holds %q", round, left)
		}
	}
}

// TestClaimSpooledCrossDevice serves from a spool on another filesystem
// by copying.
func TestClaimSpooledCrossDevice(t *testing.T) {
	other := os.Getenv("WALFERRY_TEST_OTHER_FS")
	if other == "" {
		other = "/dev/shm"
	}
	dest := t.TempDir()
	var a, b syscall.Stat_t
	if syscall.Stat(other, &a) != nil || syscall.Stat(dest, &b) != nil || a.Dev == b.Dev {
		t.Skipf("no second filesystem (set WALFERRY_TEST_OTHER_FS to a directory on another filesystem than %s)", dest)
	}
	spool, err := os.MkdirTemp(other, "walferry-spool-")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(spool) })
	data := getWALLike(getSegBytes, 8)
	buf := make([]byte, copyBufSize)
	sf := spoolPut(t, spool, 1, "000000010000000000000006", data)
	ok, err := claimSpooled(spool, sf, filepath.Join(dest, "RECOVERYXLOG"), buf)
	if !ok || err != nil {
		t.Fatalf("claim across filesystems: %v, %v", ok, err)
	}
	getCheck(t, filepath.Join(dest, "RECOVERYXLOG"), data)
	if left := getDirNames(t, spool); len(left) != 0 {
		t.Errorf("spool holds %q", left)
	}
	getNoTemps(t, dest)
}

func TestCleanTemps(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{".tmp-a", ".tmp-b"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	spoolLocked(t, dir, ".tmp-locked")
	names := []string{".tmp-a", ".tmp-b", ".tmp-locked", ".tmp-gone"}
	if n := cleanTemps(dir, names, time.Now()); n != 0 {
		t.Errorf("removed %d fresh temporary files", n)
	}
	want := 2
	if runtime.GOOS != "linux" {
		want = 3 // no locks: age alone decides
	}
	if n := cleanTemps(dir, names, time.Now().Add(2*tempMaxAge)); n != want {
		t.Errorf("removed %d stale temporary files, want %d", n, want)
	}
	if runtime.GOOS == "linux" {
		if got := getDirNames(t, dir); !slices.Equal(got, []string{".tmp-locked"}) {
			t.Errorf("left %q, want the locked file only", got)
		}
	}
}

// TestSpoolCleanup: serving a segment leaves in the spool only the
// prefetch window of its timeline, removes temporary files of dead
// processes, keeps those in use, and never touches foreign files.
func TestSpoolCleanup(t *testing.T) {
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	size := getSegSize(t, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 8, r)
	seg := func(tli pg.TimeLineID, i int) string { return pg.SegmentName(tli, pg.SegNo(i), size) }
	wal := getPGWal(t)
	spool := filepath.Join(wal, ".walferry", "prefetch")
	junk := []byte("old")
	for _, name := range []string{seg(1, 1), seg(1, 3), seg(1, 20), seg(2, 6), seg(2, 7)} {
		spoolPut(t, spool, getSysID, name, junk)
	}
	// Another cluster's segment 6, with the right name and content for
	// that cluster: never served here, and removed.
	spoolPut(t, spool, getSysID+1, seg(1, 6), getWALLike(getSegBytes, 6))
	// Segment 5's spool file does not match the checksum in its name.
	bad := spoolPut(t, spool, getSysID, seg(1, 5), segs[seg(1, 5)])
	if err := os.WriteFile(filepath.Join(spool, bad.file), getWALLike(getSegBytes, 1234), 0o640); err != nil {
		t.Fatal(err)
	}
	spoolPut(t, spool, getSysID, seg(1, 6), segs[seg(1, 6)]) // in the window: kept and served
	foreign := []string{"README", seg(1, 7), "000000010000000000000007.partial", "notes.txt"}
	for _, n := range foreign {
		if err := os.WriteFile(filepath.Join(spool, n), []byte("not ours"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{filepath.Join(spool, spoolTempPrefix+"dead"), filepath.Join(wal, destTempPrefix+"dead")} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	spoolLocked(t, spool, spoolTempPrefix+"busy")
	spoolLocked(t, wal, destTempPrefix+"busy")

	g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: 2})
	g.now = func() time.Time { return time.Now().Add(2 * tempMaxAge) }
	dest := filepath.Join(wal, "RECOVERYXLOG")
	if err := g.Get(t.Context(), seg(1, 5), dest); err != nil {
		t.Fatal(err)
	}
	// The junk spool file of segment 5 failed verification: fetched.
	getCheck(t, dest, segs[seg(1, 5)])
	want := append([]string{spoolTempPrefix + "busy"}, foreign...)
	for _, i := range []int{6, 7} {
		want = append(want, spoolFileName(seg(1, i), getSysID, getSegBytes, crc32.Checksum(segs[seg(1, i)], castagnoli)))
	}
	if runtime.GOOS != "linux" {
		want = want[1:] // without locks the "busy" file is as stale as any
	}
	slices.Sort(want)
	if got := getDirNames(t, spool); !slices.Equal(got, want) {
		t.Errorf("spool holds\n%q\nwant\n%q", got, want)
	}
	wantWal := []string{destTempPrefix + "busy", ".walferry/", "RECOVERYXLOG"}
	if runtime.GOOS != "linux" {
		wantWal = wantWal[1:]
	}
	if got := getDirNames(t, wal); !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(wantWal))) {
		t.Errorf("pg_wal holds %q, want %q", got, wantWal)
	}
	for i := 6; i <= 7; i++ {
		if err := g.Get(t.Context(), seg(1, i), dest); err != nil {
			t.Fatal(err)
		}
		getCheck(t, dest, segs[seg(1, i)])
	}
}

// TestSpoolBounded: a long recovery never lets the spool grow beyond the
// window, whatever the mix of one-shot calls.
func TestSpoolBounded(t *testing.T) {
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	size := getSegSize(t, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 40, r)
	wal := getPGWal(t)
	spool := filepath.Join(wal, ".walferry", "prefetch")
	dest := filepath.Join(wal, "RECOVERYXLOG")
	for i := 1; i <= 40; i++ {
		// Depth varies between calls, as after a configuration change.
		depth := 1 + i%5
		g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: depth})
		name := pg.SegmentName(1, pg.SegNo(i), size)
		if err := g.Get(t.Context(), name, dest); err != nil {
			t.Fatal(err)
		}
		getCheck(t, dest, segs[name])
		if files := getSpoolFiles(t, spool, getSegBytes); len(files) > depth {
			t.Fatalf("after %s with depth %d the spool holds %d files", name, depth, len(files))
		}
		getNoTemps(t, spool, wal)
	}
}
