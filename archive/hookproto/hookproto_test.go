package hookproto

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
)

// TestWireFormat pins the JSON lines: hooks and daemons of other builds
// read them.
func TestWireFormat(t *testing.T) {
	tests := []struct {
		v    any
		want string
	}{
		{Request{Version: 1, Op: OpPush, Path: "/pgdata/pg_wal/000000010000000000000003", DataDir: "/pgdata",
			SystemID: 7311000000000000001, PGMajor: 15, WALSegmentSize: 16 << 20},
			`{"v":1,"op":"push","path":"/pgdata/pg_wal/000000010000000000000003","pgdata":"/pgdata","system_identifier":"7311000000000000001","pg_major":15,"wal_segment_size":16777216}`},
		{Request{Version: 2, Op: OpGet, Name: "000000010000000000000005", Dest: "/pgdata/pg_wal/RECOVERYXLOG", Partial: true, DataDir: "/pgdata",
			SystemID: 1, PGMajor: 15, WALSegmentSize: 1 << 20},
			`{"v":2,"op":"get","name":"000000010000000000000005","dest":"/pgdata/pg_wal/RECOVERYXLOG","partial":true,"pgdata":"/pgdata","system_identifier":"1","pg_major":15,"wal_segment_size":1048576}`},
		{Response{Version: 2, Status: StatusOK}, `{"v":2,"status":"ok"}`},
		{Response{Version: 2, Status: StatusError, Class: ClassConflict, Message: "m"}, `{"v":2,"status":"error","class":"conflict","message":"m"}`},
	}
	for _, tt := range tests {
		got, err := json.Marshal(tt.v)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tt.want {
			t.Errorf("got  %s\nwant %s", got, tt.want)
		}
	}
}

func TestReadLine(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader(strings.Repeat("x", 5000)+"\nnext\n"), 512)
	if line, err := ReadLine(br); err != nil || len(line) != 5001 {
		t.Errorf("a line longer than the buffer: %d bytes, %v", len(line), err)
	}
	if _, err := ReadLine(bufio.NewReader(strings.NewReader(strings.Repeat("x", MaxLine+1) + "\n"))); err == nil {
		t.Error("a line over MaxLine was accepted")
	}
	if _, err := ReadLine(bufio.NewReader(strings.NewReader("no newline"))); err == nil {
		t.Error("a line without its newline was accepted")
	}
}

func TestClassExitCode(t *testing.T) {
	want := map[string]int{
		ClassConflict: ExitRepository, ClassWrongCluster: ExitRepository, ClassNotInitialized: ExitRepository,
		ClassNoBucket: ExitRepository, ClassIncompatible: ExitRepository, ClassPermission: ExitPermission,
		ClassCorrupt: ExitCorrupt, ClassTransient: ExitUnreachable, ClassNoSuchFile: ExitUsage,
		ClassUsage: ExitUsage, ClassNotRepository: ExitRepository, ClassNoBackup: ExitRepository, ClassPostgres: ExitPostgres,
		ClassLocked: ExitLocked, ClassFenced: ExitFenced, ClassInterrupted: ExitFailure, ClassBadRequest: ExitFailure,
		ClassUnsupported: ExitFailure, ClassFailure: ExitFailure, "a class of a newer daemon": ExitFailure,
	}
	for _, c := range Classes {
		if _, ok := want[c]; !ok {
			t.Errorf("class %q has no expected exit code here", c)
		}
	}
	for class, code := range want {
		if got := ClassExitCode(class); got != code {
			t.Errorf("ClassExitCode(%q) = %d, want %d", class, got, code)
		}
	}
}
