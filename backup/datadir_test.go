package backup

import (
	"strings"
	"testing"
	"time"
)

func TestParsePIDFile(t *testing.T) {
	good := "4242\n/var/lib/postgresql/15/main\n1765000000\n5432\n/var/run/postgresql\n*\n  5432001         0\nready   \n"
	pf, err := parsePIDFile(good)
	if err != nil {
		t.Fatal(err)
	}
	want := pidFile{pid: 4242, dataDir: "/var/lib/postgresql/15/main", started: time.Unix(1765000000, 0), port: 5432}
	if pf != want {
		t.Errorf("parsePIDFile: %+v, want %+v", pf, want)
	}
	for _, bad := range []string{
		"", "4242\n", "4242\n/d\n1765000000\n",
		"x\n/d\n1765000000\n5432\n", "4242\n/d\nnot-a-time\n5432\n", "4242\n/d\n1765000000\nport\n",
	} {
		if _, err := parsePIDFile(bad); err == nil || !strings.Contains(err.Error(), "postmaster.pid") {
			t.Errorf("parsePIDFile(%q): %v, want an error naming postmaster.pid", bad, err)
		}
	}
}

func TestPIDFileMismatch(t *testing.T) {
	started := time.Unix(1765000000, 0)
	server := serverSelf{dataDir: "/pg/data", port: 5432, started: started.Add(1500 * time.Millisecond)}
	same := pidFile{pid: 7, dataDir: "/pg/data", started: started, port: 5432}
	for _, tc := range []struct {
		name string
		pf   pidFile
		srv  serverSelf
		want string // substring of the reason; "" for a match
	}{
		{"same server", same, server, ""},
		{"data_directory not readable", same, serverSelf{port: 5432, started: server.started}, ""},
		{"other port", pidFile{pid: 7, dataDir: "/pg/data", started: started, port: 5433}, server, "port 5433"},
		{"other directory", pidFile{pid: 7, dataDir: "/old/restore", started: started, port: 5432}, server, "/old/restore"},
		{"stale file", pidFile{pid: 7, dataDir: "/pg/data", started: started.Add(-24 * time.Hour), port: 5432}, server, "stale"},
		{"started after the server", pidFile{pid: 7, dataDir: "/pg/data", started: started.Add(time.Minute), port: 5432}, server, "started at"},
	} {
		got := tc.pf.mismatch(tc.srv)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: mismatch %q, want %q", tc.name, got, tc.want)
		}
	}
}
