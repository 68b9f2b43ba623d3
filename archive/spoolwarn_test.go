package archive

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
)

// TestGetWarnsWhenSpoolUnusable: a spool that cannot be created (here a
// file stands where it should be; in the fault suite a full or read-only
// disk) does not fail the call, which is served from the store, but says
// so at warning level, the hook's default: every call meanwhile waits for
// the store (found by faults/TestDisk: it was logged at info, invisible).
func TestGetWarnsWhenSpoolUnusable(t *testing.T) {
	r, size, segs := fsSegments(t, 3)
	wal := getPGWal(t)
	spool := filepath.Join(t.TempDir(), "spool")
	if err := os.WriteFile(spool, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	g := newTestGetter(t, getConfig(t, getSegBytes, log, r), GetOptions{Prefetch: 2, SpoolDir: spool})
	name := pg.SegmentName(1, 1, size)
	dest := filepath.Join(wal, "RECOVERYXLOG")
	if err := g.Get(t.Context(), name, dest); err != nil {
		t.Fatalf("Get %s with an unusable spool: %v", name, err)
	}
	getCheck(t, dest, segs[name])
	if err := g.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := logs.String(); strings.Count(got, "level=WARN") != 1 || !strings.Contains(got, spool) || !strings.Contains(got, "not a directory") {
		t.Errorf("logged %q, want one warning naming the spool %s and why", got, spool)
	}
}

// TestDownloadLocalFailureIsDiskError: a download that cannot write its
// temporary file fails with a diskError (the local disk's fault, warned
// about for the spool), a missing object with found false.
func TestDownloadLocalFailureIsDiskError(t *testing.T) {
	r, size, _ := fsSegments(t, 1)
	key, err := repo.WALKey(pg.SegmentName(1, 1, size), size)
	if err != nil {
		t.Fatal(err)
	}
	g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: 0})
	missing := filepath.Join(t.TempDir(), "gone")
	_, found, err := g.download(t.Context(), r, key, missing, spoolTempPrefix, g.maxRetry, nil)
	var de *diskError
	if !found || !errors.As(err, &de) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("download into a missing directory: found %v, err %v; want a diskError naming %s", found, err, missing)
	}
	if names := getDirNames(t, filepath.Dir(missing)); len(names) != 0 {
		t.Errorf("left %q", names)
	}
}

// fsSegments makes a repository on the filesystem backend holding
// segments 1..last of timeline 1 and returns it, the segment size and the
// segments' bytes by name.
func fsSegments(t *testing.T, last int) (*repo.Repo, pg.WALSegmentSize, map[string][]byte) {
	t.Helper()
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	return r, getSegSize(t, getSegBytes), getSegs(t, getSegBytes, 1, 1, last, r)
}
