// Package status is walferry's one status model: what `walferry status`
// prints and the sidecar serves at /status, builds its metrics and its
// readiness from. A Report says what an instance is (role, timeline, mode),
// how far behind it is, how archiving and backups go, the replication
// slots that hold WAL for it or for others, whether its sidecar answers,
// and, when something is wrong, one line per problem naming it and the
// next command to run.
//
// The JSON form is stable (Version): fields are added, never renamed or
// removed, within one version. docs/status.md documents it.
package status

import "time"

// Version is the Report JSON schema's version.
const Version = 1

// Role is what an instance is.
type Role string

const (
	// RolePrimary accepts writes (pg_is_in_recovery() is false).
	RolePrimary Role = "primary"
	// RoleStandby is in recovery: replaying WAL from the repository or
	// from a streaming upstream.
	RoleStandby Role = "standby"
	// RoleDown: PostgreSQL does not answer.
	RoleDown Role = "down"
)

// Mode is where a standby's WAL comes from right now.
type Mode string

const (
	// ModeStreaming: the WAL receiver streams from the upstream.
	ModeStreaming Mode = "streaming"
	// ModeArchive: recovery replays WAL fetched by restore_command from
	// the repository (no upstream, or the upstream cannot be reached).
	ModeArchive Mode = "archive"
	// ModeNone: not a standby (a primary, or PostgreSQL is down).
	ModeNone Mode = "none"
)

// Report is one instance's status at Time.
type Report struct {
	Version int       `json:"version"`
	Time    time.Time `json:"time"`
	// DataDir is the instance's data directory, when known.
	DataDir  string `json:"data_dir,omitempty"`
	Role     Role   `json:"role"`
	Timeline uint32 `json:"timeline,omitempty"`
	Mode     Mode   `json:"mode"`

	Postgres    Postgres     `json:"postgres"`
	Replication *Replication `json:"replication,omitempty"`
	Archive     Archive      `json:"archive"`
	Backup      Backup       `json:"backup"`
	Slots       []Slot       `json:"slots"`
	// Lineage is the repository's lineage record (who the primary is),
	// when the repository has one and was read.
	Lineage *Lineage `json:"lineage,omitempty"`
	Sidecar Sidecar  `json:"sidecar"`
	// Problems lists what is wrong, most severe first; empty (never
	// null) when all is well.
	Problems []Problem `json:"problems"`
}

// Postgres is what the instance's server says of itself.
type Postgres struct {
	Reachable bool `json:"reachable"`
	// Error is why it could not be asked, when not Reachable.
	Error   string `json:"error,omitempty"`
	Version string `json:"version,omitempty"`
	// SystemID is the cluster's system identifier, in decimal (a JSON
	// number would lose digits in JavaScript).
	SystemID string `json:"system_id,omitempty"`
	// CurrentLSN is a primary's pg_current_wal_lsn(); on a standby, its
	// last replayed LSN.
	CurrentLSN string `json:"current_lsn,omitempty"`
}

// Replication is a standby's position and its upstream.
type Replication struct {
	// Upstream is where primary_conninfo points ("host:port"), empty when
	// the standby replays only the repository.
	Upstream string `json:"upstream,omitempty"`
	// Slot is primary_slot_name, empty when none.
	Slot string `json:"slot,omitempty"`
	// ReceiverStatus is pg_stat_wal_receiver's status (streaming,
	// catchup, waiting, ...), empty when no WAL receiver runs.
	ReceiverStatus string `json:"receiver_status,omitempty"`
	// ReceiveLSN is the last WAL position received and flushed by the
	// WAL receiver; ReplayLSN the last replayed.
	ReceiveLSN string `json:"receive_lsn,omitempty"`
	ReplayLSN  string `json:"replay_lsn,omitempty"`
	// UpstreamLSN is the upstream's current WAL position, when the
	// sidecar could ask it.
	UpstreamLSN string `json:"upstream_lsn,omitempty"`
	// LagBytes is how much WAL the standby has yet to replay: behind
	// UpstreamLSN when known, else behind ReceiveLSN.
	LagBytes int64 `json:"lag_bytes"`
	// LagSeconds is how old the last replayed transaction is, 0 when the
	// standby has replayed everything it received and the upstream has
	// nothing newer.
	LagSeconds float64 `json:"lag_seconds"`
	// LastReplayAt is the commit time of the last replayed transaction.
	LastReplayAt *time.Time `json:"last_replay_at,omitempty"`
}

// Archive is how WAL archiving goes (pg_stat_archiver, and the sidecar's
// daemon when one serves the hooks).
type Archive struct {
	LastArchived   string     `json:"last_archived,omitempty"`
	LastArchivedAt *time.Time `json:"last_archived_at,omitempty"`
	// AgeSeconds is how long ago LastArchivedAt was.
	AgeSeconds   float64    `json:"age_seconds,omitempty"`
	FailedCount  int64      `json:"failed_count"`
	LastFailed   string     `json:"last_failed,omitempty"`
	LastFailedAt *time.Time `json:"last_failed_at,omitempty"`
	// Failing is true when the last attempt failed (the last failure is
	// newer than the last success).
	Failing bool `json:"failing"`
	// LastError is the sidecar daemon's last archiving error, when known.
	LastError string `json:"last_error,omitempty"`
	// SpoolDepth is how many prefetched segments wait in the spool.
	SpoolDepth int `json:"spool_depth"`
	// MissingSegment is the segment a standby waits for and that no
	// repository holds, when recovery is stuck on one.
	MissingSegment string `json:"missing_segment,omitempty"`
	// ArchiveMode is the archive_mode setting (off, on, always), when
	// PostgreSQL was asked.
	ArchiveMode string `json:"archive_mode,omitempty"`
	// Pending is how many completed WAL segments wait for archive_command
	// on a primary: its .ready files, or, when the role may not list
	// them (pg_monitor may), an estimate from the segment names.
	Pending int `json:"pending"`
	// PendingAgeSeconds is how long the oldest of them has waited, when
	// the .ready files could be listed.
	PendingAgeSeconds float64 `json:"pending_age_seconds,omitempty"`
}

// Backup is the newest backup in the repository.
type Backup struct {
	LastID        string     `json:"last_id,omitempty"`
	LastType      string     `json:"last_type,omitempty"`
	LastStoppedAt *time.Time `json:"last_stopped_at,omitempty"`
	AgeSeconds    float64    `json:"age_seconds,omitempty"`
	Count         int        `json:"count"`
	// Checked is true when a repository was asked (successfully or not);
	// the backup rules apply only then.
	Checked bool `json:"checked"`
	// Error is why the repository could not be read, when it could not.
	Error string `json:"error,omitempty"`
}

// Slot is a replication slot that keeps WAL: on this instance (Where
// "local"), or the one a standby leader uses on its source (Where
// "upstream").
type Slot struct {
	Name   string `json:"name"`
	Where  string `json:"where"`
	Active bool   `json:"active"`
	// RestartLSN is the oldest WAL the slot keeps.
	RestartLSN string `json:"restart_lsn,omitempty"`
	// RetainedBytes is how much WAL the slot holds back.
	RetainedBytes int64 `json:"retained_bytes"`
	// WALStatus is pg_replication_slots.wal_status (reserved, extended,
	// unreserved, lost), when known.
	WALStatus string `json:"wal_status,omitempty"`
}

// Lineage is the newest generation of the repository's lineage record,
// and what it means for this instance.
type Lineage struct {
	Generation uint64    `json:"generation"`
	Reason     string    `json:"reason"`
	Instance   string    `json:"instance"`
	Site       string    `json:"site,omitempty"`
	Timeline   uint32    `json:"timeline"`
	Time       time.Time `json:"time"`
	// FencedAt ends the record's timeline (after a demote), when set.
	FencedAt string `json:"fenced_at_lsn,omitempty"`
	// Fenced says this instance is a primary the record does not allow
	// (an old primary after a switchover or a failover): the sidecar stops
	// it, and its hooks refuse to write.
	Fenced bool `json:"fenced"`
	// Why is the record's reason for the fence, when Fenced.
	Why string `json:"why,omitempty"`
}

// Sidecar says whether the instance's sidecar answered.
type Sidecar struct {
	Reachable bool   `json:"reachable"`
	Address   string `json:"address,omitempty"`
	Error     string `json:"error,omitempty"`
	// Since is when the sidecar started, when it answered.
	Since *time.Time `json:"since,omitempty"`
}

// Severity orders problems.
type Severity string

const (
	// Critical: data is at risk or the instance does not do its job
	// (archiving fails, recovery is stuck).
	Critical Severity = "critical"
	// Warning: it works, but something needs a look (a slot holds much
	// WAL, the last backup is old, the sidecar does not answer).
	Warning Severity = "warning"
)

// Problem is one thing that is wrong: What it is, in one line, and Next,
// the command or action that fixes it or finds out more.
type Problem struct {
	Severity Severity `json:"severity"`
	What     string   `json:"what"`
	Next     string   `json:"next"`
}
