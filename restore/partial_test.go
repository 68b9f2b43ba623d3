package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testbin"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/fs"
)

// lockedBuffer collects a process's output for failure messages.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// readWAL reads the WAL file name from r, or reports that it is missing.
func readWAL(t *testing.T, r *repo.Repo, name string) ([]byte, bool) {
	t.Helper()
	key, err := repo.WALKey(name, pg.WALSegmentSize{})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := r.Get(context.Background(), key)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b, true
}

// TestRestorePartialPostgres is the disaster that --use-partial is for: a
// PostgreSQL 15 primary archives with walferry and streams with walferry
// wal-receive; rows are committed after the last complete segment; once
// the .partial covering them is in the repository, the primary dies
// (immediate stop) and so does the receiver. A restore with --use-partial
// recovers those rows (restore_command serves the partial, zero-padded);
// one without stops at the last complete segment, without them.
func TestRestorePartialPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: real PostgreSQL; skipped with -short")
	}
	ctx := context.Background()
	bin := testbin.Walferry(t)

	primary := pgtest.New(t, pgtest.Options{Conf: []string{"wal_level = replica", "max_wal_senders = 4"}})
	root := primary.MkdirOwned(t, "repo")
	url := "file://" + root
	if out, err := primary.Command(ctx, bin, "repo", "init", "--repo", url, "--pgdata", primary.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("repo init: %v\n%s", err, out)
	}
	primary.AppendConf(t, "archive_mode = on", "archive_command = '"+bin+" archive-push --repo "+url+" %p'")
	primary.Start(t)
	st, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// walferry wal-receive, as the server's OS user (it writes into the
	// repository the archiver writes into).
	var recvLog lockedBuffer
	recv := primary.Command(ctx, bin, "wal-receive", "--repo", url, "--pg-conn", primary.ConnString(),
		"--slot", "walferry", "--partial-interval", "500ms", "--spool-dir", primary.MkdirOwned(t, "spool"),
		"--log-level", "debug")
	recv.Stdout, recv.Stderr = &recvLog, &recvLog
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	recvDone := make(chan error, 1)
	go func() { recvDone <- recv.Wait() }()
	killRecv := sync.OnceFunc(func() {
		recv.Process.Kill()
		<-recvDone
	})
	t.Cleanup(killRecv)

	primary.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	primary.Exec(t, "INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) i")
	b, err := backup.Push(ctx, r, backup.Options{Conn: primary.ConnString(), PGData: primary.DataDir})
	if err != nil {
		t.Fatalf("backup: %v\nwal-receive:\n%s", err, recvLog.String())
	}
	primary.Exec(t, "INSERT INTO t SELECT i, 'after the backup ' || i FROM generate_series(20001, 21000) i")
	// The last complete segment: everything so far.
	var last string
	primary.QueryRow(t, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&last)
	waitFor(t, primary, "segment "+last+" in the repository", 2*time.Minute, func() bool {
		_, ok := readWAL(t, r, last)
		return ok
	})
	inArchive := rows(t, primary, "SELECT id, v FROM t ORDER BY id")

	// Rows only the partial holds: committed in the next segment.
	primary.Exec(t, "INSERT INTO t SELECT i, 'only in the partial ' || i FROM generate_series(21001, 21500) i")
	primary.Exec(t, "UPDATE t SET v = 'updated in the partial' WHERE id <= 100")
	final := rows(t, primary, "SELECT id, v FROM t ORDER BY id")
	var lsnText, seg string
	primary.QueryRow(t, "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())").Scan(&lsnText, &seg)
	lsn, err := pg.ParseLSN(lsnText)
	if err != nil {
		t.Fatal(err)
	}
	size := pg.WALSegmentSize{} // 16 MiB, as initdb makes them
	if seg <= last || size.Offset(lsn) == 0 {
		t.Fatalf("the late rows end at %s in %s, want inside a segment after %s", lsn, seg, last)
	}
	// Wait for a .partial holding every byte of the server's WAL up to
	// the last commit.
	off := int(size.Offset(lsn))
	waitFor(t, primary, "a .partial of "+seg+" covering "+lsnText, 2*time.Minute, func() bool {
		p, ok := readWAL(t, r, seg+".partial")
		if !ok {
			return false
		}
		local, err := os.ReadFile(filepath.Join(primary.DataDir, "pg_wal", seg))
		if err != nil {
			t.Fatal(err)
		}
		return len(p) >= off && bytes.Equal(p[:off], local[:off])
	})

	// The disaster: the primary and the receiver die.
	primary.Stop(t, pgtest.StopImmediate)
	killRecv()
	if _, ok := readWAL(t, r, seg); ok {
		t.Fatalf("%s is complete in the repository: the test needs it unfinished", seg)
	}
	t.Logf("backup %s; last complete segment %s; rows up to %s are only in %s.partial", b.ID, last, lsnText, seg)

	restored := pgtest.New(t, pgtest.Options{})
	conf := saveConf(t, restored)
	must(t, os.RemoveAll(restored.DataDir))
	o := Options{Backup: backup.Latest, DataDir: restored.DataDir,
		RestoreCommand: RestoreCommand{Executable: bin, Repos: []string{url}, Partial: true}}
	restoreAndCheck := func(what string, want []string) {
		t.Helper()
		if _, err := Run(ctx, r, o); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		putConf(t, restored, conf)
		restored.Start(t)
		waitFor(t, restored, what+": promotion at the end of the archive", 3*time.Minute, func() bool { return !inRecovery(t, restored) })
		got := rows(t, restored, "SELECT id, v FROM t ORDER BY id")
		if len(got) != len(want) {
			t.Fatalf("%s: %d rows, want %d; server log:\n%s", what, len(got), len(want), restored.LogTail(30))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("%s: row %d is %q, want %q", what, i, got[i], want[i])
			}
		}
		restored.Stop(t, pgtest.StopFast)
	}

	// 1. --use-partial: every committed row, the partial's included.
	restoreAndCheck("restore --use-partial", final)

	// 2. Without it (delta over the first): the archive ends at the last
	// complete segment, and so does the data.
	o.Delta, o.RestoreCommand.Partial = true, false
	restoreAndCheck("restore without --use-partial", inArchive)

	// The binary writes --partial into restore_command only when asked.
	for _, use := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "pgdata")
		args := []string{"restore", "LATEST", "--pgdata", dir, "--repo", url}
		if use {
			args = append(args, "--use-partial")
		}
		if out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("walferry %v: %v\n%s", args, err, out)
		}
		settings, err := os.ReadFile(filepath.Join(dir, "walferry.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if got := bytes.Contains(settings, []byte(" archive-get --repo "+url+" --partial %f %p'")); got != use {
			t.Errorf("walferry %v: restore_command with --partial: %v, want %v:\n%s", args, got, use, settings)
		}
	}
}
