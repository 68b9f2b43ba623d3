package pg

import (
	"errors"
	"testing"
)

func mustSize(t *testing.T, bytes int64) WALSegmentSize {
	t.Helper()
	s, err := NewWALSegmentSize(bytes)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewWALSegmentSize(t *testing.T) {
	for shift := 20; shift <= 30; shift++ {
		s, err := NewWALSegmentSize(1 << shift)
		if err != nil {
			t.Errorf("size 2^%d: %v", shift, err)
			continue
		}
		if s.Bytes() != 1<<shift {
			t.Errorf("size 2^%d: Bytes() = %d", shift, s.Bytes())
		}
		if got, want := s.SegmentsPerXLogID(), uint64(1)<<(32-shift); got != want {
			t.Errorf("size 2^%d: SegmentsPerXLogID = %d, want %d", shift, got, want)
		}
	}
	for _, bad := range []int64{0, -1, 1 << 19, 1 << 31, 1 << 40, 3 << 20, 16<<20 + 1} {
		if _, err := NewWALSegmentSize(bad); err == nil {
			t.Errorf("NewWALSegmentSize(%d) succeeded", bad)
		}
	}
	var zero WALSegmentSize
	if zero.Bytes() != DefaultWALSegmentSize || zero != mustSize(t, DefaultWALSegmentSize) {
		t.Error("zero value is not the 16 MiB default")
	}
	for _, tt := range []struct {
		bytes int64
		want  string
	}{{1 << 20, "1MB"}, {16 << 20, "16MB"}, {512 << 20, "512MB"}, {1 << 30, "1GB"}} {
		if got := mustSize(t, tt.bytes).String(); got != tt.want {
			t.Errorf("String(%d) = %q, want %q", tt.bytes, got, tt.want)
		}
	}
}

func TestSegmentArithmetic(t *testing.T) {
	const lsn LSN = 0x16B374D848 // 16/B374D848
	tests := []struct {
		sizeMB  int64
		segNo   SegNo
		name    string
		offset  uint64
		lastLow uint32 // highest valid low field
	}{
		{1, 0x16B37, "000000010000001600000B37", 0x4D848, 0xFFF},
		{16, 0x16B3, "0000000100000016000000B3", 0x74D848, 0xFF},
		{64, 0x5AC, "00000001000000160000002C", 0x374D848, 0x3F},
		{1024, 0x5A, "000000010000001600000002", 0x3374D848, 0x3},
	}
	for _, tt := range tests {
		s := mustSize(t, tt.sizeMB<<20)
		if got := s.SegNoOf(lsn); got != tt.segNo {
			t.Errorf("%s: SegNoOf = %#x, want %#x", s, got, tt.segNo)
		}
		if got := SegmentNameOf(1, lsn, s); got != tt.name {
			t.Errorf("%s: SegmentNameOf = %s, want %s", s, got, tt.name)
		}
		if got := s.Offset(lsn); got != tt.offset {
			t.Errorf("%s: Offset = %#x, want %#x", s, got, tt.offset)
		}
		if got := s.StartLSN(tt.segNo) + LSN(tt.offset); got != lsn {
			t.Errorf("%s: StartLSN+Offset = %v, want %v", s, got, lsn)
		}
		if got := s.SegNoBefore(s.StartLSN(tt.segNo + 1)); got != tt.segNo {
			t.Errorf("%s: SegNoBefore(end of segment) = %#x, want %#x", s, got, tt.segNo)
		}
		tli, segNo, err := ParseSegmentName(tt.name, s)
		if err != nil || tli != 1 || segNo != tt.segNo {
			t.Errorf("%s: ParseSegmentName(%s) = %d, %#x, %v", s, tt.name, tli, segNo, err)
		}
		// The last segment of an xlog id rolls over into the next id.
		last := SegmentName(3, SegNo(s.SegmentsPerXLogID()-1), s)
		next, err := NextSegmentName(last, s)
		if want := "000000030000000100000000"; err != nil || next != want {
			t.Errorf("%s: NextSegmentName(%s) = %s, %v; want %s", s, last, next, err, want)
		}
		if _, _, err := ParseSegmentName(last, s); err != nil {
			t.Errorf("%s: highest low field %s rejected: %v", s, last, err)
		}
		tooHigh := SegmentName(1, 0, s)[:16] + hex8(tt.lastLow+1)
		if _, _, err := ParseSegmentName(tooHigh, s); err == nil {
			t.Errorf("%s: impossible low field accepted: %s", s, tooHigh)
		}
	}
}

func hex8(v uint32) string { return TimeLineID(v).Hex() }

func TestLastSegment(t *testing.T) {
	for _, mb := range []int64{1, 16, 1024} {
		s := mustSize(t, mb<<20)
		max := s.MaxSegNo()
		name := SegmentName(1, max, s)
		if want := "00000001FFFFFFFF" + hex8(uint32(s.SegmentsPerXLogID()-1)); name != want {
			t.Errorf("%s: last segment %s, want %s", s, name, want)
		}
		if _, err := NextSegmentName(name, s); err == nil {
			t.Errorf("%s: NextSegmentName of the last segment succeeded", s)
		}
		if got := s.SegNoOf(LSN(^uint64(0))); got != max {
			t.Errorf("%s: SegNoOf(max LSN) = %#x, want %#x", s, got, max)
		}
	}
}

func TestParseWALFileName(t *testing.T) {
	s1 := mustSize(t, 1<<20)
	s1g := mustSize(t, 1<<30)
	tests := []struct {
		name    string
		size    WALSegmentSize
		want    WALFile
		wantErr bool
	}{
		{name: "000000010000000000000003", want: WALFile{Kind: KindSegment, TLI: 1, SegNo: 3}},
		{name: "0000000A00000002000000FF", want: WALFile{Kind: KindSegment, TLI: 10, SegNo: 2*256 + 255}},
		{name: "00000002.history", want: WALFile{Kind: KindHistory, TLI: 2}},
		{name: "FFFFFFFF.history", want: WALFile{Kind: KindHistory, TLI: 0xFFFFFFFF}},
		{name: "000000010000000000000003.00000028.backup", want: WALFile{Kind: KindBackup, TLI: 1, SegNo: 3, BackupOffset: 0x28}},
		{name: "000000010000000000000003.00FFFFFF.backup", want: WALFile{Kind: KindBackup, TLI: 1, SegNo: 3, BackupOffset: 0xFFFFFF}},
		{name: "000000010000000000000003.partial", want: WALFile{Kind: KindPartial, TLI: 1, SegNo: 3}},
		{name: "00000002000000000000000F", size: s1, want: WALFile{Kind: KindSegment, TLI: 2, SegNo: 15}},
		{name: "000000010000000100000FFF", size: s1, want: WALFile{Kind: KindSegment, TLI: 1, SegNo: 4096 + 4095}},
		{name: "000000010000000500000003", size: s1g, want: WALFile{Kind: KindSegment, TLI: 1, SegNo: 5*4 + 3}},
		{name: "000000010000000000000003.3FFFFFFF.backup", size: s1g, want: WALFile{Kind: KindBackup, TLI: 1, SegNo: 3, BackupOffset: 0x3FFFFFFF}},

		{name: "", wantErr: true},
		{name: "00000001000000000000000", wantErr: true},   // 23
		{name: "0000000100000000000000030", wantErr: true}, // 25
		{name: "00000001000000000000000a", wantErr: true},  // lower case
		{name: "0000000100000000000000G3", wantErr: true},
		{name: "000000000000000000000003", wantErr: true}, // timeline 0
		{name: "00000000.history", wantErr: true},
		{name: "0000000a.history", wantErr: true},
		{name: "0000002.history", wantErr: true},
		{name: "00000002.History", wantErr: true},
		{name: "00000002.history.partial", wantErr: true},
		{name: "000000010000000000000100", wantErr: true}, // low 0x100 impossible with 16 MiB
		{name: "000000010000000000000100", size: s1, wantErr: false, // ... fine with 1 MiB
			want: WALFile{Kind: KindSegment, TLI: 1, SegNo: 0x100}},
		{name: "000000010000000000001000", size: s1, wantErr: true}, // 0x1000 impossible with 1 MiB
		{name: "000000010000000000000004", size: s1g, wantErr: true},
		{name: "000000010000000000000003.01000000.backup", wantErr: true}, // offset beyond 16 MiB
		{name: "000000010000000000000003.0000002.backup", wantErr: true},
		{name: "000000010000000000000003.0000002g.backup", wantErr: true},
		{name: "000000010000000000000003.00000028.backup.partial", wantErr: true},
		{name: "000000010000000000000003.partial.backup", wantErr: true},
		{name: "000000010000000000000003.ready", wantErr: true},
		{name: "000000010000000000000003.done", wantErr: true},
		{name: "000000010000000000000003.", wantErr: true},
		{name: "pg_wal/000000010000000000000003", wantErr: true},
		{name: "../00000001000000000000003", wantErr: true},
		{name: "00000001/000000000000003", wantErr: true},
		{name: "00000001\\000000000000003", wantErr: true},
		{name: "000000010000000000000003\x00", wantErr: true},
		{name: " 000000010000000000000003", wantErr: true},
		{name: "０00000010000000000000003", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseWALFileName(tt.name, tt.size)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseWALFileName(%q, %s) = %+v, want error", tt.name, tt.size, got)
			} else if !errors.Is(err, ErrInvalidWALFileName) {
				t.Errorf("ParseWALFileName(%q): error %v does not wrap ErrInvalidWALFileName", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseWALFileName(%q, %s): %v", tt.name, tt.size, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseWALFileName(%q, %s) = %+v, want %+v", tt.name, tt.size, got, tt.want)
		}
		if back := got.Name(tt.size); back != tt.name {
			t.Errorf("Name() of %q = %q", tt.name, back)
		}
	}
}

func TestFileNameBuilders(t *testing.T) {
	s := WALSegmentSize{}
	if got, want := HistoryFileName(2), "00000002.history"; got != want {
		t.Errorf("HistoryFileName = %q, want %q", got, want)
	}
	if got, want := HistoryFileName(0x1F), "0000001F.history"; got != want {
		t.Errorf("HistoryFileName = %q, want %q", got, want)
	}
	if got, want := BackupHistoryFileName(1, 0x3000028, s), "000000010000000000000003.00000028.backup"; got != want {
		t.Errorf("BackupHistoryFileName = %q, want %q", got, want)
	}
	if got, want := PartialFileName(1, 3, s), "000000010000000000000003.partial"; got != want {
		t.Errorf("PartialFileName = %q, want %q", got, want)
	}
	f, err := ParseWALFileName("000000010000000000000003.00000028.backup", s)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.StartLSN(s); got != 0x3000028 {
		t.Errorf("backup StartLSN = %v, want 0/3000028", got)
	}
	if got := (WALFile{Kind: KindHistory, TLI: 2}).StartLSN(s); got != InvalidLSN {
		t.Errorf("history StartLSN = %v, want 0/0", got)
	}
	for k, want := range map[WALFileKind]string{KindSegment: "segment", KindHistory: "history", KindBackup: "backup", KindPartial: "partial", 0: "WALFileKind(0)"} {
		if got := k.String(); got != want {
			t.Errorf("WALFileKind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
	if _, _, err := ParseSegmentName("00000002.history", s); err == nil {
		t.Error("ParseSegmentName accepted a history file")
	}
}
