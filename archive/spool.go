package archive

// The prefetch spool: a directory of verified WAL segments waiting to be
// asked for, plus the temporary files of downloads and claims under way.
//
// Names in the spool (nothing else in the directory is ever touched):
//
//	<segment>.<system id>.<size>.<crc32c hex>
//	                                a complete, verified segment of the
//	                                cluster with that system identifier; the
//	                                name carries what it is checked against
//	.tmp-<segment>-<random>         a download being written, or a spool
//	                                file claimed by a Getter being served;
//	                                locked (flock) by its owner while in use
//
// Every change of state is a rename within one directory, so it is atomic:
// a download becomes visible under its final name only once verified, and
// a Getter serving a segment first claims it by renaming it to a temporary
// name of its own. Two Getters (in one process or several) racing for the
// same spool file cannot both win the rename: the loser gets ENOENT and
// fetches from the repository instead. Content under a final name is never
// modified in place; a file is only ever replaced by a rename of a file
// with the same verified content, or removed.

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/atomicfile"
	"github.com/walferry/walferry/internal/pg"
)

const (
	// spoolTempPrefix starts the names of temporary files in the spool.
	spoolTempPrefix = ".tmp-"
	// destTempPrefix starts the names of temporary files in the directory
	// of a Get's destination (pg_wal).
	destTempPrefix = ".walferry-get-"
	// tempGrace protects a just-created or just-renamed temporary file from
	// other processes' cleanup in the instant before its owner locks it.
	tempGrace = 10 * time.Second
	// tempMaxAge makes a temporary file stale when locks are not available
	// to tell whether its owner is alive.
	tempMaxAge = time.Minute
	// destCleanInterval spaces the scans of a destination directory for
	// temporary files left by killed processes.
	destCleanInterval = time.Minute
	fileMode          = 0o640
	spoolDirMode      = 0o700
)

// defaultSpoolDir returns the spool of a Get writing to destAbs when
// GetOptions.SpoolDir is empty: inside the destination's directory, so on
// the same filesystem and serving a segment is a rename.
func defaultSpoolDir(destAbs string) string {
	return filepath.Join(filepath.Dir(destAbs), ".walferry", "prefetch")
}

// spoolFile is a complete segment in the spool.
type spoolFile struct {
	file string // name in the spool directory
	name string // WAL segment name
	sys  uint64 // system identifier of the cluster it belongs to
	tli  pg.TimeLineID
	seg  pg.SegNo
	size int64
	crc  uint32 // CRC-32C (Castagnoli) of the content
}

// castagnoli is the CRC-32C table (SSE4.2 / ARMv8 CRC instructions).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// spoolFileName returns the spool name of segment name of cluster sys
// with size bytes and CRC-32C crc. The system identifier keeps clusters
// that were wrongly given one spool from serving each other's segments.
// The download was verified against the object's SHA-256; the CRC only
// guards the local copy between download and use, and costs a
// millisecond instead of SHA-256's ten on the hook's critical path.
func spoolFileName(name string, sys uint64, size int64, crc uint32) string {
	return fmt.Sprintf("%s.%d.%d.%08x", name, sys, size, crc)
}

// parseSpoolFileName parses a final spool name; ok is false for anything
// else (temporary files, foreign files).
func parseSpoolFileName(file string, size pg.WALSegmentSize) (spoolFile, bool) {
	name, rest, ok := strings.Cut(file, ".")
	if !ok {
		return spoolFile{}, false
	}
	sysText, rest, ok := strings.Cut(rest, ".")
	if !ok {
		return spoolFile{}, false
	}
	sizeText, sumText, ok := strings.Cut(rest, ".")
	if !ok || len(sumText) != 8 {
		return spoolFile{}, false
	}
	tli, seg, err := pg.ParseSegmentName(name, size)
	if err != nil {
		return spoolFile{}, false
	}
	n, err := strconv.ParseInt(sizeText, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != sizeText {
		return spoolFile{}, false
	}
	sys, err := strconv.ParseUint(sysText, 10, 64)
	if err != nil || strconv.FormatUint(sys, 10) != sysText {
		return spoolFile{}, false
	}
	sf := spoolFile{file: file, name: name, sys: sys, tli: tli, seg: seg, size: n}
	crc, err := strconv.ParseUint(sumText, 16, 32)
	if err != nil || fmt.Sprintf("%08x", crc) != sumText {
		return spoolFile{}, false
	}
	sf.crc = uint32(crc)
	return sf, true
}

// spoolListing is one read of the spool directory.
type spoolListing struct {
	finals map[string][]spoolFile // by segment name
	temps  []string               // temporary file names
}

// readSpool lists dir. A missing directory is an empty spool.
func readSpool(dir string, size pg.WALSegmentSize) (spoolListing, error) {
	l := spoolListing{finals: map[string][]spoolFile{}}
	d, err := os.Open(dir)
	if errors.Is(err, iofs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, fmt.Errorf("read spool %s: %w", dir, err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return l, fmt.Errorf("read spool %s: %w", dir, err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, spoolTempPrefix) {
			l.temps = append(l.temps, n)
			continue
		}
		if sf, ok := parseSpoolFileName(n, size); ok {
			l.finals[sf.name] = append(l.finals[sf.name], sf)
		}
	}
	return l, nil
}

// randomSuffix makes temporary names unique.
func randomSuffix() string { return strconv.FormatUint(rand.Uint64(), 36) }

// tempFile is a locked temporary file that becomes a final file by rename.
type tempFile struct {
	*os.File
	path string
}

// createTemp creates and locks a new temporary file in dir named
// prefix+random.
func createTemp(dir, prefix string) (*tempFile, error) {
	for range 100 {
		p := filepath.Join(dir, prefix+randomSuffix())
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, fileMode)
		if errors.Is(err, iofs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		// Without lock support (some network filesystems) the file is
		// protected by its age only; see removeIfStale.
		_ = lockFile(f, true)
		return &tempFile{File: f, path: p}, nil
	}
	return nil, fmt.Errorf("create temporary file in %s: no free name", dir)
}

// commit closes the file and renames it to final. Volatile: a spooled
// segment lost in a crash is fetched again.
func (t *tempFile) commit(final string) error {
	return atomicfile.Commit(t.File, t.path, final, atomicfile.Volatile)
}

// discard closes and removes the file.
func (t *tempFile) discard() {
	t.File.Close()
	os.Remove(t.path)
}

// removeIfStale removes the temporary file at p when it was left behind by
// a process that is gone: nobody holds its lock and it has not changed for
// tempGrace, or, where locks are not available, it has not changed for
// tempMaxAge. It reports whether it removed the file.
func removeIfStale(p string, now time.Time) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	maxAge := tempGrace
	switch err := lockFile(f, false); {
	case errors.Is(err, errLocked):
		return false // in use
	case err != nil:
		maxAge = tempMaxAge
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	if now.Sub(changeTime(fi)) < maxAge {
		return false
	}
	return os.Remove(p) == nil
}

// cleanTemps removes the stale temporary files named names in dir.
func cleanTemps(dir string, names []string, now time.Time) (removed int) {
	for _, n := range names {
		if removeIfStale(filepath.Join(dir, n), now) {
			removed++
		}
	}
	return removed
}

// cleanDestTemps removes stale temporary files of earlier Gets in dir.
func cleanDestTemps(dir string, now time.Time) (removed int, err error) {
	d, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return 0, err
	}
	var temps []string
	for _, n := range names {
		if strings.HasPrefix(n, destTempPrefix) {
			temps = append(temps, n)
		}
	}
	return cleanTemps(dir, temps, now), nil
}

// errLocked: another open file description holds a file's lock.
var errLocked = errors.New("file is locked")

// errSpoolCorrupt: a spool file does not match the size or checksum in
// its name.
var errSpoolCorrupt = errors.New("spool file does not match its recorded size and CRC-32C")

// verifyCopy reads f from its start, writes its bytes to w and checks that
// they are sf.size bytes with CRC-32C sf.crc.
func verifyCopy(f *os.File, w io.Writer, sf spoolFile, buf []byte) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != sf.size {
		return fmt.Errorf("%w: %d bytes, want %d", errSpoolCorrupt, fi.Size(), sf.size)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	h := crc32.New(castagnoli)
	n, err := io.CopyBuffer(io.MultiWriter(h, w), struct{ io.Reader }{f}, buf)
	if err != nil {
		return err
	}
	if n != sf.size {
		return fmt.Errorf("%w: read %d bytes, want %d", errSpoolCorrupt, n, sf.size)
	}
	if got := h.Sum32(); got != sf.crc {
		return fmt.Errorf("%w: CRC-32C %08x, want %08x", errSpoolCorrupt, got, sf.crc)
	}
	return nil
}

// claimSpooled serves sf from spool dir to destAbs. It claims the file by
// renaming it to a temporary name of its own (false, nil when another
// Getter or a cleanup took it first), verifies it, then renames it onto
// destAbs; across filesystems it copies through a temporary file in the
// destination's directory. A file that fails verification is removed and
// reported with an error wrapping errSpoolCorrupt. On any failure destAbs
// is untouched and nothing is left behind.
func claimSpooled(dir string, sf spoolFile, destAbs string, buf []byte) (bool, error) {
	claim := filepath.Join(dir, spoolTempPrefix+sf.name+"-"+randomSuffix())
	if err := os.Rename(filepath.Join(dir, sf.file), claim); err != nil {
		return false, nil
	}
	f, err := os.Open(claim)
	if err != nil {
		// Removed by a cleanup in the instant before we locked it.
		return false, nil
	}
	defer f.Close()
	_ = lockFile(f, true)
	if err := verifyCopy(f, io.Discard, sf, buf); err != nil {
		os.Remove(claim)
		return false, fmt.Errorf("spool file %s: %w", filepath.Join(dir, sf.file), err)
	}
	err = os.Rename(claim, destAbs)
	if err == nil {
		return true, nil
	}
	if !isCrossDevice(err) {
		os.Remove(claim)
		if errors.Is(err, iofs.ErrNotExist) {
			return false, nil // cleaned up under us: fetch it instead
		}
		return false, err
	}
	// The spool is on another filesystem: copy, checking again as we go.
	t, err := createTemp(filepath.Dir(destAbs), destTempPrefix)
	if err != nil {
		os.Remove(claim)
		return false, err
	}
	if err := verifyCopy(f, t.File, sf, buf); err != nil {
		t.discard()
		os.Remove(claim)
		return false, fmt.Errorf("spool file %s: %w", filepath.Join(dir, sf.file), err)
	}
	os.Remove(claim)
	if err := t.commit(destAbs); err != nil {
		return false, err
	}
	return true, nil
}
