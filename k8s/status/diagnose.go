package status

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/humanize"
)

// Limits are the thresholds Diagnose holds a report to.
type Limits struct {
	// MaxArchiveAge is how long a completed WAL segment may wait for
	// archive_command before archiving counts as stalled. Only segments
	// waiting count: an idle primary that has nothing to archive is fine
	// however old its last archived segment is.
	MaxArchiveAge time.Duration
	// MaxBackupAge is how old the newest backup may be.
	MaxBackupAge time.Duration
	// MaxSlotRetained is how many bytes of WAL one slot may hold back.
	MaxSlotRetained int64
	// MaxLag is how far (in time) a standby may be behind.
	MaxLag time.Duration
}

// DefaultLimits are the limits used when none are configured: archiving
// stalled for 15 minutes, no backup for 8 days (a weekly full with a day's
// slack), a slot holding 10 GiB, a standby 5 minutes behind.
func DefaultLimits() Limits {
	return Limits{
		MaxArchiveAge:   15 * time.Minute,
		MaxBackupAge:    8 * 24 * time.Hour,
		MaxSlotRetained: 10 << 30,
		MaxLag:          5 * time.Minute,
	}
}

// withDefaults fills zero limits from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxArchiveAge <= 0 {
		l.MaxArchiveAge = d.MaxArchiveAge
	}
	if l.MaxBackupAge <= 0 {
		l.MaxBackupAge = d.MaxBackupAge
	}
	if l.MaxSlotRetained <= 0 {
		l.MaxSlotRetained = d.MaxSlotRetained
	}
	if l.MaxLag <= 0 {
		l.MaxLag = d.MaxLag
	}
	return l
}

// Diagnose replaces r.Problems with what is wrong in r, most severe first
// (the order of the rules below within a severity). Zero limits take
// their DefaultLimits value. docs/status.md lists the rules.
func Diagnose(r *Report, l Limits) {
	l = l.withDefaults()
	var ps []Problem
	add := func(sev Severity, next, format string, args ...any) {
		ps = append(ps, Problem{Severity: sev, What: fmt.Sprintf(format, args...), Next: next})
	}

	if r.Role == RoleDown {
		cause := r.Postgres.Error
		if cause == "" {
			cause = "not asked"
		}
		next := "start PostgreSQL or read its log; check --pg-conn / PGHOST, PGPORT"
		if r.DataDir != "" {
			next = fmt.Sprintf("start PostgreSQL (pg_ctl start -D %s) or read its log (%s/log); check --pg-conn / PGHOST, PGPORT", r.DataDir, r.DataDir)
		}
		add(Critical, next, "PostgreSQL does not answer: %s", oneLine(cause))
	}

	if l := r.Lineage; l != nil && l.Fenced {
		who := l.Instance
		if l.Site != "" {
			who = "site " + l.Site + ", " + l.Instance
		}
		add(Critical, "walferry rejoin (this server becomes a standby of the new primary, without a re-clone)",
			"fenced by generation %d (%s, %s, %s): this server is not the primary any more and must not take writes",
			l.Generation, l.Reason, who, l.Time.UTC().Format("2006-01-02 15:04:05Z07:00"))
	}

	a := r.Archive
	switch {
	case a.Failing:
		what := fmt.Sprintf("archiving fails: %s failed %s (%d failures so far)", orUnknown(a.LastFailed), ago(a.LastFailedAt, r.Time), a.FailedCount)
		if a.LastError != "" {
			what += ": " + oneLine(a.LastError)
		}
		next := "walferry repo check; then read PostgreSQL's log for archive_command's error"
		if a.LastError != "" {
			next = "walferry repo check; then walferry archive-push " + pgWALPath(a.LastFailed) + " by hand to see the error"
		}
		add(Critical, next, "%s", what)
	case a.Pending > 0 && archiveStalled(a, l.MaxArchiveAge):
		add(Critical, "read PostgreSQL's log for archive_command's output; check archive_command is walferry archive-push %p; walferry repo check",
			"archiving is stalled: %d completed WAL segment(s) wait; last archived %s %s", a.Pending, orUnknown(a.LastArchived), ago(a.LastArchivedAt, r.Time))
	}
	if a.MissingSegment != "" {
		add(Critical, fmt.Sprintf("walferry archive-get %s /tmp/%s to see the error; if the source never archived it, re-bootstrap this standby from a newer backup (walferry backup-push on the source)", a.MissingSegment, a.MissingSegment),
			"recovery is stuck: it needs WAL segment %s, which no repository holds", a.MissingSegment)
	}
	for _, s := range r.Slots {
		if s.WALStatus == "lost" {
			add(Critical, fmt.Sprintf("re-bootstrap the standby that used it (walferry bootstrap); then SELECT pg_drop_replication_slot('%s') %s and create it again", s.Name, slotPlace(s)),
				"replication slot %s (%s) lost WAL its standby still needed (wal_status lost): that standby cannot catch up by streaming", s.Name, s.Where)
		}
	}
	if r.Role == RolePrimary && a.ArchiveMode == "off" {
		add(Warning, "set archive_mode = on and archive_command = 'walferry archive-push %p', then restart PostgreSQL",
			"archive_mode is off: WAL is not archived, so no point-in-time recovery and no standby from the repository")
	}
	for _, s := range r.Slots {
		if s.WALStatus != "lost" && s.RetainedBytes > l.MaxSlotRetained {
			state := "inactive"
			if s.Active {
				state = "active"
			}
			add(Warning, fmt.Sprintf("SELECT pg_drop_replication_slot('%s') %s if that standby is gone, or set max_slot_wal_keep_size", s.Name, slotPlace(s)),
				"replication slot %s (%s, %s) holds %s of WAL (limit %s)", s.Name, s.Where, state, humanize.Bytes(s.RetainedBytes), humanize.Bytes(l.MaxSlotRetained))
		}
	}
	if rep := r.Replication; rep != nil && r.Role == RoleStandby && rep.LagSeconds > l.MaxLag.Seconds() {
		next := "SELECT * FROM pg_stat_wal_receiver; read PostgreSQL's log for replay conflicts or a slow disk"
		if r.Mode != ModeStreaming && rep.Upstream != "" {
			next = fmt.Sprintf("check the upstream %s answers (pg_isready -h HOST -p PORT) and read PostgreSQL's log for the WAL receiver's error", rep.Upstream)
		}
		add(Warning, next, "standby is %s behind (%s of WAL to replay, mode %s)",
			secondsText(rep.LagSeconds), humanize.Bytes(rep.LagBytes), r.Mode)
	}
	if b := r.Backup; b.Checked {
		switch {
		case b.Error != "":
			add(Warning, "walferry repo check", "cannot read the repository's backups: %s", oneLine(b.Error))
		case b.Count == 0 || b.LastStoppedAt == nil:
			add(Warning, "walferry backup-push (on the primary, or schedule it in the sidecar)", "no backup in the repository")
		case r.Time.Sub(*b.LastStoppedAt) > l.MaxBackupAge:
			add(Warning, "walferry backup-push (on the primary); check the sidecar's backup schedule and its log",
				"last backup %s (%s) finished %s, more than %s ago", b.LastID, b.LastType, ago(b.LastStoppedAt, r.Time), durationText(l.MaxBackupAge))
		}
	}
	if sc := r.Sidecar; !sc.Reachable && sc.Address != "" {
		what := "the sidecar at " + sc.Address + " does not answer"
		if sc.Error != "" {
			what += ": " + oneLine(sc.Error)
		}
		add(Warning, "start walferry sidecar / read its log (kubectl logs POD -c walferry)", "%s", what)
	}

	sort.SliceStable(ps, func(i, j int) bool { return rank(ps[i].Severity) < rank(ps[j].Severity) })
	if ps == nil {
		ps = []Problem{}
	}
	r.Problems = ps
}

// archiveStalled: the oldest waiting segment waited longer than max; when
// its age is unknown, the last success is older than max.
func archiveStalled(a Archive, limit time.Duration) bool {
	if a.PendingAgeSeconds > 0 {
		return a.PendingAgeSeconds > limit.Seconds()
	}
	return a.LastArchivedAt == nil || a.AgeSeconds > limit.Seconds()
}

// Worst returns the most severe problem's severity, "" when none.
func Worst(r Report) Severity {
	var worst Severity
	for _, p := range r.Problems {
		if worst == "" || rank(p.Severity) < rank(worst) {
			worst = p.Severity
		}
	}
	return worst
}

// AtLeast reports whether s is as severe as min or more.
func (s Severity) AtLeast(min Severity) bool {
	return s != "" && rank(s) <= rank(min)
}

// ParseSeverity parses "critical" or "warning".
func ParseSeverity(s string) (Severity, error) {
	switch Severity(s) {
	case Critical, Warning:
		return Severity(s), nil
	}
	return "", fmt.Errorf("severity %q: want critical or warning", s)
}

func rank(s Severity) int {
	switch s {
	case Critical:
		return 0
	case Warning:
		return 1
	}
	return 2
}

func slotPlace(s Slot) string {
	if s.Where == "upstream" {
		return "on the upstream"
	}
	return "on this server"
}

// pgWALPath is where PostgreSQL keeps a segment, for archive-push's %p.
func pgWALPath(seg string) string {
	if seg == "" {
		return "pg_wal/SEGMENT"
	}
	return "pg_wal/" + seg
}

func orUnknown(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// ago says when t was relative to now: "12m3s ago", or "never".
func ago(t *time.Time, now time.Time) string {
	if t == nil {
		return "never"
	}
	return durationText(now.Sub(*t)) + " ago"
}

// durationText is a duration for people: seconds precision, days when
// long ("9d2h", "15m0s").
func durationText(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	if d >= 48*time.Hour {
		days := d / (24 * time.Hour)
		return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
	}
	return d.String()
}

// oneLine keeps the first line of a message: a Problem is one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func secondsDuration(sec float64) time.Duration {
	return time.Duration(sec * float64(time.Second))
}
