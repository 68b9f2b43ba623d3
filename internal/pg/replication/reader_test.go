package replication_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/pg/replication"
)

// member is one entry of a fake archive.
type member struct {
	name, body, link string
	typ              byte
}

func tarOf(t *testing.T, members []member, gz bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = zw
	}
	tw := tar.NewWriter(w)
	for _, m := range members {
		hdr := &tar.Header{Name: m.name, Typeflag: m.typ, Mode: 0o600, Size: int64(len(m.body)), Linkname: m.link, ModTime: time.Unix(1700000000, 0)}
		if m.typ != tar.TypeReg {
			hdr.Mode, hdr.Size = 0o700, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, m.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// fakeBaseBackup answers BASE_BACKUP with a tablespace archive and the
// data directory's, in 100-byte CopyData messages, then extra (raw
// CopyData payloads) before CopyDone.
func fakeBaseBackup(archives map[string][]byte, extra ...[]byte) func(*pgproto3.Backend) error {
	return func(be *pgproto3.Backend) error {
		msg, err := be.Receive()
		if err != nil {
			return err
		}
		if q, ok := msg.(*pgproto3.Query); !ok || !strings.HasPrefix(q.String, "BASE_BACKUP (") {
			return fmt.Errorf("want BASE_BACKUP, got %#v", msg)
		}
		result := func(rows ...[][]byte) {
			be.Send(&pgproto3.RowDescription{})
			for _, r := range rows {
				be.Send(&pgproto3.DataRow{Values: r})
			}
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT")})
		}
		result([][]byte{[]byte("0/2000028"), []byte("1")})
		result([][]byte{[]byte("16400"), []byte("/srv/ts"), []byte("1")}, [][]byte{nil, nil, []byte("2")})
		be.Send(&pgproto3.CopyOutResponse{})
		for _, name := range []string{"16400.tar", "base.tar"} {
			loc := ""
			if name != "base.tar" {
				loc = "/srv/ts"
			}
			be.Send(&pgproto3.CopyData{Data: []byte("n" + name + "\x00" + loc + "\x00")})
			b := archives[name]
			for len(b) > 0 {
				n := min(len(b), 100)
				be.Send(&pgproto3.CopyData{Data: append([]byte{'d'}, b[:n]...)})
				b = b[n:]
			}
			be.Send(&pgproto3.CopyData{Data: []byte{'p', 0, 0, 0, 0, 0, 0, 0, 1}})
		}
		for _, e := range extra {
			be.Send(&pgproto3.CopyData{Data: e})
		}
		be.Send(&pgproto3.CopyDone{})
		result([][]byte{[]byte("0/2000100"), []byte("1")})
		be.Send(&pgproto3.CommandComplete{CommandTag: []byte("BASE_BACKUP")})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		return be.Flush()
	}
}

// recorder is a Sink that writes down what it gets.
type recorder struct {
	calls   []string
	stop    replication.Stop
	failOn  string
	failErr error
}

func (r *recorder) Begin(_ context.Context, s replication.Start) error {
	r.calls = append(r.calls, fmt.Sprintf("begin %s tli %d %+v size %d", s.LSN, s.Timeline, s.Tablespaces, s.Size))
	return nil
}

func (r *recorder) Dir(_ context.Context, e replication.Entry) error {
	r.calls = append(r.calls, fmt.Sprintf("dir %s %v", e.Name, e.Mode))
	return nil
}

func (r *recorder) File(_ context.Context, e replication.Entry, rd io.Reader) error {
	if e.Name == r.failOn {
		return r.failErr
	}
	b, err := io.ReadAll(rd)
	r.calls = append(r.calls, fmt.Sprintf("file %s %v %q", e.Name, e.Mode, b))
	return err
}

func (r *recorder) Symlink(_ context.Context, e replication.Entry) error {
	r.calls = append(r.calls, "symlink "+e.Name+" -> "+e.Target)
	return nil
}

func (r *recorder) End(_ context.Context, s replication.Stop) error {
	r.stop = s
	r.calls = append(r.calls, fmt.Sprintf("end %s tli %d", s.LSN, s.Timeline))
	return nil
}

func runFake(t *testing.T, o replication.BaseBackupOptions, sink replication.Sink, archives map[string][]byte, extra ...[]byte) error {
	t.Helper()
	connString, _ := pgtest.FakeServer(t, "15.0", fakeBaseBackup(archives, extra...))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := replication.ConnectString(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	return conn.BaseBackup(ctx, o, sink)
}

var (
	tsMembers   = []member{{name: "PG_15_1/", typ: tar.TypeDir}, {name: "PG_15_1/5/16401", body: "ts data", typ: tar.TypeReg}}
	baseMembers = []member{
		{name: "backup_label", body: "START WAL LOCATION: 0/2000028\n", typ: tar.TypeReg},
		{name: "tablespace_map", body: "16400 /srv/ts\n", typ: tar.TypeReg},
		{name: "base/", typ: tar.TypeDir},
		{name: "base/1", body: "relation", typ: tar.TypeReg},
		{name: "pg_wal", link: "/elsewhere/wal", typ: tar.TypeSymlink},
		{name: "conf", link: "/etc/pg.conf", typ: tar.TypeSymlink},
		{name: "global/pg_control", body: "control", typ: tar.TypeReg},
	}
)

// TestBaseBackupReader: the stream becomes sink calls in order, with
// tablespace members under pg_tblspc/<oid>/, the label files in End, a
// pg_wal link as a directory; server-side gzip is decoded.
func TestBaseBackupReader(t *testing.T) {
	want := []string{
		"begin 0/2000028 tli 1 [{OID:16400 Location:/srv/ts Size:1024}] size 3072",
		"dir pg_tblspc/16400/PG_15_1 -rwx------",
		`file pg_tblspc/16400/PG_15_1/5/16401 -rw------- "ts data"`,
		"dir base -rwx------",
		`file base/1 -rw------- "relation"`,
		"dir pg_wal -rwx------",
		"symlink conf -> /etc/pg.conf",
		`file global/pg_control -rw------- "control"`,
		"end 0/2000100 tli 1",
	}
	for _, gz := range []bool{false, true} {
		archives := map[string][]byte{"16400.tar": tarOf(t, tsMembers, gz), "base.tar": tarOf(t, baseMembers, gz)}
		o := replication.BaseBackupOptions{}
		if gz {
			o.Compression = "gzip"
		}
		rec := &recorder{}
		if err := runFake(t, o, rec, archives); err != nil {
			t.Fatalf("gzip %v: %v", gz, err)
		}
		if got := strings.Join(rec.calls, "\n"); got != strings.Join(want, "\n") {
			t.Errorf("gzip %v: calls\n%s\nwant\n%s", gz, got, strings.Join(want, "\n"))
		}
		if rec.stop.BackupLabel != "START WAL LOCATION: 0/2000028\n" || rec.stop.TablespaceMap != "16400 /srv/ts\n" {
			t.Errorf("gzip %v: End got %+v", gz, rec.stop)
		}
	}
}

// TestBaseBackupReaderErrors: what the protocol does not allow is
// ErrProtocol; a sink's own error comes back as it is, and nothing after
// it is called.
func TestBaseBackupReaderErrors(t *testing.T) {
	good := map[string][]byte{"16400.tar": tarOf(t, tsMembers, false), "base.tar": tarOf(t, baseMembers, false)}
	escaping := map[string][]byte{"16400.tar": good["16400.tar"],
		"base.tar": tarOf(t, append([]member{{name: "../outside", body: "x", typ: tar.TypeReg}}, baseMembers...), false)}
	noLabel := map[string][]byte{"16400.tar": good["16400.tar"], "base.tar": tarOf(t, baseMembers[2:], false)}
	for _, tc := range []struct {
		name     string
		archives map[string][]byte
		extra    [][]byte
		o        replication.BaseBackupOptions
	}{
		{"member outside the data directory", escaping, nil, replication.BaseBackupOptions{}},
		{"no backup_label", noLabel, nil, replication.BaseBackupOptions{}},
		{"manifest not asked for", good, [][]byte{[]byte("m"), []byte("d{}")}, replication.BaseBackupOptions{}},
		{"unknown message", good, [][]byte{[]byte("z")}, replication.BaseBackupOptions{}},
	} {
		rec := &recorder{}
		err := runFake(t, tc.o, rec, tc.archives, tc.extra...)
		if !errors.Is(err, replication.ErrProtocol) {
			t.Errorf("%s: %v, want ErrProtocol", tc.name, err)
		}
		if len(rec.calls) > 0 && strings.HasPrefix(rec.calls[len(rec.calls)-1], "end") {
			t.Errorf("%s: End was called", tc.name)
		}
	}

	boom := errors.New("disk full")
	rec := &recorder{failOn: "base/1", failErr: boom}
	if err := runFake(t, replication.BaseBackupOptions{}, rec, good); err != boom {
		t.Errorf("sink error: got %v, want it unwrapped", err)
	}
	for _, c := range rec.calls {
		if strings.Contains(c, "pg_control") || strings.HasPrefix(c, "end") {
			t.Errorf("after the sink failed: %s", c)
		}
	}
	if err := runFake(t, replication.BaseBackupOptions{Manifest: true}, rec, good); err == nil || !strings.Contains(err.Error(), "takes none") {
		t.Errorf("manifest into a sink without Manifest: %v", err)
	}
	if err := runFake(t, replication.BaseBackupOptions{Compression: "brotli"}, rec, good); err == nil {
		t.Error("unknown compression accepted")
	}
}

// TestOlderServer: the commands PostgreSQL 14 lacks fail before anything
// is sent, with errors.ErrUnsupported.
func TestOlderServer(t *testing.T) {
	connString, _ := pgtest.FakeServer(t, "14.9", func(be *pgproto3.Backend) error {
		msg, err := be.Receive()
		if err == nil {
			err = fmt.Errorf("the client sent %#v to a PostgreSQL 14", msg)
		}
		return err
	})
	ctx := context.Background()
	conn, err := replication.ConnectString(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, _, err := conn.CreatePhysicalSlot(ctx, "s"); !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "14.9") {
		t.Errorf("CreatePhysicalSlot on 14: %v", err)
	}
	if err := conn.BaseBackup(ctx, replication.BaseBackupOptions{}, &recorder{}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("BaseBackup on 14: %v", err)
	}
}
