package pg

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
)

// TimeLineID identifies a PostgreSQL timeline. Valid timelines start at 1.
type TimeLineID uint32

// Hex returns the eight-digit upper-case hex form used in file names.
func (t TimeLineID) Hex() string { return fmt.Sprintf("%08X", uint32(t)) }

// SegNo is a WAL segment number (XLogSegNo): LSN / segment size. Its meaning
// depends on the segment size, so it always travels with a WALSegmentSize.
type SegNo uint64

// Segment size limits, as enforced by PostgreSQL's IsValidWalSegSize.
const (
	MinWALSegmentSize     int64 = 1 << 20 // 1 MiB
	MaxWALSegmentSize     int64 = 1 << 30 // 1 GiB
	DefaultWALSegmentSize int64 = 16 << 20
)

// xlogIDSpan is the LSN range covered by one "xlog id", the middle field of a
// segment name: 0x100000000 bytes.
const xlogIDSpan = 1 << 32

// WALSegmentSize is a validated WAL segment size (initdb --wal-segsize): a
// power of two between 1 MiB and 1 GiB. The zero value is the default 16 MiB;
// other values come from NewWALSegmentSize, so an invalid size cannot exist.
type WALSegmentSize struct {
	shift uint8 // log2 of the size; 0 means the default
}

// NewWALSegmentSize validates bytes as a segment size PostgreSQL accepts.
func NewWALSegmentSize(bytes int64) (WALSegmentSize, error) {
	if bytes < MinWALSegmentSize || bytes > MaxWALSegmentSize || bytes&(bytes-1) != 0 {
		return WALSegmentSize{}, fmt.Errorf("pg: invalid WAL segment size %d bytes: want a power of two between 1 MiB and 1 GiB", bytes)
	}
	shift := uint8(bits.TrailingZeros64(uint64(bytes)))
	if int64(1)<<shift == DefaultWALSegmentSize {
		shift = 0 // one representation per size, so == compares sizes
	}
	return WALSegmentSize{shift: shift}, nil
}

func (s WALSegmentSize) log2() uint {
	if s.shift == 0 {
		return 24
	}
	return uint(s.shift)
}

// Bytes returns the size in bytes.
func (s WALSegmentSize) Bytes() int64 { return 1 << s.log2() }

// String returns the size the way SHOW wal_segment_size prints it ("16MB").
func (s WALSegmentSize) String() string {
	if s.log2() >= 30 {
		return strconv.FormatInt(s.Bytes()>>30, 10) + "GB"
	}
	return strconv.FormatInt(s.Bytes()>>20, 10) + "MB"
}

// SegmentsPerXLogID returns how many segments share one middle name field
// (0x100000000 / size): 256 for 16 MiB, 64 for 64 MiB, 4 for 1 GiB.
func (s WALSegmentSize) SegmentsPerXLogID() uint64 { return xlogIDSpan >> s.log2() }

// MaxSegNo returns the largest segment number: the one holding LSN 2^64-1.
func (s WALSegmentSize) MaxSegNo() SegNo { return SegNo(^uint64(0) >> s.log2()) }

// SegNoOf returns the segment that contains lsn (XLByteToSeg).
func (s WALSegmentSize) SegNoOf(lsn LSN) SegNo { return SegNo(uint64(lsn) >> s.log2()) }

// SegNoBefore returns the segment that contains the byte just before lsn
// (XLByteToPrevSeg): for a segment-aligned end position that is the segment
// that was just completed; pg_walfile_name uses this rule. It returns 0 for
// lsn 0 (where PostgreSQL's macro wraps around to the last segment).
func (s WALSegmentSize) SegNoBefore(lsn LSN) SegNo {
	if lsn == 0 {
		return 0
	}
	return SegNo(uint64(lsn-1) >> s.log2())
}

// StartLSN returns the first LSN of segment segNo (XLogSegNoOffsetToRecPtr
// with offset 0).
func (s WALSegmentSize) StartLSN(segNo SegNo) LSN { return LSN(uint64(segNo) << s.log2()) }

// Offset returns lsn's byte offset within its segment (XLogSegmentOffset).
func (s WALSegmentSize) Offset(lsn LSN) uint64 { return uint64(lsn) & (uint64(s.Bytes()) - 1) }

// SegmentName returns the 24-character WAL file name of segment segNo on
// timeline tli for segment size size (XLogFileName), e.g.
// "000000010000000000000003".
func SegmentName(tli TimeLineID, segNo SegNo, size WALSegmentSize) string {
	per := size.SegmentsPerXLogID()
	return fmt.Sprintf("%08X%08X%08X", uint32(tli), uint32(uint64(segNo)/per), uint32(uint64(segNo)%per))
}

// SegmentNameOf returns the name of the segment containing lsn on tli.
func SegmentNameOf(tli TimeLineID, lsn LSN, size WALSegmentSize) string {
	return SegmentName(tli, size.SegNoOf(lsn), size)
}

// HistoryFileName returns the name of timeline tli's history file
// (TLHistoryFileName), e.g. "00000002.history".
func HistoryFileName(tli TimeLineID) string { return fmt.Sprintf("%08X.history", uint32(tli)) }

// BackupHistoryFileName returns the name of the backup history file that
// PostgreSQL writes for a base backup starting at start on tli
// (BackupHistoryFileName), e.g. "000000010000000000000003.00000028.backup".
func BackupHistoryFileName(tli TimeLineID, start LSN, size WALSegmentSize) string {
	return fmt.Sprintf("%s.%08X.backup", SegmentNameOf(tli, start, size), uint32(size.Offset(start)))
}

// PartialFileName returns the name under which a partial segment (the last,
// incomplete segment of a timeline, archived at promotion) is stored, e.g.
// "000000010000000000000003.partial".
func PartialFileName(tli TimeLineID, segNo SegNo, size WALSegmentSize) string {
	return SegmentName(tli, segNo, size) + ".partial"
}

// WALFileKind tells which kind of file lives in pg_wal or the WAL archive.
type WALFileKind int

// The kinds of file ParseWALFileName recognises.
const (
	KindSegment WALFileKind = iota + 1 // 000000010000000000000003
	KindHistory                        // 00000002.history
	KindBackup                         // 000000010000000000000003.00000028.backup
	KindPartial                        // 000000010000000000000003.partial
)

// String returns the kind's lower-case name.
func (k WALFileKind) String() string {
	switch k {
	case KindSegment:
		return "segment"
	case KindHistory:
		return "history"
	case KindBackup:
		return "backup"
	case KindPartial:
		return "partial"
	}
	return "WALFileKind(" + strconv.Itoa(int(k)) + ")"
}

// WALFile is a parsed WAL archive file name.
type WALFile struct {
	Kind WALFileKind
	// TLI is the timeline: of the segment, or the one a history file
	// describes.
	TLI TimeLineID
	// SegNo is the segment number; zero for KindHistory.
	SegNo SegNo
	// BackupOffset is, for KindBackup, the backup's start offset within the
	// segment; zero otherwise.
	BackupOffset uint32
}

// Name returns the file name f was parsed from (its canonical form).
func (f WALFile) Name(size WALSegmentSize) string {
	switch f.Kind {
	case KindHistory:
		return HistoryFileName(f.TLI)
	case KindBackup:
		return fmt.Sprintf("%s.%08X.backup", SegmentName(f.TLI, f.SegNo, size), f.BackupOffset)
	case KindPartial:
		return PartialFileName(f.TLI, f.SegNo, size)
	}
	return SegmentName(f.TLI, f.SegNo, size)
}

// StartLSN returns the first LSN the file is about: the segment's start, or
// for a backup history file the backup's start LSN. It is InvalidLSN for a
// history file.
func (f WALFile) StartLSN(size WALSegmentSize) LSN {
	if f.Kind == KindHistory {
		return InvalidLSN
	}
	return size.StartLSN(f.SegNo) + LSN(f.BackupOffset)
}

// ErrInvalidWALFileName is returned (wrapped) for a name that is not a WAL
// segment, history, backup history or partial file name.
var ErrInvalidWALFileName = errors.New("not a WAL file name")

const (
	segmentNameLen = 24
	hexFieldLen    = 8
)

// ParseSegmentName parses a plain 24-character segment name into its
// timeline and segment number for segment size size.
func ParseSegmentName(name string, size WALSegmentSize) (TimeLineID, SegNo, error) {
	f, err := ParseWALFileName(name, size)
	if err != nil {
		return 0, 0, err
	}
	if f.Kind != KindSegment {
		return 0, 0, fmt.Errorf("pg: %q: %w: it is a %s file, not a segment", name, ErrInvalidWALFileName, f.Kind)
	}
	return f.TLI, f.SegNo, nil
}

// ParseWALFileName classifies name as a segment, history, backup history or
// partial file name and parses it for segment size size. It rejects every
// other name: paths (it never strips directories), wrong lengths, lower-case
// or non-hex digits, timeline 0, and a low field that cannot occur with this
// segment size (for 16 MiB it must be below 0x100, for 1 GiB below 4).
// Errors wrap ErrInvalidWALFileName.
func ParseWALFileName(name string, size WALSegmentSize) (WALFile, error) {
	bad := func(why string) (WALFile, error) {
		return WALFile{}, fmt.Errorf("pg: %.64q: %w: %s", name, ErrInvalidWALFileName, why)
	}
	if len(name) == hexFieldLen+len(".history") && name[hexFieldLen:] == ".history" {
		tli, ok := parseHexField(name[:hexFieldLen])
		if !ok {
			return bad("timeline is not 8 upper-case hex digits")
		}
		if tli == 0 {
			return bad("timeline 0 does not exist")
		}
		return WALFile{Kind: KindHistory, TLI: TimeLineID(tli)}, nil
	}
	if len(name) < segmentNameLen {
		return bad("too short")
	}
	tli, segNo, why := parseSegmentFields(name[:segmentNameLen], size)
	if why != "" {
		return bad(why)
	}
	f := WALFile{TLI: tli, SegNo: segNo}
	switch suffix := name[segmentNameLen:]; {
	case suffix == "":
		f.Kind = KindSegment
	case suffix == ".partial":
		f.Kind = KindPartial
	case len(suffix) == 1+hexFieldLen+len(".backup") && suffix[0] == '.' && suffix[1+hexFieldLen:] == ".backup":
		off, ok := parseHexField(suffix[1 : 1+hexFieldLen])
		if !ok {
			return bad("backup offset is not 8 upper-case hex digits")
		}
		if int64(off) >= size.Bytes() {
			return bad(fmt.Sprintf("backup offset 0x%X is beyond a %s segment", off, size))
		}
		f.Kind, f.BackupOffset = KindBackup, off
	default:
		return bad("unknown suffix")
	}
	return f, nil
}

// parseSegmentFields parses a 24-character segment name; it returns a reason
// when the name is invalid.
func parseSegmentFields(s string, size WALSegmentSize) (TimeLineID, SegNo, string) {
	tli, ok1 := parseHexField(s[0:8])
	log, ok2 := parseHexField(s[8:16])
	seg, ok3 := parseHexField(s[16:24])
	if !ok1 || !ok2 || !ok3 {
		return 0, 0, "not 24 upper-case hex digits"
	}
	if tli == 0 {
		return 0, 0, "timeline 0 does not exist"
	}
	per := size.SegmentsPerXLogID()
	if uint64(seg) >= per {
		return 0, 0, fmt.Sprintf("low field 0x%X is impossible with %s segments (must be below 0x%X)", seg, size, per)
	}
	return TimeLineID(tli), SegNo(uint64(log)*per + uint64(seg)), ""
}

// parseHexField parses exactly 8 upper-case hex digits.
func parseHexField(s string) (uint32, bool) {
	if len(s) != hexFieldLen {
		return 0, false
	}
	var v uint32
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isUpperHexDigit(c) {
			return 0, false
		}
		var d byte
		if c <= '9' {
			d = c - '0'
		} else {
			d = c - 'A' + 10
		}
		v = v<<4 | uint32(d)
	}
	return v, true
}

// NextSegmentName returns the name of the segment after the segment named
// name on the same timeline. It fails for a name that is not a plain segment
// and for the very last segment.
func NextSegmentName(name string, size WALSegmentSize) (string, error) {
	tli, segNo, err := ParseSegmentName(name, size)
	if err != nil {
		return "", err
	}
	if segNo >= size.MaxSegNo() {
		return "", fmt.Errorf("pg: %q is the last possible WAL segment", name)
	}
	return SegmentName(tli, segNo+1, size), nil
}
