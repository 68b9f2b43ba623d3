package repo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/fs"
	"github.com/walferry/walferry/storage/limit"
	"github.com/walferry/walferry/storage/retry"
)

func newStore(t *testing.T) storage.Store {
	t.Helper()
	s, err := fs.New(fs.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var testCluster = Cluster{SystemID: 7310012345678901234, PGMajor: 15, WALSegmentSize: 16 << 20, Source: "data directory /pg"}

func TestWALKey(t *testing.T) {
	size, _ := pg.NewWALSegmentSize(16 << 20)
	tests := []struct{ name, want string }{
		{"000000010000000000000001", "wal/0000000100000000/000000010000000000000001"},
		{"0000000200000003000000FF", "wal/0000000200000003/0000000200000003000000FF"},
		{"00000002.history", "wal/history/00000002.history"},
		{"000000010000000000000003.00000028.backup", "wal/0000000100000000/000000010000000000000003.00000028.backup"},
		{"000000010000000000000003.partial", "wal/0000000100000000/000000010000000000000003.partial"},
	}
	for _, tt := range tests {
		got, err := WALKey(tt.name, size)
		if err != nil || got != tt.want {
			t.Errorf("WALKey(%q) = %q, %v; want %q", tt.name, got, err, tt.want)
		}
		if name, ok := WALNameFromKey(got); !ok || name != tt.name {
			t.Errorf("WALNameFromKey(%q) = %q, %v", got, name, ok)
		}
	}
	for _, bad := range []string{"", "../x", "00000001000000000000000", "000000010000000000000001/x", "RECOVERYXLOG"} {
		if _, err := WALKey(bad, size); err == nil {
			t.Errorf("WALKey(%q) accepted", bad)
		}
	}
}

// A listing can return any key (another tool's objects, a hostile store):
// only the keys WALKey makes give a name back.
func TestWALNameFromHostileKeys(t *testing.T) {
	for _, key := range []string{
		"wal/0000000100000000/../../../etc/passwd",
		"wal/x/../000000010000000000000001",
		"wal/0000000100000000/../0000000100000000/000000010000000000000001/..",
		"wal/0000000200000000/000000010000000000000001", // in another directory
		"wal/000000010000000000000001",
		"wal/0000000100000000/RECOVERYXLOG",
		"wal/0000000100000000/zzzzzzzzzzzzzzzzzzzzzzzz",
		"wal/history/../00000002.history",
		"wal/0000000100000000/00000002.history",
		"wal/history/0000000G.history",
		"backups/000000010000000000000001",
	} {
		if name, ok := WALNameFromKey(key); ok {
			t.Errorf("WALNameFromKey(%q) = %q, true; want false", key, name)
		}
	}
}

func TestBackupIDFromDataKey(t *testing.T) {
	for _, n := range []int{0, 7, 999999, 1234567} {
		key := BackupDataKey("20261122T101500F", n)
		if id, ok := BackupIDFromDataKey(key); !ok || id != "20261122T101500F" {
			t.Errorf("BackupIDFromDataKey(%q) = %q, %v", key, id, ok)
		}
	}
	for _, bad := range []string{"", MetadataKey, "backups/", "backups/x", BackupManifestKey("x"), BackupClaimKey("x"),
		"backups/x/data/", "backups/x/data/1", "backups/x/data/0000001", "backups/x/data/-00001", "backups/x/data/00000a",
		"backups/x/data/000001/y", "backups/x/y/data/000001", "wal/backups/x/data/000001", "backups/x/data/99999999999999999999"} {
		if id, ok := BackupIDFromDataKey(bad); ok {
			t.Errorf("BackupIDFromDataKey(%q) = %q, true", bad, id)
		}
	}
}

func TestInitOpenCheck(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)

	if _, err := Open(ctx, store, OpenOptions{}); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Open before init: got %v, want ErrNotInitialized", err)
	}
	res, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4", CreatedBy: "test"})
	if err != nil || !res.Created {
		t.Fatalf("Init: %+v, %v", res, err)
	}
	again, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "zstd", CreatedBy: "test"})
	if err != nil || again.Created || again.Metadata.Compression != "lz4" {
		t.Fatalf("second Init must be a no-op: %+v, %v", again, err)
	}
	other := testCluster
	other.SystemID++
	other.Source = "data directory /other"
	_, err = Init(ctx, store, InitOptions{Cluster: other, Compression: "lz4"})
	if !errors.Is(err, ErrWrongCluster) {
		t.Fatalf("Init for another cluster: got %v, want ErrWrongCluster", err)
	}

	cr, err := Check(ctx, store, testCluster, OpenOptions{})
	if err != nil || !cr.Writable || !cr.Deletable || !cr.ClusterOK {
		t.Fatalf("Check: %+v, %v", cr, err)
	}
	_, err = Check(ctx, store, other, OpenOptions{})
	if !errors.Is(err, ErrWrongCluster) {
		t.Fatalf("Check with another cluster: got %v, want ErrWrongCluster", err)
	}
	for _, want := range []string{"7310012345678901234", "7310012345678901235", "/other"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("wrong-cluster error %q does not name %q", err, want)
		}
	}
	// Check must not leave its probe behind.
	var keys []string
	store.List(ctx, "", func(oi storage.ObjectInfo) error { keys = append(keys, oi.Key); return nil })
	if len(keys) != 1 || keys[0] != MetadataKey {
		t.Errorf("after check the store holds %v, want only %s", keys, MetadataKey)
	}
}

func TestInitRefusesForeignContent(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	if err := store.Put(ctx, "archive/db/archive.info", strings.NewReader("pgbackrest")); err != nil {
		t.Fatal(err)
	}
	_, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4"})
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("Init over foreign objects: got %v", err)
	}
}

func TestPutGetRoundTripAndCorruption(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	if _, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "zstd", Passphrase: []byte("pw")}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, store, OpenOptions{}); !errors.Is(err, ErrPassphrase) {
		t.Fatalf("Open encrypted without passphrase: %v", err)
	}
	if _, err := Open(ctx, store, OpenOptions{Passphrase: []byte("wrong")}); !errors.Is(err, ErrPassphrase) {
		t.Fatalf("Open encrypted with a wrong passphrase: %v", err)
	}
	r, err := Open(ctx, store, OpenOptions{Passphrase: []byte("pw")})
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("walferry "), 100000)
	sum, err := r.Put(ctx, "wal/x", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	if sum.RawSize != int64(len(payload)) || !strings.HasPrefix(sum.Sum, "sha256:") || sum.StoredSize >= sum.RawSize {
		t.Errorf("Put sum = %+v", sum)
	}
	obj, err := r.Get(ctx, "wal/x")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(obj)
	obj.Close()
	if err != nil || !bytes.Equal(got, payload) || obj.Sum() != sum.Sum {
		t.Fatalf("Get: %d bytes, err %v, sum %s want %s", len(got), err, obj.Sum(), sum.Sum)
	}
	if _, err := r.PutIfAbsent(ctx, "wal/x", bytes.NewReader(payload)); !errors.Is(err, storage.ErrExist) {
		t.Errorf("PutIfAbsent on a taken key: %v", err)
	}

	// Flip one byte of the stored object: reading must fail naming the key.
	rc, _ := store.Get(ctx, "wal/x")
	raw, _ := io.ReadAll(rc)
	rc.Close()
	raw[len(raw)/2] ^= 0x40
	if err := store.Put(ctx, "wal/x", bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	obj, err = r.Get(ctx, "wal/x")
	if err == nil {
		_, err = io.ReadAll(obj)
		obj.Close()
	}
	if !errors.Is(err, codec.ErrCorrupt) || !strings.Contains(err.Error(), "wal/x") {
		t.Fatalf("corrupt object: got %v, want ErrCorrupt naming wal/x", err)
	}
}

func TestFailedSourceLeavesNothing(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	if _, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4"}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, store, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src := io.MultiReader(bytes.NewReader(make([]byte, 1<<20)), errReader{})
	if _, err := r.Put(ctx, "wal/broken", src); err == nil {
		t.Fatal("Put of a failing source succeeded")
	}
	if _, err := store.Stat(ctx, "wal/broken"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("a failed Put left an object: %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk read error") }

func TestInspect(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	if _, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4"}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, store, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	size, _ := pg.NewWALSegmentSize(16 << 20)
	for _, name := range []string{"000000010000000000000001", "000000010000000000000002", "000000010000000000000004",
		"00000002.history", "000000020000000000000004", "000000010000000000000002.00000028.backup"} {
		key, err := WALKey(name, size)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Put(ctx, key, strings.NewReader(name)); err != nil {
			t.Fatal(err)
		}
	}
	info, err := r.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Timelines) != 2 || info.Timelines[0].Segments != 3 || info.Timelines[0].Gaps != 1 ||
		info.Timelines[0].Last != "000000010000000000000004" || info.Timelines[1].Segments != 1 {
		t.Errorf("timelines = %+v", info.Timelines)
	}
	if info.HistoryFiles != 1 || info.BackupLabels != 1 {
		t.Errorf("info = %+v", info)
	}
}

func TestObjectInfo(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	if _, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4"}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, store, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("0123456789"), 300000)
	sum, err := r.Put(ctx, "wal/y", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	info, err := r.ObjectInfo(ctx, "wal/y")
	if err != nil {
		t.Fatal(err)
	}
	if info.Sum != sum.Sum || info.RawSize != int64(len(payload)) || info.Compression != codec.LZ4 {
		t.Errorf("ObjectInfo = %+v, want sum %s size %d lz4", info, sum.Sum, len(payload))
	}
	if _, err := r.ObjectInfo(ctx, "wal/missing"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("ObjectInfo of a missing key: %v", err)
	}
}

// TestCheckReportsStaleTemps: repo check reports (and leaves) the
// temporary files writers killed mid-write left, through the retry and
// limit decorators; a temporary file still being written is not counted.
func TestCheckReportsStaleTemps(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	inner, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	store := limit.New(retry.New(inner, retry.Policy{}, nil), 2)
	if _, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4", CreatedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	plant := func(rel string, size int, age time.Duration) string {
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(-age)
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stale := plant("backups/20261122T101500F/data/.tmp-00000000deadbeef", 3000, 2*time.Hour)
	plant("wal/0000000100000000/.tmp-0000000000000001", 100, time.Minute)
	cr, err := Check(ctx, store, testCluster, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cr.StaleTemporary != (TempSweep{Objects: 1, Bytes: 3000}) {
		t.Errorf("Check reports %+v stale temporary objects, want 1 of 3000 bytes, not removed", cr.StaleTemporary)
	}
	if _, err := os.Stat(stale); err != nil {
		t.Errorf("Check removed a temporary file: %v", err)
	}
}

// TestInitRefusesForeignObjects: a non-empty location without walferry
// metadata is not "another cluster": Init says what it found.
func TestInitRefusesForeignObjects(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		keys  []string
		wants []string
	}{
		{"stray file", []string{"a"}, []string{`1 object ("a")`}},
		{"pgBackRest", []string{"archive/main/archive.info", "backup/main/backup.info", "backup/main/x", "y"},
			[]string{"4 objects", `"archive/main/archive.info", "backup/main/backup.info", "backup/main/x", ...`, "pgBackRest"}},
		{"WAL-G", []string{"basebackups_005/base_000000010000000000000002_backup_stop_sentinel.json"}, []string{"WAL-G"}},
		{"data directory", []string{"PG_VERSION", "global/pg_control"}, []string{"PostgreSQL data directory"}},
	} {
		store := newStore(t)
		for _, k := range tc.keys {
			if err := store.Put(ctx, k, strings.NewReader("x")); err != nil {
				t.Fatal(err)
			}
		}
		_, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4"})
		if !errors.Is(err, ErrNotRepository) || errors.Is(err, ErrWrongCluster) {
			t.Errorf("%s: Init = %v, want ErrNotRepository (and not ErrWrongCluster)", tc.name, err)
			continue
		}
		for _, w := range append(tc.wants, "not a walferry repository", MetadataKey) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, err, w)
			}
		}
		if strings.Contains(err.Error(), "another cluster") {
			t.Errorf("%s: %q speaks of another cluster", tc.name, err)
		}
	}
}
