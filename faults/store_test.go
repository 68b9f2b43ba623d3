//go:build faults

package faults

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage"
)

// TestStore damages the repository's objects one at a time (a flipped
// byte, a truncation, a deletion, a foreign object under a WAL name) and
// checks that archive-get, verify and restore detect each and name it;
// then a wrong passphrase and credentials that stop working mid-run.
// Each damage is repaired before the next.
func TestStore(t *testing.T) {
	s3 := needServices(t)
	t.Parallel() // beside TestLoad's ten minutes
	r := rng(t)
	f := newFront(t, s3)
	prefix := testenv.UniquePrefix(t)
	url, faulty := s3URL(s3, prefix, s3.Endpoint), s3URL(s3, prefix, f.Endpoint)
	prim := archivingPrimary(t, url)
	fillItems(t, prim, 20000)
	out := mustWF(t, prim, "backup-push", "--repo", url, "--json").stdout
	id, stopWAL := backupID(out), backupStopWAL(out)
	psql(t, prim, "SELECT pg_switch_wal()")
	rp := openRepo(t, url)
	ctx := context.Background()

	var walKeys []string
	rp.Store().List(ctx, repo.WALPrefix, func(oi storage.ObjectInfo) error {
		if name, ok := repo.WALNameFromKey(oi.Key); ok && len(name) == 24 {
			walKeys = append(walKeys, oi.Key)
		}
		return nil
	})
	var dataKey string
	var dataSize int64
	rp.Store().List(ctx, repo.BackupPrefix(id), func(oi storage.ObjectInfo) error {
		if _, ok := repo.BackupIDFromDataKey(oi.Key); ok && oi.Size > dataSize {
			dataKey, dataSize = oi.Key, oi.Size
		}
		return nil
	})
	// The damaged segment is the backup's last: in the range verify --wal
	// and a restore need.
	seg := stopWAL
	segSize, err := pg.NewWALSegmentSize(segMB << 20)
	if err != nil {
		t.Fatal(err)
	}
	walKey, err := repo.WALKey(seg, segSize)
	if err != nil {
		t.Fatalf("backup-push printed stop_wal %q: %v", seg, err)
	}
	if !slices.Contains(walKeys, walKey) || dataKey == "" {
		t.Fatalf("the repository has %d WAL objects and data object %q", len(walKeys), dataKey)
	}
	raw := func(key string) []byte {
		rc, err := rp.Store().Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	put := func(key string, b []byte) {
		if err := rp.Store().Put(ctx, key, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	dir := prim.MkdirOwned(t, "got")
	d := newRestoreTarget(t)

	// expect runs one command on the damaged repository and records it:
	// clear when it exits with code and its message contains every name.
	expect := func(fault, op string, res result, code int, names ...string) {
		t.Helper()
		switch {
		case res.timedOut:
			record(t, fault, op, hang, res.String())
		case res.code == 0:
			record(t, fault, op, dataLost, "the damage went undetected: "+res.String())
		case res.code == code && containsAll(res.stderr, names):
			record(t, fault, op, clearError, res.String())
		default:
			record(t, fault, op, unclear, fmt.Sprintf("want exit %d naming %q: %v", code, names, res))
		}
	}
	getSeg := func(fault string, url string, env []string, names ...string) {
		t.Helper()
		dest := filepath.Join(dir, seg)
		res := wfEnv(t, prim, segmentLimit, env, "archive-get", "--repo", url, "--prefetch", "0", seg, dest)
		if fileSum(t, dest) != "" {
			record(t, fault, "archive-get", dataLost, "a damaged object was written to "+dest+": "+res.String())
			return
		}
		expect(fault, "archive-get", res, 1, names...)
	}
	restoreBackup := func(fault string, names ...string) {
		t.Helper()
		d.clear(t)
		res := d.restore(t, backupLimit, nil, url, id)
		if res.code != 0 && d.startable() {
			record(t, fault, "restore", dataLost, "a failed restore left global/pg_control: "+res.String())
			return
		}
		expect(fault, "restore", res, 6, names...)
	}
	verify := func(fault string, code int, args []string, env []string, names ...string) {
		t.Helper()
		res := wfEnv(t, prim, backupLimit, env, append([]string{"verify", "--repo", url}, args...)...)
		expect(fault, "verify", res, code, names...)
	}

	// WAL objects.
	orig := raw(walKey)
	for _, c := range []struct {
		fault  string
		damage func() []byte
	}{
		{"object byte flipped", func() []byte {
			b := bytes.Clone(orig)
			b[r.IntN(len(b))] ^= 1 << r.IntN(8)
			return b
		}},
		{"object truncated", func() []byte { return orig[:r.IntN(len(orig))] }},
		{"foreign object", func() []byte { return []byte("this is not a walferry object\n") }},
	} {
		put(walKey, c.damage())
		getSeg(c.fault, url, nil, seg)
		verify(c.fault, 6, []string{"--wal"}, nil, seg)
		put(walKey, orig)
	}
	// A deleted WAL segment: archive-get says "not archived" (exit 1,
	// quietly: the end of the archive for PostgreSQL); verify --wal names
	// the gap.
	if err := rp.Store().Delete(ctx, walKey); err != nil {
		t.Fatal(err)
	}
	res := wf(t, prim, segmentLimit, "archive-get", "--repo", url, "--prefetch", "0", seg, filepath.Join(dir, seg))
	if res.code == 1 && !res.timedOut && fileSum(t, filepath.Join(dir, seg)) == "" {
		record(t, "object deleted", "archive-get", clearError, "exit 1, not archived (documented: quiet)")
	} else {
		record(t, "object deleted", "archive-get", unclear, "want exit 1 and no file: "+res.String())
	}
	// Missing is not corrupt: exit 1 (README), naming the segment.
	verify("object deleted", 1, []string{"--wal"}, nil, seg, "missing")
	put(walKey, orig)

	// Backup data objects.
	origData := raw(dataKey)
	for _, c := range []struct {
		fault  string
		damage func() []byte
	}{
		{"backup object byte flipped", func() []byte {
			b := bytes.Clone(origData)
			b[r.IntN(len(b))] ^= 1 << r.IntN(8)
			return b
		}},
		{"backup object truncated", func() []byte { return origData[:r.IntN(len(origData))] }},
	} {
		put(dataKey, c.damage())
		verify(c.fault, 6, []string{id}, nil, dataKey)
		restoreBackup(c.fault, dataKey)
		put(dataKey, origData)
	}
	if v := wf(t, prim, backupLimit, "verify", "--repo", url, "--wal"); v.code != 0 {
		t.Fatalf("the repaired repository does not verify: %v", v)
	}

	// Wrong and missing passphrase on an encrypted repository.
	encURL := s3URL(s3, testenv.UniquePrefix(t), s3.Endpoint)
	right, wrong := []string{"WALFERRY_ENCRYPTION_PASSPHRASE=right horse"}, []string{"WALFERRY_ENCRYPTION_PASSPHRASE=wrong horse"}
	if r := wfEnv(t, prim, time.Minute, right, "repo", "init", "--repo", encURL, "--pgdata", prim.DataDir); r.code != 0 {
		t.Fatalf("repo init (encrypted): %v", r)
	}
	got := filepath.Join(dir, seg)
	mustWF(t, prim, "archive-get", "--repo", url, seg, got)
	if r := wfEnv(t, prim, segmentLimit, right, "archive-push", "--repo", encURL, got); r.code != 0 {
		t.Fatalf("archive-push (encrypted): %v", r)
	}
	removeFile(got)
	getSeg("wrong passphrase", encURL, wrong, "passphrase")
	getSeg("no passphrase", encURL, nil, "passphrase")
	res = wfEnv(t, prim, segmentLimit, wrong, "archive-push", "--repo", encURL, "pg_wal/"+seg)
	expect("wrong passphrase", "archive-push", res, 4, "passphrase")

	// Credentials that stop working in the middle of a run (the front
	// answers 403 InvalidAccessKeyId after a few requests), and wrong
	// credentials from the start.
	f.httpFault(http.StatusForbidden, 6)
	res = wf(t, prim, backupLimit, "backup-push", "--repo", faulty)
	f.heal()
	expect("credentials revoked mid-run", "backup-push", res, 4, host(f.Endpoint))
	f.httpFault(http.StatusForbidden, 1)
	getSeg("credentials revoked mid-run", faulty, nil, host(f.Endpoint))
	f.heal()
	badKey := []string{"AWS_SECRET_ACCESS_KEY=wrong-" + s3.SecretKey}
	getSeg("wrong credentials", url, badKey, host(s3.Endpoint))
	verify("wrong credentials", 4, nil, badKey, host(s3.Endpoint))
}

func containsAll(s string, names []string) bool {
	for _, n := range names {
		if !strings.Contains(s, n) {
			return false
		}
	}
	return true
}
