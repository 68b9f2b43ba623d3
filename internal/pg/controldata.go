package pg

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// controlDataTimeLayout is strftime's %c in the C locale, which
// pg_controldata uses for its time stamps.
const controlDataTimeLayout = "Mon Jan _2 15:04:05 2006"

// ControlDataFromTool runs pgBin/pg_controldata on dataDir (in the C locale
// and UTC, so its output is parseable) and parses what it prints. It is a
// second source next to ReadControlData, for cross-checks and for layouts
// this package cannot decode. pgBin may be empty to search PATH. Major is
// taken from dataDir/PG_VERSION when that file is readable.
func ControlDataFromTool(ctx context.Context, pgBin, dataDir string) (*ControlData, error) {
	bin := "pg_controldata"
	if pgBin != "" {
		bin = filepath.Join(pgBin, bin)
	}
	cmd := exec.CommandContext(ctx, bin, "-D", dataDir)
	cmd.Env = append(cLocaleEnv(os.Environ()), "LC_ALL=C", "LANG=C", "TZ=UTC")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("pg: %s -D %s: %w: %s", bin, dataDir, err, strings.TrimSpace(stderr.String()))
	}
	c, err := ParseControlDataOutput(&stdout)
	if err != nil {
		return nil, fmt.Errorf("pg: %s -D %s: %w", bin, dataDir, err)
	}
	if major, err := ReadPGVersion(dataDir); err == nil {
		c.Major = major
	}
	return c, nil
}

// cLocaleEnv drops the locale and time zone variables from env.
func cLocaleEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k == "LANG" || k == "LANGUAGE" || k == "TZ" || strings.HasPrefix(k, "LC_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// controlDataSetter stores one pg_controldata value into c.
type controlDataSetter func(c *ControlData, v string) error

// controlDataFields maps pg_controldata's labels (PostgreSQL 13-18, C
// locale) to the fields they fill.
var controlDataFields = map[string]controlDataSetter{
	"pg_control version number": u32Field(func(c *ControlData) *uint32 { return &c.ControlVersion }),
	"Catalog version number":    u32Field(func(c *ControlData) *uint32 { return &c.CatalogVersion }),
	"Database system identifier": func(c *ControlData, v string) (err error) {
		c.SystemIdentifier, err = strconv.ParseUint(v, 10, 64)
		return err
	},
	"Database cluster state":                enumField(dbStateNames, func(c *ControlData) *DBState { return &c.State }),
	"pg_control last modified":              timeField(func(c *ControlData) *time.Time { return &c.Time }),
	"Latest checkpoint location":            lsnField(func(c *ControlData) *LSN { return &c.CheckpointLSN }),
	"Latest checkpoint's REDO location":     lsnField(func(c *ControlData) *LSN { return &c.RedoLSN }),
	"Latest checkpoint's TimeLineID":        tliField(func(c *ControlData) *TimeLineID { return &c.TimeLineID }),
	"Latest checkpoint's PrevTimeLineID":    tliField(func(c *ControlData) *TimeLineID { return &c.PrevTimeLineID }),
	"Latest checkpoint's full_page_writes":  boolField("on", "off", func(c *ControlData) *bool { return &c.FullPageWrites }),
	"Latest checkpoint's NextXID":           func(c *ControlData, v string) (err error) { c.NextXID, err = parseEpochXID(v); return err },
	"Latest checkpoint's NextOID":           u32Field(func(c *ControlData) *uint32 { return &c.NextOID }),
	"Latest checkpoint's NextMultiXactId":   u32Field(func(c *ControlData) *uint32 { return &c.NextMultiXactID }),
	"Latest checkpoint's NextMultiOffset":   u32Field(func(c *ControlData) *uint32 { return &c.NextMultiOffset }),
	"Latest checkpoint's oldestXID":         u32Field(func(c *ControlData) *uint32 { return &c.OldestXID }),
	"Latest checkpoint's oldestXID's DB":    u32Field(func(c *ControlData) *uint32 { return &c.OldestXIDDB }),
	"Latest checkpoint's oldestActiveXID":   u32Field(func(c *ControlData) *uint32 { return &c.OldestActiveXID }),
	"Latest checkpoint's oldestMultiXid":    u32Field(func(c *ControlData) *uint32 { return &c.OldestMultiXactID }),
	"Latest checkpoint's oldestMulti's DB":  u32Field(func(c *ControlData) *uint32 { return &c.OldestMultiDB }),
	"Latest checkpoint's oldestCommitTsXid": u32Field(func(c *ControlData) *uint32 { return &c.OldestCommitTsXID }),
	"Latest checkpoint's newestCommitTsXid": u32Field(func(c *ControlData) *uint32 { return &c.NewestCommitTsXID }),
	"Time of latest checkpoint":             timeField(func(c *ControlData) *time.Time { return &c.CheckpointTime }),
	"Fake LSN counter for unlogged rels":    lsnField(func(c *ControlData) *LSN { return &c.UnloggedLSN }),
	"Minimum recovery ending location":      lsnField(func(c *ControlData) *LSN { return &c.MinRecoveryPoint }),
	"Min recovery ending loc's timeline":    tliField(func(c *ControlData) *TimeLineID { return &c.MinRecoveryPointTLI }),
	"Backup start location":                 lsnField(func(c *ControlData) *LSN { return &c.BackupStartPoint }),
	"Backup end location":                   lsnField(func(c *ControlData) *LSN { return &c.BackupEndPoint }),
	"End-of-backup record required":         boolField("yes", "no", func(c *ControlData) *bool { return &c.BackupEndRequired }),
	"wal_level setting":                     enumField(walLevelNames, func(c *ControlData) *WALLevel { return &c.WALLevel }),
	"wal_log_hints setting":                 boolField("on", "off", func(c *ControlData) *bool { return &c.WALLogHints }),
	"max_connections setting":               i32Field(func(c *ControlData) *int32 { return &c.MaxConnections }),
	"max_worker_processes setting":          i32Field(func(c *ControlData) *int32 { return &c.MaxWorkerProcesses }),
	"max_wal_senders setting":               i32Field(func(c *ControlData) *int32 { return &c.MaxWALSenders }),
	"max_prepared_xacts setting":            i32Field(func(c *ControlData) *int32 { return &c.MaxPreparedXacts }),
	"max_locks_per_xact setting":            i32Field(func(c *ControlData) *int32 { return &c.MaxLocksPerXact }),
	"track_commit_timestamp setting":        boolField("on", "off", func(c *ControlData) *bool { return &c.TrackCommitTimestamp }),
	"Maximum data alignment":                u32Field(func(c *ControlData) *uint32 { return &c.MaxAlign }),
	"Database block size":                   u32Field(func(c *ControlData) *uint32 { return &c.BlockSize }),
	"Blocks per segment of large relation":  u32Field(func(c *ControlData) *uint32 { return &c.RelSegSize }),
	"WAL block size":                        u32Field(func(c *ControlData) *uint32 { return &c.WALBlockSize }),
	"Bytes per WAL segment":                 u32Field(func(c *ControlData) *uint32 { return &c.WALSegmentSize }),
	"Maximum length of identifiers":         u32Field(func(c *ControlData) *uint32 { return &c.NameDataLen }),
	"Maximum columns in an index":           u32Field(func(c *ControlData) *uint32 { return &c.IndexMaxKeys }),
	"Maximum size of a TOAST chunk":         u32Field(func(c *ControlData) *uint32 { return &c.ToastMaxChunkSize }),
	"Size of a large-object chunk":          u32Field(func(c *ControlData) *uint32 { return &c.LargeObjectChunkSize }),
	"Float8 argument passing":               boolField("by value", "by reference", func(c *ControlData) *bool { return &c.Float8ByVal }),
	"Data page checksum version":            u32Field(func(c *ControlData) *uint32 { return &c.DataChecksumVersion }),
	"Default char data signedness":          boolField("signed", "unsigned", func(c *ControlData) *bool { return &c.DefaultCharSigned }),
	"Mock authentication nonce":             parseNonce,
}

// requiredControlDataLabels must appear in pg_controldata output.
var requiredControlDataLabels = []string{
	"pg_control version number",
	"Catalog version number",
	"Database system identifier",
	"Database cluster state",
	"Latest checkpoint location",
	"Latest checkpoint's REDO location",
	"Latest checkpoint's TimeLineID",
	"Bytes per WAL segment",
	"Database block size",
	"Data page checksum version",
}

// ParseControlDataOutput parses pg_controldata's output in the C locale
// with time stamps in UTC. Unknown lines are ignored (newer versions add
// some); a WARNING line (bad CRC, invalid segment size) or a malformed value
// is an error, and so is output missing a field walferry relies on.
func ParseControlDataOutput(r io.Reader) (*ControlData, error) {
	c := &ControlData{}
	seen := make(map[string]bool, len(controlDataFields))
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "WARNING:") {
			return nil, fmt.Errorf("pg_controldata: %s", line)
		}
		label, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		set, known := controlDataFields[label]
		if !known {
			continue
		}
		if seen[label] {
			return nil, fmt.Errorf("pg_controldata output: %q appears twice", label)
		}
		seen[label] = true
		if err := set(c, strings.TrimSpace(value)); err != nil {
			return nil, fmt.Errorf("pg_controldata output: %q: %w", line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read pg_controldata output: %w", err)
	}
	var missing []string
	for _, l := range requiredControlDataLabels {
		if !seen[l] {
			missing = append(missing, strconv.Quote(l))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("pg_controldata output lacks %s", strings.Join(missing, ", "))
	}
	major, err := MajorFromControlVersion(c.ControlVersion, c.CatalogVersion)
	if err != nil {
		return nil, err
	}
	c.Major = major
	return c, nil
}

func u32Field(f func(*ControlData) *uint32) controlDataSetter {
	return func(c *ControlData, v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		*f(c) = uint32(n)
		return err
	}
}

func i32Field(f func(*ControlData) *int32) controlDataSetter {
	return func(c *ControlData, v string) error {
		n, err := strconv.ParseInt(v, 10, 32)
		*f(c) = int32(n)
		return err
	}
}

func tliField(f func(*ControlData) *TimeLineID) controlDataSetter {
	return func(c *ControlData, v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		*f(c) = TimeLineID(n)
		return err
	}
}

func lsnField(f func(*ControlData) *LSN) controlDataSetter {
	return func(c *ControlData, v string) (err error) {
		*f(c), err = ParseLSN(v)
		return err
	}
}

func timeField(f func(*ControlData) *time.Time) controlDataSetter {
	return func(c *ControlData, v string) error {
		t, err := time.Parse(controlDataTimeLayout, v)
		if err != nil {
			return fmt.Errorf("time stamp is not in the C locale's %%c form: %w", err)
		}
		*f(c) = t.UTC()
		return nil
	}
}

func boolField(yes, no string, f func(*ControlData) *bool) controlDataSetter {
	return func(c *ControlData, v string) error {
		switch v {
		case yes:
			*f(c) = true
		case no:
			*f(c) = false
		default:
			return fmt.Errorf("want %q or %q", yes, no)
		}
		return nil
	}
}

// enumField parses the text names gives a value.
func enumField[T ~int32 | ~uint32](names enumNames, f func(*ControlData) *T) controlDataSetter {
	return func(c *ControlData, v string) error {
		i := slices.Index(names.byValue, v)
		if i < 0 {
			return fmt.Errorf("unknown %s", names.what)
		}
		*f(c) = T(i)
		return nil
	}
}

// parseEpochXID parses "epoch:xid" into a full transaction ID.
func parseEpochXID(v string) (uint64, error) {
	e, x, ok := strings.Cut(v, ":")
	if !ok {
		return 0, errors.New("want epoch:xid")
	}
	epoch, err := strconv.ParseUint(e, 10, 32)
	if err != nil {
		return 0, err
	}
	xid, err := strconv.ParseUint(x, 10, 32)
	if err != nil {
		return 0, err
	}
	return epoch<<32 | xid, nil
}

func parseNonce(c *ControlData, v string) error {
	b, err := hex.DecodeString(v)
	if err != nil || len(b) != len(c.MockAuthNonce) {
		return fmt.Errorf("want %d hex bytes", len(c.MockAuthNonce))
	}
	copy(c.MockAuthNonce[:], b)
	return nil
}
