package status

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walferry/walferry/internal/pg"
)

// New returns an empty Report taken at now: PostgreSQL not asked yet (Role
// down, Mode none), empty (never null) Slots and Problems.
func New(now time.Time) Report {
	return Report{
		Version:  Version,
		Time:     now.UTC(),
		Role:     RoleDown,
		Mode:     ModeNone,
		Slots:    []Slot{},
		Problems: []Problem{},
	}
}

// instanceQuery reads everything but the slots in one statement. Ages are
// computed by the server (now() - ...) so a skewed local clock does not
// make them wrong. Settings are read from pg_settings, which hides
// primary_conninfo from roles that may not see it instead of failing.
// The .ready count needs pg_ls_archive_statusdir(), granted to pg_monitor;
// without it the count is NULL and estimated from segment names.
const instanceQuery = `SELECT
	pg_is_in_recovery(),
	current_setting('server_version'),
	(SELECT system_identifier FROM pg_control_system())::text,
	(SELECT timeline_id FROM pg_control_checkpoint()),
	(SELECT min_recovery_end_timeline FROM pg_control_recovery()),
	CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
	CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
	(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
	pg_last_wal_receive_lsn()::text,
	pg_last_wal_replay_lsn()::text,
	pg_last_xact_replay_timestamp(),
	extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
	(SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'),
	(SELECT setting FROM pg_settings WHERE name = 'primary_slot_name'),
	(SELECT setting FROM pg_settings WHERE name = 'archive_mode'),
	w.status, w.received_tli, w.sender_host, w.sender_port,
	a.last_archived_wal, a.last_archived_time,
	extract(epoch FROM now() - a.last_archived_time)::float8,
	a.failed_count, a.last_failed_wal, a.last_failed_time,
	CASE WHEN has_function_privilege('pg_ls_archive_statusdir()', 'EXECUTE')
		THEN (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') END,
	CASE WHEN has_function_privilege('pg_ls_archive_statusdir()', 'EXECUTE')
		THEN (SELECT extract(epoch FROM now() - min(modification))::float8
			FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') END
FROM pg_stat_archiver a LEFT JOIN pg_stat_wal_receiver w ON true`

// slotsQuery lists the physical slots and the WAL each holds: from its
// restart_lsn to this server's current position (its replay position on
// a standby, where a cascading slot is measured).
const slotsQuery = `SELECT slot_name, active, restart_lsn::text, wal_status,
	coalesce(pg_wal_lsn_diff(
		CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
		restart_lsn), 0)::bigint
FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name`

// instanceRow is instanceQuery's row; NULLs are nil pointers.
type instanceRow struct {
	inRecovery                 bool
	version, systemID          string
	checkpointTLI, minRecTLI   *int32
	walFile, currentLSN        *string
	segSize                    *int64
	receiveLSN, replayLSN      *string
	replayAt                   *time.Time
	replayAge                  *float64
	conninfo, slotName, arMode *string
	rcvStatus                  *string
	rcvTLI                     *int32
	senderHost                 *string
	senderPort                 *int32
	lastArchived               *string
	lastArchivedAt             *time.Time
	archivedAge                *float64
	failedCount                int64
	lastFailed                 *string
	lastFailedAt               *time.Time
	ready                      *int64
	readyAge                   *float64
}

// FromPostgres asks the server conn is connected to what it is and fills
// r's Role, Timeline, Mode, Postgres, Replication (standby only), Archive
// and Slots (Where "local"), in one round trip. On error r is left as it
// was except for Postgres.Error; the caller decides whether the server is
// down (Role stays down).
//
// Timeline: on a primary, the timeline of the WAL file being written
// (pg_walfile_name(pg_current_wal_lsn())), since pg_control_checkpoint()
// says the old timeline after a promotion until the next checkpoint. On a
// standby, the WAL receiver's received_tli while it streams; otherwise the
// newer of the control file's checkpoint timeline and its minimum recovery
// point's timeline (the latter follows replay as pages are written), which
// may trail a timeline switch just replayed until the next restartpoint.
func FromPostgres(ctx context.Context, conn *pgx.Conn, r *Report) error {
	var row instanceRow
	batch := &pgx.Batch{}
	batch.Queue(instanceQuery).QueryRow(func(s pgx.Row) error {
		return s.Scan(&row.inRecovery, &row.version, &row.systemID, &row.checkpointTLI, &row.minRecTLI,
			&row.walFile, &row.currentLSN, &row.segSize, &row.receiveLSN, &row.replayLSN,
			&row.replayAt, &row.replayAge, &row.conninfo, &row.slotName, &row.arMode,
			&row.rcvStatus, &row.rcvTLI, &row.senderHost, &row.senderPort,
			&row.lastArchived, &row.lastArchivedAt, &row.archivedAge,
			&row.failedCount, &row.lastFailed, &row.lastFailedAt, &row.ready, &row.readyAge)
	})
	var slots []Slot
	batch.Queue(slotsQuery).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var s Slot
			var restart, walStatus *string
			if err := rows.Scan(&s.Name, &s.Active, &restart, &walStatus, &s.RetainedBytes); err != nil {
				return err
			}
			s.Where, s.RestartLSN, s.WALStatus = "local", deref(restart), deref(walStatus)
			slots = append(slots, s)
		}
		return rows.Err()
	})
	if err := conn.SendBatch(ctx, batch).Close(); err != nil {
		err = fmt.Errorf("status: ask PostgreSQL for its state: %w", err)
		r.Postgres.Error = err.Error()
		return err
	}
	row.fill(r)
	r.Slots = append(withoutLocalSlots(r.Slots), slots...)
	return nil
}

// fill copies what the server said into r.
func (row *instanceRow) fill(r *Report) {
	r.Postgres = Postgres{Reachable: true, Version: row.version, SystemID: row.systemID}
	r.Archive.LastArchived = deref(row.lastArchived)
	r.Archive.LastArchivedAt = utc(row.lastArchivedAt)
	r.Archive.AgeSeconds = round(deref(row.archivedAge))
	r.Archive.FailedCount = row.failedCount
	r.Archive.LastFailed = deref(row.lastFailed)
	r.Archive.LastFailedAt = utc(row.lastFailedAt)
	r.Archive.Failing = row.lastFailedAt != nil &&
		(row.lastArchivedAt == nil || row.lastFailedAt.After(*row.lastArchivedAt))
	r.Archive.ArchiveMode = deref(row.arMode)
	if !row.inRecovery {
		r.Role, r.Mode, r.Replication = RolePrimary, ModeNone, nil
		r.Postgres.CurrentLSN = deref(row.currentLSN)
		r.Timeline = timelineOfWALFile(deref(row.walFile))
		r.Archive.Pending = row.pending()
		if r.Archive.Pending > 0 && row.readyAge != nil {
			r.Archive.PendingAgeSeconds = round(max(*row.readyAge, 0))
		}
		return
	}
	r.Role, r.Mode = RoleStandby, ModeArchive
	if deref(row.rcvStatus) == "streaming" {
		r.Mode = ModeStreaming
	}
	r.Postgres.CurrentLSN = deref(row.replayLSN)
	r.Timeline = uint32(max(deref(row.checkpointTLI), deref(row.minRecTLI)))
	if r.Mode == ModeStreaming && row.rcvTLI != nil && *row.rcvTLI > 0 {
		r.Timeline = uint32(*row.rcvTLI)
	}
	rep := &Replication{
		Upstream:       upstreamOf(deref(row.conninfo)),
		Slot:           deref(row.slotName),
		ReceiverStatus: deref(row.rcvStatus),
		ReceiveLSN:     deref(row.receiveLSN),
		ReplayLSN:      deref(row.replayLSN),
		LastReplayAt:   utc(row.replayAt),
	}
	if rep.Upstream == "" && row.senderHost != nil {
		rep.Upstream = *row.senderHost + ":" + strconv.Itoa(int(deref(row.senderPort)))
	}
	rep.LagBytes = lsnDiff(rep.ReceiveLSN, rep.ReplayLSN)
	if rep.LagBytes > 0 && row.replayAge != nil {
		rep.LagSeconds = round(max(*row.replayAge, 0))
	}
	r.Replication = rep
}

// pending is how many completed segments wait for archive_command: the
// .ready files when the role may list them, else estimated from the
// names of the last archived segment and of the segment being written
// (same timeline only; 0 when unknown).
func (row *instanceRow) pending() int {
	if deref(row.arMode) == "off" {
		return 0
	}
	if row.ready != nil {
		return int(*row.ready)
	}
	size, err := pg.NewWALSegmentSize(deref(row.segSize))
	if err != nil || row.walFile == nil || row.lastArchived == nil || len(*row.lastArchived) < 24 {
		return 0
	}
	curTLI, cur, err := pg.ParseSegmentName(*row.walFile, size)
	if err != nil {
		return 0
	}
	tli, last, err := pg.ParseSegmentName((*row.lastArchived)[:24], size)
	if err != nil || tli != curTLI || last >= cur {
		return 0
	}
	// cur is being written; last+1 .. cur-1 are complete and not archived.
	return int(cur - last - 1)
}

// SetUpstreamLSN records the upstream's current WAL position (known to
// the sidecar, which asks the upstream) and measures the standby's lag
// against it: LagBytes from ReplayLSN to it, and LagSeconds from the last
// replayed transaction to r.Time when the standby is behind. A no-op when
// r is not a standby's report.
func (r *Report) SetUpstreamLSN(lsn string) {
	rep := r.Replication
	if rep == nil {
		return
	}
	rep.UpstreamLSN = lsn
	rep.LagBytes = max(lsnDiff(lsn, rep.ReplayLSN), 0)
	rep.LagSeconds = 0
	if rep.LagBytes > 0 && rep.LastReplayAt != nil {
		rep.LagSeconds = round(max(r.Time.Sub(*rep.LastReplayAt).Seconds(), 0))
	}
}

// upstreamOf returns "host:port" from a primary_conninfo (key=value pairs
// or a postgres:// URL), "" when there is none; pg.ConnHostPort names it.
func upstreamOf(conninfo string) string {
	if strings.TrimSpace(conninfo) == "" {
		return ""
	}
	return pg.ConnHostPort(conninfo)
}

// timelineOfWALFile reads the timeline from a 24-character WAL file name.
func timelineOfWALFile(name string) uint32 {
	if len(name) < 8 {
		return 0
	}
	tli, err := strconv.ParseUint(name[:8], 16, 32)
	if err != nil {
		return 0
	}
	return uint32(tli)
}

// lsnDiff is a - b in bytes, 0 when either is not a valid LSN.
func lsnDiff(a, b string) int64 {
	la, err1 := pg.ParseLSN(a)
	lb, err2 := pg.ParseLSN(b)
	if err1 != nil || err2 != nil || !la.IsValid() || !lb.IsValid() {
		return 0
	}
	return la.Diff(lb)
}

func withoutLocalSlots(in []Slot) []Slot {
	out := []Slot{}
	for _, s := range in {
		if s.Where != "local" {
			out = append(out, s)
		}
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// round keeps ages to the millisecond: enough, and stable JSON.
func round(sec float64) float64 {
	return float64(int64(sec*1000)) / 1000
}
