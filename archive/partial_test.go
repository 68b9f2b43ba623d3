package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
)

// partialWant is what GetPartial must write for a partial object holding
// prefix: prefix, then zeros up to the segment size.
func partialWant(prefix []byte, segBytes int) []byte {
	return append(append([]byte(nil), prefix...), make([]byte, segBytes-len(prefix))...)
}

// partialCheck asserts that path holds prefix followed by zeros, a whole
// segment.
func partialCheck(t *testing.T, path string, prefix []byte, segBytes int) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != segBytes {
		t.Fatalf("%s: %d bytes, want a whole %d-byte segment", path, len(got), segBytes)
	}
	if !bytes.Equal(got[:len(prefix)], prefix) {
		t.Fatalf("%s: the first %d bytes differ from the partial's", path, len(prefix))
	}
	if i := bytes.IndexFunc(got[len(prefix):], func(r rune) bool { return r != 0 }); i >= 0 {
		t.Fatalf("%s: byte %d after the partial's %d is not zero", path, len(prefix)+i, len(prefix))
	}
}

// TestGetPartial: GetPartial serves a segment that is not archived from
// its .partial, zero-padded to a whole segment and byte-identical in its
// prefix; a complete segment always wins; Get never serves a partial;
// partials never reach the spool, and a grown partial is served grown.
func TestGetPartial(t *testing.T) {
	for _, tt := range []struct {
		name       string
		prefetch   int
		background bool
	}{
		{"no prefetch", 0, false},
		{"prefetch", 4, false},
		{"prefetch in the background", 4, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			st, _ := teststore.FS(t)
			r := getRepo(t, st, getSegBytes)
			size := getSegSize(t, getSegBytes)
			segs := getSegs(t, getSegBytes, 1, 1, 3, r)
			seg := func(i int) string { return pg.SegmentName(1, pg.SegNo(i), size) }
			// Segment 4 is being streamed: 300 KiB of it so far, stored as
			// the received prefix only (wal-receive stores a zero-padded
			// whole segment; both must work).
			prefix := getWALLike(300<<10, 44)
			getPut(t, r, getSegBytes, seg(4)+".partial", prefix)
			// A stale partial of segment 3, whose complete copy exists.
			getPut(t, r, getSegBytes, seg(3)+".partial", getWALLike(100<<10, 33))
			// Another timeline's partial of segment 5 is not segment 5's.
			getPut(t, r, getSegBytes, pg.SegmentName(2, 5, size)+".partial", getWALLike(10<<10, 25))

			pgWAL := filepath.Join(t.TempDir(), "pg_wal")
			if err := os.Mkdir(pgWAL, 0o700); err != nil {
				t.Fatal(err)
			}
			spool := filepath.Join(pgWAL, ".walferry", "prefetch")
			g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: tt.prefetch, Background: tt.background})
			dest := filepath.Join(pgWAL, "RECOVERYXLOG")

			// Without the flag a partial is never served.
			if err := g.Get(ctx, seg(4), dest); !errors.Is(err, ErrNotArchived) {
				t.Fatalf("Get of a segment with only a partial: %v, want ErrNotArchived", err)
			}
			if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("Get wrote %s from a partial (%v)", dest, err)
			}

			// Complete segments are served as they are, the partial of
			// segment 3 notwithstanding.
			for i := 1; i <= 3; i++ {
				if err := g.GetPartial(ctx, seg(i), dest); err != nil {
					t.Fatalf("GetPartial %s: %v", seg(i), err)
				}
				getCheck(t, dest, segs[seg(i)])
			}
			g.Close(ctx) // the prefetches of the window are done
			g = newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: tt.prefetch, Background: tt.background})

			if err := g.GetPartial(ctx, seg(4), dest); err != nil {
				t.Fatalf("GetPartial %s: %v", seg(4), err)
			}
			partialCheck(t, dest, prefix, getSegBytes)
			for _, f := range getSpoolFiles(t, spool, getSegBytes) {
				t.Errorf("spool holds %s after serving a partial", f)
			}

			// The partial grew: the new one is served, nothing cached.
			grown := getWALLike(700<<10, 45)
			getPut(t, r, getSegBytes, seg(4)+".partial", grown)
			if err := g.GetPartial(ctx, seg(4), dest); err != nil {
				t.Fatal(err)
			}
			partialCheck(t, dest, grown, getSegBytes)

			// The segment is complete now: it wins over its partial.
			full := getWALLike(getSegBytes, 46)
			getPut(t, r, getSegBytes, seg(4), full)
			if err := g.GetPartial(ctx, seg(4), dest); err != nil {
				t.Fatal(err)
			}
			getCheck(t, dest, full)

			// Neither the segment nor its partial (another timeline's
			// does not count): ErrNotArchived, dest untouched.
			os.Remove(dest)
			err := g.GetPartial(ctx, seg(5), dest)
			if !errors.Is(err, ErrNotArchived) || !strings.Contains(err.Error(), seg(5)+".partial") {
				t.Fatalf("GetPartial with neither: %v, want ErrNotArchived naming the partial", err)
			}
			if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("GetPartial with neither wrote %s (%v)", dest, err)
			}
			// History files are served as Get serves them.
			getPut(t, r, getSegBytes, "00000002.history", []byte("1\t0/5000000\tno reason\n"))
			if err := g.GetPartial(ctx, "00000002.history", dest); err != nil {
				t.Fatal(err)
			}
			getCheck(t, dest, []byte("1\t0/5000000\tno reason\n"))
			if err := g.GetPartial(ctx, "00000003.history", dest); !errors.Is(err, ErrNotArchived) {
				t.Errorf("GetPartial of a missing history file: %v, want ErrNotArchived", err)
			}
			g.Close(ctx)
			getNoTemps(t, pgWAL, spool)
			for _, f := range getSpoolFiles(t, spool, getSegBytes) {
				if p, ok := parseSpoolFileName(f, size); ok && p.seg >= 4 {
					t.Errorf("spool holds %s", f)
				}
			}
		})
	}
}

// TestGetPartialWholeSegment: a partial stored as wal-receive stores it, a
// whole segment of received bytes then zeros, is served byte for byte.
func TestGetPartialWholeSegment(t *testing.T) {
	ctx := context.Background()
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	name := pg.SegmentName(1, 7, getSegSize(t, getSegBytes))
	stored := partialWant(getWALLike(123457, 7), getSegBytes)
	getPut(t, r, getSegBytes, name+".partial", stored)
	g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: 2})
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	if err := g.GetPartial(ctx, name, dest); err != nil {
		t.Fatal(err)
	}
	getCheck(t, dest, stored)
}

// TestGetPartialTooLong: a partial longer than a segment is refused with
// an error that is not ErrNotArchived, and nothing is written.
func TestGetPartialTooLong(t *testing.T) {
	ctx := context.Background()
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	name := pg.SegmentName(1, 7, getSegSize(t, getSegBytes))
	getPut(t, r, getSegBytes, name+".partial", make([]byte, getSegBytes+1))
	g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{})
	dir := t.TempDir()
	dest := filepath.Join(dir, "RECOVERYXLOG")
	err := g.GetPartial(ctx, name, dest)
	if err == nil || errors.Is(err, ErrNotArchived) || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("GetPartial of an oversized partial: %v, want a failure that is not ErrNotArchived", err)
	}
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s written (%v)", dest, err)
	}
	getNoTemps(t, dir)
}

// TestGetPartialRepositories: with several repositories, a complete
// segment in any of them wins over a partial in an earlier one, and among
// partials the one written last is served, whatever the repositories'
// order.
func TestGetPartialRepositories(t *testing.T) {
	ctx := context.Background()
	size := getSegSize(t, getSegBytes)
	stA, rootA := teststore.FS(t)
	stB, rootB := teststore.FS(t)
	a, b := getRepo(t, stA, getSegBytes), getRepo(t, stB, getSegBytes)
	g := newTestGetter(t, getConfig(t, getSegBytes, nil, a, b), GetOptions{Prefetch: 2})
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")

	// Segment 2: a partial in A, the complete segment in B.
	seg2 := pg.SegmentName(1, 2, size)
	getPut(t, a, getSegBytes, seg2+".partial", getWALLike(1000, 2))
	full := getWALLike(getSegBytes, 22)
	getPut(t, b, getSegBytes, seg2, full)
	if err := g.GetPartial(ctx, seg2, dest); err != nil {
		t.Fatal(err)
	}
	getCheck(t, dest, full)

	// Segment 3: A missed the last partial upload; B has the newer one.
	seg3 := pg.SegmentName(1, 3, size)
	older, newer := getWALLike(2000, 3), getWALLike(5000, 33)
	getPut(t, a, getSegBytes, seg3+".partial", older)
	getPut(t, b, getSegBytes, seg3+".partial", newer)
	key, err := repo.WALKey(seg3+".partial", size)
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Minute)
	if err := os.Chtimes(filepath.Join(rootA, filepath.FromSlash(key)), past, past); err != nil {
		t.Fatal(err)
	}
	if err := g.GetPartial(ctx, seg3, dest); err != nil {
		t.Fatal(err)
	}
	partialCheck(t, dest, newer, getSegBytes)
	// And the other way round.
	if err := os.Chtimes(filepath.Join(rootB, filepath.FromSlash(key)), past.Add(-time.Minute), past.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := g.GetPartial(ctx, seg3, dest); err != nil {
		t.Fatal(err)
	}
	partialCheck(t, dest, older, getSegBytes)
}

// TestDaemonGetPartial: the daemon serves GetPartial (protocol version 2)
// as the in-process Getter does, and Get still never serves a partial.
func TestDaemonGetPartial(t *testing.T) {
	e := newDaemonEnv(t, daemonEnvOptions{})
	ctx := context.Background()
	r := e.cfg.Repos[0]
	name := pg.SegmentName(1, 9, e.cfg.SegmentSize)
	prefix := getWALLike(200<<10, 9)
	getPut(t, r, daemonSeg, name+".partial", prefix)
	dest := filepath.Join(e.walDir, "RECOVERYXLOG")

	if err := e.client().Get(ctx, name, dest); !errors.Is(err, ErrNotArchived) {
		t.Fatalf("daemon Get of a segment with only a partial: %v, want ErrNotArchived", err)
	}
	if err := e.client().GetPartial(ctx, name, dest); err != nil {
		t.Fatalf("daemon GetPartial: %v\n%s", err, e.logs())
	}
	partialCheck(t, dest, prefix, daemonSeg)
	missing := pg.SegmentName(1, 10, e.cfg.SegmentSize)
	if err := e.client().GetPartial(ctx, missing, dest); !errors.Is(err, ErrNotArchived) {
		t.Fatalf("daemon GetPartial with neither: %v, want ErrNotArchived", err)
	}
	full := getWALLike(daemonSeg, 99)
	getPut(t, r, daemonSeg, name, full)
	if err := e.client().GetPartial(ctx, name, dest); err != nil {
		t.Fatal(err)
	}
	getCheck(t, dest, full)

	// A version-1 request cannot ask for a partial: refused, not ignored.
	conn, err := net.Dial("unix", e.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, `{"v":1,"op":"get","name":%q,"dest":%q,"partial":true,"pgdata":%q,"system_identifier":"%d","pg_major":15,"wal_segment_size":%d}`+"\n",
		missing, dest, e.dataDir, e.cluster.SystemID, daemonSeg)
	answer := make([]byte, 4096)
	n, _ := conn.Read(answer)
	if !strings.Contains(string(answer[:n]), `"class":"bad-request"`) {
		t.Errorf("version-1 request with partial: answer %s, want a bad-request", answer[:n])
	}
}

// TestClientPartialOldDaemon: a hook asking for a partial speaks version
// 2, which a version-1 daemon refuses ("unsupported") instead of serving
// the request without the field: the hook then works standalone. Requests
// without it stay version 1, so such a daemon keeps serving them.
func TestClientPartialOldDaemon(t *testing.T) {
	dir := daemonSocketDir(t)
	sock := filepath.Join(dir, "v1.sock")
	got := make(chan hookproto.Request, 2)
	// A version-1 daemon: it knows no "partial" and refuses other versions.
	fakeDaemon(t, sock, func(conn net.Conn, req hookproto.Request) {
		got <- req
		if req.Version != 1 {
			fmt.Fprintf(conn, `{"v":1,"status":"error","class":"unsupported","message":"daemon speaks protocol version 1, the hook sent version %d"}`+"\n", req.Version)
			return
		}
		fmt.Fprintf(conn, `{"v":1,"status":"ok"}`+"\n")
	})
	c := &Client{Socket: sock, DataDir: dir, Cluster: repo.Cluster{SystemID: 1, PGMajor: 15, WALSegmentSize: daemonSeg},
		DialTimeout: daemonDialTimeout}
	ctx := context.Background()
	name := "000000010000000000000001"
	if err := c.GetPartial(ctx, name, "/x/RECOVERYXLOG"); !errors.Is(err, ErrDaemonUnavailable) {
		t.Errorf("GetPartial from a version-1 daemon: %v, want ErrDaemonUnavailable", err)
	}
	if req := <-got; req.Version != 2 || !req.Partial || req.Op != hookproto.OpGet || req.Name != name {
		t.Errorf("GetPartial sent %+v, want version 2 with partial", req)
	}
	if err := c.Get(ctx, name, "/x/RECOVERYXLOG"); err != nil {
		t.Errorf("Get from a version-1 daemon: %v", err)
	}
	if req := <-got; req.Version != 1 || req.Partial {
		t.Errorf("Get sent %+v, want version 1 without partial", req)
	}
}
