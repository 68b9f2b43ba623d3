package backup

import (
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg"
)

func TestPIDFileMismatch(t *testing.T) {
	started := time.Unix(1765000000, 0)
	server := serverSelf{dataDir: "/pg/data", port: 5432, started: started.Add(1500 * time.Millisecond)}
	same := pg.PIDFile{PID: 7, DataDir: "/pg/data", Started: started, Port: 5432}
	for _, tc := range []struct {
		name string
		pf   pg.PIDFile
		srv  serverSelf
		want string // substring of the reason; "" for a match
	}{
		{"same server", same, server, ""},
		{"data_directory not readable", same, serverSelf{port: 5432, started: server.started}, ""},
		{"other port", pg.PIDFile{PID: 7, DataDir: "/pg/data", Started: started, Port: 5433}, server, "port 5433"},
		{"other directory", pg.PIDFile{PID: 7, DataDir: "/old/restore", Started: started, Port: 5432}, server, "/old/restore"},
		{"stale file", pg.PIDFile{PID: 7, DataDir: "/pg/data", Started: started.Add(-24 * time.Hour), Port: 5432}, server, "stale"},
		{"started after the server", pg.PIDFile{PID: 7, DataDir: "/pg/data", Started: started.Add(time.Minute), Port: 5432}, server, "started at"},
	} {
		got := mismatch(tc.pf, tc.srv)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: mismatch %q, want %q", tc.name, got, tc.want)
		}
	}
}
