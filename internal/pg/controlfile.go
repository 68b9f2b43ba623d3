package pg

import (
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/walferry/walferry/internal/pg/pgcontrol"
)

// The control file is read and checked by package pgcontrol (no pgx, for
// walferry-hook); this file decodes all of it.

// ControlFilePath is the control file's path inside a data directory.
const ControlFilePath = pgcontrol.Path

// ControlFileSize is the physical size of global/pg_control
// (PG_CONTROL_FILE_SIZE); only its first few hundred bytes are used.
const ControlFileSize = pgcontrol.Size

// DBState is the cluster state recorded in pg_control.
type DBState uint32

// The states of DBState, numbered as in pg_control.h (PostgreSQL 9.4+).
const (
	DBStartup              DBState = 0
	DBShutdowned           DBState = 1
	DBShutdownedInRecovery DBState = 2
	DBShutdowning          DBState = 3
	DBInCrashRecovery      DBState = 4
	DBInArchiveRecovery    DBState = 5
	DBInProduction         DBState = 6
)

// dbStateNames are the texts pg_controldata prints for the states.
var dbStateNames = enumNames{what: "cluster state", unknown: "unrecognized status code", byValue: []string{
	DBStartup:              "starting up",
	DBShutdowned:           "shut down",
	DBShutdownedInRecovery: "shut down in recovery",
	DBShutdowning:          "shutting down",
	DBInCrashRecovery:      "in crash recovery",
	DBInArchiveRecovery:    "in archive recovery",
	DBInProduction:         "in production",
}}

// String returns the text pg_controldata prints for s.
func (s DBState) String() string { return dbStateNames.of(int64(s)) }

// CleanlyShutDown reports whether the state is one a cluster is left in by
// a clean shutdown (of a primary or of a standby).
func (s DBState) CleanlyShutDown() bool {
	return s == DBShutdowned || s == DBShutdownedInRecovery
}

// WALLevel is the wal_level setting recorded in pg_control.
type WALLevel int32

// The wal_level values, numbered as in xlog.h.
const (
	WALLevelMinimal WALLevel = 0
	WALLevelReplica WALLevel = 1
	WALLevelLogical WALLevel = 2
)

// walLevelNames are the settings' names as in postgresql.conf.
var walLevelNames = enumNames{what: "wal_level", unknown: "unrecognized wal_level",
	byValue: []string{WALLevelMinimal: "minimal", WALLevelReplica: "replica", WALLevelLogical: "logical"}}

// String returns the setting's name as in postgresql.conf.
func (l WALLevel) String() string { return walLevelNames.of(int64(l)) }

// enumNames are the texts of an enum's values (numbered from 0, without
// gaps, as pg_control's are): String prints them and pg_controldata's
// output is parsed back with them (enumField), from the one table.
type enumNames struct {
	what    string   // what the enum is, for parse errors
	unknown string   // the text of a value with no name
	byValue []string // indexed by value
}

// of returns the text of value v.
func (n enumNames) of(v int64) string {
	if v < 0 || v >= int64(len(n.byValue)) {
		return n.unknown
	}
	return n.byValue[v]
}

// ControlData is the content of global/pg_control (ControlFileData), with
// the copy of the latest checkpoint record flattened in.
type ControlData struct {
	SystemIdentifier uint64
	ControlVersion   uint32 // pg_control_version: 1300 (PostgreSQL 13-16), 1700, 1800
	CatalogVersion   uint32 // catalog_version_no, e.g. 202209061
	// Major is the PostgreSQL major version. From the control file alone it
	// is inferred from ControlVersion and CatalogVersion (exact for released
	// versions); ReadControlData takes it from PG_VERSION, which is
	// authoritative.
	Major int

	State         DBState
	Time          time.Time // last update of pg_control
	CheckpointLSN LSN       // latest checkpoint record

	// The latest checkpoint record (checkPointCopy).
	RedoLSN            LSN
	TimeLineID         TimeLineID
	PrevTimeLineID     TimeLineID
	FullPageWrites     bool
	CheckpointWALLevel WALLevel // PostgreSQL 17+; zero before
	NextXID            uint64   // full transaction ID: epoch<<32 | xid
	NextOID            uint32
	NextMultiXactID    uint32
	NextMultiOffset    uint32
	OldestXID          uint32
	OldestXIDDB        uint32
	OldestMultiXactID  uint32
	OldestMultiDB      uint32
	CheckpointTime     time.Time
	OldestCommitTsXID  uint32
	NewestCommitTsXID  uint32
	OldestActiveXID    uint32

	UnloggedLSN         LSN
	MinRecoveryPoint    LSN
	MinRecoveryPointTLI TimeLineID
	BackupStartPoint    LSN
	BackupEndPoint      LSN
	BackupEndRequired   bool

	// Settings that decide whether the WAL serves archiving and standbys.
	WALLevel             WALLevel
	WALLogHints          bool
	MaxConnections       int32
	MaxWorkerProcesses   int32
	MaxWALSenders        int32
	MaxPreparedXacts     int32
	MaxLocksPerXact      int32
	TrackCommitTimestamp bool

	// Build parameters the server binary must match.
	MaxAlign             uint32
	BlockSize            uint32 // blcksz
	RelSegSize           uint32 // blocks per segment of a large relation
	WALBlockSize         uint32 // xlog_blcksz
	WALSegmentSize       uint32 // xlog_seg_size, bytes
	NameDataLen          uint32
	IndexMaxKeys         uint32
	ToastMaxChunkSize    uint32
	LargeObjectChunkSize uint32 // loblksize
	Float8ByVal          bool
	DataChecksumVersion  uint32 // 0 when data checksums are off
	// DefaultCharSigned is PostgreSQL 18's default_char_signedness; false
	// before 18.
	DefaultCharSigned bool
	MockAuthNonce     [32]byte
}

// DataChecksums reports whether data page checksums are enabled.
func (c *ControlData) DataChecksums() bool { return c.DataChecksumVersion != 0 }

// SegmentSize returns the WAL segment size as a validated WALSegmentSize.
func (c *ControlData) SegmentSize() (WALSegmentSize, error) {
	return NewWALSegmentSize(int64(c.WALSegmentSize))
}

// controlLayout is the part of pgcontrol.Layout this package's tests use.
type controlLayout struct {
	crc int
}

// detectLayout is pgcontrol.DetectLayout.
func detectLayout(b []byte) (binary.ByteOrder, controlLayout, uint32, error) {
	order, l, v, err := pgcontrol.DetectLayout(b)
	return order, controlLayout{crc: l.CRC}, v, err
}

// Offsets shared by every supported layout. Derived from ControlFileData in
// src/include/catalog/pg_control.h with 8-byte alignment of 64-bit fields
// (every 64-bit platform PostgreSQL supports); pgcontrol has those it reads.
const (
	offSystemIdentifier    = pgcontrol.OffSystemIdentifier
	offControlVersion      = pgcontrol.OffControlVersion
	offCatalogVersion      = pgcontrol.OffCatalogVersion
	offState               = 16
	offTime                = 24
	offCheckPoint          = 32
	offCkpt                = 40 // CheckPoint checkPointCopy
	offCkptRedo            = offCkpt + 0
	offCkptTLI             = offCkpt + 8
	offCkptPrevTLI         = offCkpt + 12
	offCkptFullPageWrites  = offCkpt + 16
	offCkptWALLevel        = offCkpt + 20
	offCkptNextXID         = offCkpt + 24
	offCkptNextOID         = offCkpt + 32
	offCkptNextMulti       = offCkpt + 36
	offCkptNextMultiOffset = offCkpt + 40
	offCkptOldestXID       = offCkpt + 44
	offCkptOldestXIDDB     = offCkpt + 48
	offCkptOldestMulti     = offCkpt + 52
	offCkptOldestMultiDB   = offCkpt + 56
	offCkptTime            = offCkpt + 64
	offCkptOldestCommitTs  = offCkpt + 72
	offCkptNewestCommitTs  = offCkpt + 76
	offCkptOldestActiveXID = offCkpt + 80
	offUnloggedLSN         = 128
	offMinRecoveryPoint    = 136
	offMinRecoveryTLI      = 144
	offBackupStartPoint    = 152
	offBackupEndPoint      = 160
	offBackupEndRequired   = 168
	offWALLevel            = 172
	offWALLogHints         = 176
	offMaxConnections      = 180
	offMaxWorkerProcesses  = 184
	offMaxWALSenders       = 188
	offMaxPreparedXacts    = 192
	offMaxLocksPerXact     = 196
	offTrackCommitTs       = 200
	offMaxAlign            = 204
	offFloatFormat         = pgcontrol.OffFloatFormat
	offBlockSize           = 216
	offRelSegSize          = 220
	offWALBlockSize        = 224
	offWALSegSize          = pgcontrol.OffWALSegSize
	offNameDataLen         = 232
	offIndexMaxKeys        = 236
	offToastMaxChunkSize   = 240
	offLOBlockSize         = 244
	offFloat8ByVal         = 248
	offDataChecksumVersion = 252
)

// MajorFromControlVersion infers the PostgreSQL major version from
// pg_control_version and catalog_version_no. It is exact for released
// versions; a development or beta build maps to the release whose catalog
// version is the first at or above its own.
func MajorFromControlVersion(controlVersion, catalogVersion uint32) (int, error) {
	return pgcontrol.MajorFromControlVersion(controlVersion, catalogVersion)
}

// ErrControlFileCRC is returned (wrapped) when the control file's CRC does
// not match its content.
var ErrControlFileCRC = pgcontrol.ErrCRC

// ParseControlFile decodes the bytes of a pg_control file (at least the used
// part; normally all 8192 bytes). It detects the byte order, checks the
// layout version, the float-format sentinel and the CRC-32C, and fails with a
// clear error on a short, foreign or corrupt file.
func ParseControlFile(b []byte) (*ControlData, error) {
	f, err := pgcontrol.Parse(b)
	if err != nil {
		return nil, err
	}
	return decodeControlFile(f)
}

// decodeControlFile decodes a checked control file; Major is inferred
// from its versions.
func decodeControlFile(f *pgcontrol.File) (*ControlData, error) {
	b, layout := f.Data, f.Layout
	u32, u64 := f.Uint32, f.Uint64
	i32 := func(off int) int32 { return int32(u32(off)) }
	boolean := func(off int) bool { return b[off] != 0 }
	unix := func(off int) time.Time { return time.Unix(int64(u64(off)), 0).UTC() }

	c := &ControlData{
		SystemIdentifier: f.SystemIdentifier(),
		ControlVersion:   f.Version,
		CatalogVersion:   f.CatalogVersion(),
		State:            DBState(u32(offState)),
		Time:             unix(offTime),
		CheckpointLSN:    LSN(u64(offCheckPoint)),

		RedoLSN:           LSN(u64(offCkptRedo)),
		TimeLineID:        TimeLineID(u32(offCkptTLI)),
		PrevTimeLineID:    TimeLineID(u32(offCkptPrevTLI)),
		FullPageWrites:    boolean(offCkptFullPageWrites),
		NextXID:           u64(offCkptNextXID),
		NextOID:           u32(offCkptNextOID),
		NextMultiXactID:   u32(offCkptNextMulti),
		NextMultiOffset:   u32(offCkptNextMultiOffset),
		OldestXID:         u32(offCkptOldestXID),
		OldestXIDDB:       u32(offCkptOldestXIDDB),
		OldestMultiXactID: u32(offCkptOldestMulti),
		OldestMultiDB:     u32(offCkptOldestMultiDB),
		CheckpointTime:    unix(offCkptTime),
		OldestCommitTsXID: u32(offCkptOldestCommitTs),
		NewestCommitTsXID: u32(offCkptNewestCommitTs),
		OldestActiveXID:   u32(offCkptOldestActiveXID),

		UnloggedLSN:         LSN(u64(offUnloggedLSN)),
		MinRecoveryPoint:    LSN(u64(offMinRecoveryPoint)),
		MinRecoveryPointTLI: TimeLineID(u32(offMinRecoveryTLI)),
		BackupStartPoint:    LSN(u64(offBackupStartPoint)),
		BackupEndPoint:      LSN(u64(offBackupEndPoint)),
		BackupEndRequired:   boolean(offBackupEndRequired),

		WALLevel:             WALLevel(i32(offWALLevel)),
		WALLogHints:          boolean(offWALLogHints),
		MaxConnections:       i32(offMaxConnections),
		MaxWorkerProcesses:   i32(offMaxWorkerProcesses),
		MaxWALSenders:        i32(offMaxWALSenders),
		MaxPreparedXacts:     i32(offMaxPreparedXacts),
		MaxLocksPerXact:      i32(offMaxLocksPerXact),
		TrackCommitTimestamp: boolean(offTrackCommitTs),

		MaxAlign:             u32(offMaxAlign),
		BlockSize:            u32(offBlockSize),
		RelSegSize:           u32(offRelSegSize),
		WALBlockSize:         u32(offWALBlockSize),
		WALSegmentSize:       f.WALSegmentSize(),
		NameDataLen:          u32(offNameDataLen),
		IndexMaxKeys:         u32(offIndexMaxKeys),
		ToastMaxChunkSize:    u32(offToastMaxChunkSize),
		LargeObjectChunkSize: u32(offLOBlockSize),
		Float8ByVal:          boolean(offFloat8ByVal),
		DataChecksumVersion:  u32(offDataChecksumVersion),
	}
	if layout.WALLevelInCheckpoint {
		c.CheckpointWALLevel = WALLevel(i32(offCkptWALLevel))
	}
	if layout.CharSignedness >= 0 {
		c.DefaultCharSigned = boolean(layout.CharSignedness)
	}
	copy(c.MockAuthNonce[:], b[layout.Nonce:layout.Nonce+len(c.MockAuthNonce)])
	var err error
	if c.Major, err = MajorFromControlVersion(c.ControlVersion, c.CatalogVersion); err != nil {
		return nil, err
	}
	return c, nil
}

// ReadControlFile reads and parses the control file at path. A file whose
// CRC does not match is reread a few times: a running server rewrites
// pg_control in place, so a read can race with a write.
func ReadControlFile(path string) (*ControlData, error) {
	f, err := pgcontrol.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return decodeControlFile(f)
}

// ReadControlData reads dataDir's global/pg_control and PG_VERSION. Major is
// taken from PG_VERSION, which must agree with the control file's version.
func ReadControlData(dataDir string) (*ControlData, error) {
	f, major, err := pgcontrol.ReadDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	c, err := decodeControlFile(f)
	if err != nil {
		return nil, err
	}
	c.Major = major
	return c, nil
}

// ReadPGVersion returns the major version in dataDir/PG_VERSION ("15").
func ReadPGVersion(dataDir string) (int, error) { return pgcontrol.ReadPGVersion(dataDir) }

// ParsePGVersion parses the content of a PG_VERSION file: a major version
// ("15") followed by a newline; pre-10 versions ("9.6") give 9.
func ParsePGVersion(b []byte) (int, error) { return pgcontrol.ParsePGVersion(b) }

// NonceHex returns the mock authentication nonce in the hex form
// pg_controldata prints.
func (c *ControlData) NonceHex() string { return hex.EncodeToString(c.MockAuthNonce[:]) }
