package pg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walferry/walferry/internal/failure"
)

// DefaultApplicationName is set as application_name on walferry's
// connections unless the connection string or PGAPPNAME sets one.
const DefaultApplicationName = "walferry"

// ParseConnConfig parses connString like libpq: key=value pairs or a
// postgres:// URL, with the settings it leaves out taken from libpq's
// environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE,
// PGAPPNAME, PGCONNECT_TIMEOUT, ...), ~/.pgpass and the service file. An empty
// string means the environment alone. Errors never contain a password.
func ParseConnConfig(connString string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		// A connection string is configuration: a mistake in it is the
		// user's to fix, whatever PostgreSQL would say.
		return nil, failure.Wrap(failure.Usage, &redactedError{
			msg: "pg: invalid connection settings: " + scrubPasswords(unquoteURLError(parseErrorDetail(err)), connString) +
				" (fix the connection string: key=value pairs or a postgres:// URL)",
			err: err,
		})
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = DefaultApplicationName
	}
	return cfg, nil
}

// Connect opens one connection to PostgreSQL. connString is as for
// ParseConnConfig; "" uses libpq's environment. A failure names the host,
// port, user and database that were tried and the reason, never the
// password.
func Connect(ctx context.Context, connString string) (*pgx.Conn, error) {
	cfg, err := ParseConnConfig(connString)
	if err != nil {
		return nil, err
	}
	return ConnectConfig(ctx, cfg)
}

// ConnectConfig is Connect for an already parsed configuration.
func ConnectConfig(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, ConnectError(&cfg.Config, err)
	}
	return conn, nil
}

// ConnectError describes a failed attempt to connect to cfg for people:
// the target as DescribeConfig names it (never the password) and the
// cause without pgx's prefix that repeats it. err stays reachable for
// errors.Is/As (a *pgconn.ConnectError, the server's *pgconn.PgError).
func ConnectError(cfg *pgconn.Config, err error) error {
	what := "connect to "
	if cfg.RuntimeParams["replication"] != "" {
		what = "connect for replication to "
	}
	return &redactedError{msg: "pg: " + what + DescribeConfig(cfg) + ": " + connectCause(err).Error(), err: err}
}

// QueryError describes a statement that failed on an open connection,
// "pg: <what>: <cause>", classified as PostgreSQL's failure (exit 7)
// whether the server refused it or the connection broke under it (a
// crash, a restart): pgx reports a lost connection with the network's
// error, which alone reads as a store unreachable (exit 3, "check the
// endpoint"). When ctx is done the error keeps the cancellation's kind.
func QueryError(ctx context.Context, what string, err error) error {
	err = fmt.Errorf("pg: %s: %w", what, err)
	if ctx.Err() != nil {
		return err
	}
	return failure.Wrap(failure.Postgres, err)
}

// DescribeConfig names a connection target for messages:
// "host=/run/postgresql port=5432 user=postgres dbname=app" (plus any
// fallback hosts). It never includes the password.
func DescribeConfig(cfg *pgconn.Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "host=%s port=%d", cfg.Host, cfg.Port)
	for _, f := range cfg.Fallbacks {
		if f.Host != cfg.Host || f.Port != cfg.Port {
			fmt.Fprintf(&b, ",%s:%d", f.Host, f.Port)
		}
	}
	fmt.Fprintf(&b, " user=%s dbname=%s", cfg.User, cfg.Database)
	return b.String()
}

// redactedError carries a message written for people (no password, no
// repetition) while keeping the original error reachable for errors.Is/As.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// connectCause strips pgx's "failed to connect to `user=... database=...`:"
// prefix, which repeats what DescribeConfig already said.
func connectCause(err error) error {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		if inner := errors.Unwrap(ce); inner != nil {
			return inner
		}
	}
	return err
}

// parseErrorDetail returns the reason part of a pgconn.ParseConfigError,
// without the (best-effort redacted) connection string it quotes.
func parseErrorDetail(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "`: "); i >= 0 {
		return msg[i+len("`: "):]
	}
	return msg
}

// quotedFragment is a part of the input net/url quotes in its errors.
var quotedFragment = regexp.MustCompile(`"[^"]*"`)

// unquoteURLError drops the fragments of the input that net/url's errors
// quote ("unexpected spaces found in \"...\""): in a URL that does not
// parse, which part is the password cannot be told, so none is shown.
func unquoteURLError(detail string) string {
	if !strings.Contains(detail, "failed to parse as URL") {
		return detail
	}
	return quotedFragment.ReplaceAllString(detail, `"…"`)
}

var (
	kvPassword  = regexp.MustCompile(`password\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s]+)`)
	urlPassword = regexp.MustCompile(`://[^:/@]*:([^@]*)@`)
)

// scrubPasswords replaces in msg every string that could be a password
// given in connString or PGPASSWORD.
func scrubPasswords(msg, connString string) string {
	var secrets []string
	for _, m := range kvPassword.FindAllStringSubmatch(connString, -1) {
		secrets = append(secrets, strings.Trim(m[1], "'"), m[1])
	}
	for _, m := range urlPassword.FindAllStringSubmatch(connString, -1) {
		secrets = append(secrets, m[1])
	}
	if pw := os.Getenv("PGPASSWORD"); pw != "" {
		secrets = append(secrets, pw)
	}
	for _, s := range secrets {
		if len(s) > 0 {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return msg
}

// Info describes the server a connection reached.
type Info struct {
	SystemID      uint64
	Major         int    // 15
	VersionNum    int    // server_version_num, 150004
	Version       string // server_version, "15.4 (Debian 15.4-1)"
	WALSegSize    int64  // bytes
	BlockSize     int
	DataChecksums bool
	// WALLogHints is wal_log_hints: with it (or data checksums) even a
	// hint-bit change stamps the page with a new LSN.
	WALLogHints bool
	InRecovery  bool
	// Timeline is the timeline of the latest checkpoint
	// (pg_control_checkpoint()); on a standby it may trail the timeline
	// being replayed until the next restartpoint.
	Timeline TimeLineID
}

// SegmentSize returns WALSegSize as a validated WALSegmentSize.
func (i Info) SegmentSize() (WALSegmentSize, error) { return NewWALSegmentSize(i.WALSegSize) }

// clusterInfoQuery reads everything Info needs in one round trip.
const clusterInfoQuery = `SELECT
	(SELECT system_identifier FROM pg_control_system()),
	current_setting('server_version_num'),
	current_setting('server_version'),
	current_setting('wal_segment_size'),
	current_setting('block_size'),
	current_setting('data_checksums'),
	pg_is_in_recovery(),
	(SELECT timeline_id FROM pg_control_checkpoint()),
	current_setting('wal_log_hints') = 'on'`

// ClusterInfo asks the server who it is: system identifier, version, WAL
// segment size, block size, data checksums, recovery state and timeline.
func ClusterInfo(ctx context.Context, conn *pgx.Conn) (Info, error) {
	var (
		info                                     Info
		sysID                                    int64
		versionNum, segSize, blockSize, checksum string
		tli                                      int32
	)
	err := conn.QueryRow(ctx, clusterInfoQuery).Scan(&sysID, &versionNum, &info.Version,
		&segSize, &blockSize, &checksum, &info.InRecovery, &tli, &info.WALLogHints)
	if err != nil {
		return Info{}, QueryError(ctx, "query cluster info", err)
	}
	info.SystemID = uint64(sysID)
	info.Timeline = TimeLineID(tli)
	if info.VersionNum, err = strconv.Atoi(versionNum); err != nil || info.VersionNum < 100000 {
		return Info{}, fmt.Errorf("pg: server_version_num %q: not a PostgreSQL 10+ version", versionNum)
	}
	info.Major = info.VersionNum / 10000
	if info.WALSegSize, err = ParseSizeSetting(segSize); err != nil {
		return Info{}, fmt.Errorf("pg: wal_segment_size: %w", err)
	}
	if info.BlockSize, err = strconv.Atoi(blockSize); err != nil {
		return Info{}, fmt.Errorf("pg: block_size %q: %w", blockSize, err)
	}
	switch checksum {
	case "on":
		info.DataChecksums = true
	case "off":
	default:
		return Info{}, fmt.Errorf("pg: data_checksums %q: want on or off", checksum)
	}
	return info, nil
}

// ParseSizeSetting parses a memory-unit setting as SHOW prints it ("16MB",
// "1GB", "8192", "512kB") into bytes. A bare number is bytes.
func ParseSizeSetting(s string) (int64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.TrimSpace(s[len(num):])
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	var mult int64
	switch unit {
	case "", "B":
		mult = 1
	case "kB":
		mult = 1 << 10
	case "MB":
		mult = 1 << 20
	case "GB":
		mult = 1 << 30
	case "TB":
		mult = 1 << 40
	default:
		return 0, fmt.Errorf("invalid size %q: unknown unit %q", s, unit)
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n * mult, nil
}
