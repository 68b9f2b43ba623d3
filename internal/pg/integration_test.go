package pg_test

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
)

// compareFields reports every field where the binary reader and
// pg_controldata disagree.
func compareFields(t *testing.T, got, want *pg.ControlData) {
	t.Helper()
	gv, wv := reflect.ValueOf(*got), reflect.ValueOf(*want)
	for i := 0; i < gv.NumField(); i++ {
		if g, w := gv.Field(i).Interface(), wv.Field(i).Interface(); !reflect.DeepEqual(g, w) {
			t.Errorf("%s: binary reader %v, pg_controldata %v", gv.Type().Field(i).Name, g, w)
		}
	}
}

// TestControlDataRealClusters initdbs PostgreSQL 15 clusters and compares
// every field the binary reader decodes with pg_controldata's output,
// before and after the server ran, and with what the server reports.
func TestControlDataRealClusters(t *testing.T) {
	tests := []struct {
		name string
		opts pgtest.Options
	}{
		{"default", pgtest.Options{}},
		{"wal64-checksums", pgtest.Options{WALSegSizeMB: 64, DataChecksums: true}},
		{"wal1-logical", pgtest.Options{WALSegSizeMB: 1, Conf: []string{"wal_level = logical", "track_commit_timestamp = on"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			c := pgtest.New(t, tt.opts)

			check := func(stage string) *pg.ControlData {
				t.Helper()
				got, err := pg.ReadControlData(c.DataDir)
				if err != nil {
					t.Fatalf("%s: %v", stage, err)
				}
				want, err := pg.ControlDataFromTool(ctx, c.PGBin, c.DataDir)
				if err != nil {
					t.Fatalf("%s: %v", stage, err)
				}
				compareFields(t, got, want)
				return got
			}

			fresh := check("after initdb")
			wantSeg := int64(16 << 20)
			if tt.opts.WALSegSizeMB != 0 {
				wantSeg = int64(tt.opts.WALSegSizeMB) << 20
			}
			if int64(fresh.WALSegmentSize) != wantSeg {
				t.Errorf("WALSegmentSize = %d, want %d", fresh.WALSegmentSize, wantSeg)
			}
			if fresh.DataChecksums() != tt.opts.DataChecksums {
				t.Errorf("DataChecksums = %v, want %v", fresh.DataChecksums(), tt.opts.DataChecksums)
			}
			if fresh.State != pg.DBShutdowned || fresh.Major != 15 || fresh.TimeLineID != 1 {
				t.Errorf("fresh cluster: state %q, major %d, timeline %d", fresh.State, fresh.Major, fresh.TimeLineID)
			}

			c.Start(t)
			c.Exec(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g")
			c.Exec(t, "SELECT pg_switch_wal()")
			c.Exec(t, "CHECKPOINT")
			running := check("running")
			if running.State != pg.DBInProduction {
				t.Errorf("running: state %q", running.State)
			}
			if running.CheckpointLSN <= fresh.CheckpointLSN {
				t.Errorf("checkpoint did not advance: %v -> %v", fresh.CheckpointLSN, running.CheckpointLSN)
			}

			info, err := pg.ClusterInfo(ctx, c.Conn(t))
			if err != nil {
				t.Fatal(err)
			}
			if info.SystemID != running.SystemIdentifier {
				t.Errorf("SystemID: server %d, control file %d", info.SystemID, running.SystemIdentifier)
			}
			if info.Major != 15 || info.VersionNum/10000 != 15 || !strings.HasPrefix(info.Version, "15") {
				t.Errorf("version: %d %d %q", info.Major, info.VersionNum, info.Version)
			}
			if info.WALSegSize != wantSeg || info.DataChecksums != tt.opts.DataChecksums ||
				info.BlockSize != int(running.BlockSize) || info.InRecovery || info.Timeline != running.TimeLineID {
				t.Errorf("ClusterInfo %+v disagrees with control file", info)
			}
			size, err := info.SegmentSize()
			if err != nil || size.Bytes() != wantSeg {
				t.Errorf("SegmentSize() = %v, %v", size, err)
			}

			// The server names the current segment as we do.
			var lsnText, walName string
			c.QueryRow(t, "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())").Scan(&lsnText, &walName)
			lsn, err := pg.ParseLSN(lsnText)
			if err != nil {
				t.Fatal(err)
			}
			if got := pg.SegmentName(info.Timeline, size.SegNoBefore(lsn), size); got != walName {
				t.Errorf("segment before %v = %s, server says %s", lsn, got, walName)
			}

			c.Stop(t, pgtest.StopImmediate)
			crashed := check("after immediate stop")
			if crashed.State != pg.DBInProduction {
				t.Errorf("after immediate stop: state %q, want in production", crashed.State)
			}
		})
	}
}

// TestWALNamesMatchServer compares our names with pg_walfile_name and
// pg_walfile_name_offset over LSNs around segment and xlog-id boundaries.
func TestWALNamesMatchServer(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t, pgtest.Options{WALSegSizeMB: 2})
	size, err := pg.NewWALSegmentSize(2 << 20)
	if err != nil {
		t.Fatal(err)
	}
	lsns := []string{"0/0", "0/1", "0/1FFFFF", "0/200000", "0/200001", "0/FFFFFFFF", "1/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"}
	for _, text := range lsns {
		lsn, err := pg.ParseLSN(text)
		if err != nil {
			t.Fatal(err)
		}
		var name string
		var offset int64
		c.QueryRow(t, "SELECT file_name, file_offset FROM pg_walfile_name_offset($1::pg_lsn)", text).Scan(&name, &offset)
		// pg_walfile_name_offset names the segment holding the byte before
		// lsn (XLByteToPrevSeg): at a boundary, the segment just completed.
		// For 0/0 the server wraps around to the last segment; we say 0.
		if want := pg.SegmentName(1, size.SegNoBefore(lsn), size); lsn != 0 && want != name {
			t.Errorf("%s: SegmentName(SegNoBefore) = %s, server %s", text, want, name)
		}
		if size.Offset(lsn) != 0 && pg.SegmentNameOf(1, lsn, size) != name {
			t.Errorf("%s: SegmentNameOf = %s, server %s", text, pg.SegmentNameOf(1, lsn, size), name)
		}
		if got := size.Offset(lsn); int64(got) != offset {
			t.Errorf("%s: Offset = %d, server %d", text, got, offset)
		}
		var back string
		c.QueryRow(t, "SELECT $1::pg_lsn::text", lsn.String()).Scan(&back)
		if back != text {
			t.Errorf("%s: server prints our %q as %q", text, lsn.String(), back)
		}
	}
}

func TestConnectFromEnvironment(t *testing.T) { // not parallel: t.Setenv
	c := pgtest.Start(t, pgtest.Options{})
	ctx := context.Background()
	for _, env := range [][2]string{
		{"PGHOST", "127.0.0.1"}, {"PGPORT", ""}, {"PGUSER", "postgres"}, {"PGDATABASE", "postgres"}, {"PGSSLMODE", "disable"},
	} {
		if env[0] == "PGPORT" {
			env[1] = portOf(c)
		}
		t.Setenv(env[0], env[1])
	}
	conn, err := pg.Connect(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var app string
	if err := conn.QueryRow(ctx, "SHOW application_name").Scan(&app); err != nil {
		t.Fatal(err)
	}
	if app != pg.DefaultApplicationName {
		t.Errorf("application_name = %q, want %q", app, pg.DefaultApplicationName)
	}
}

func portOf(c *pgtest.Cluster) string {
	return strings.TrimSpace(strings.SplitN(strings.SplitN(c.ConnString(), "port=", 2)[1], " ", 2)[0])
}

func TestConnectErrors(t *testing.T) {
	t.Parallel()
	const secret = "hunter2-not-this-one"
	c := pgtest.Start(t, pgtest.Options{HBA: []string{"host all bob 127.0.0.1/32 scram-sha-256"}})
	c.Exec(t, "CREATE ROLE bob LOGIN PASSWORD 'right-one'")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	tests := []struct {
		name, conn string
		want       []string
	}{
		{
			name: "wrong password",
			conn: c.ConnString("user=bob", "password="+secret),
			want: []string{"pg: connect to host=127.0.0.1 port=" + portOf(c) + " user=bob dbname=postgres", "password authentication failed"},
		},
		{
			name: "nothing listening",
			conn: "host=127.0.0.1 port=1 user=carol dbname=app sslmode=disable password=" + secret,
			want: []string{"host=127.0.0.1 port=1 user=carol dbname=app", "connection refused"},
		},
		{
			name: "URL",
			conn: "postgres://carol:" + secret + "@127.0.0.1:1/app?sslmode=disable",
			want: []string{"host=127.0.0.1 port=1 user=carol dbname=app", "connection refused"},
		},
	}
	for _, tt := range tests {
		_, err := pg.Connect(ctx, tt.conn)
		if err == nil {
			t.Errorf("%s: connected", tt.name)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, secret) {
			t.Errorf("%s: error shows the password: %s", tt.name, msg)
		}
		for _, w := range tt.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: error %q does not mention %q", tt.name, msg, w)
			}
		}
	}

	conn, err := pg.Connect(ctx, c.ConnString("user=bob", "password=right-one"))
	if err != nil {
		t.Fatalf("right password: %v", err)
	}
	conn.Close(ctx)
}
