package status

import (
	"fmt"
	"io"

	"github.com/walferry/walferry/internal/humanize"
)

// WriteText writes r for people: one aligned line per part (role,
// postgres, lag, archive, backup, slots, sidecar), then "problems:" with
// each problem and its next step, or "no problems". Write errors are
// ignored: the caller's writer is a terminal or a buffer.
func WriteText(w io.Writer, r Report) {
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "%-9s %s\n", label+":", fmt.Sprintf(format, args...))
	}
	line("role", "%s", roleText(r))
	if r.Postgres.Reachable {
		line("postgres", "%s, system %s, at %s", r.Postgres.Version, r.Postgres.SystemID, orUnknown(r.Postgres.CurrentLSN))
	} else {
		line("postgres", "down: %s", orUnknown(oneLine(r.Postgres.Error)))
	}
	if rep := r.Replication; rep != nil {
		behind := "received " + orUnknown(rep.ReceiveLSN)
		if rep.UpstreamLSN != "" {
			behind = "upstream at " + rep.UpstreamLSN
		}
		line("lag", "%s, %s (%s, replayed %s)", humanize.Bytes(rep.LagBytes), secondsText(rep.LagSeconds), behind, orUnknown(rep.ReplayLSN))
	}
	line("archive", "%s", archiveText(r))
	line("backup", "%s", backupText(r))
	if len(r.Slots) == 0 {
		line("slots", "none")
	}
	for i, s := range r.Slots {
		label := "slots:"
		if i > 0 {
			label = ""
		}
		state := "inactive"
		if s.Active {
			state = "active"
		}
		walStatus := ""
		if s.WALStatus != "" {
			walStatus = ", wal_status " + s.WALStatus
		}
		fmt.Fprintf(w, "%-9s %s (%s, %s) holds %s%s\n", label, s.Name, s.Where, state, humanize.Bytes(s.RetainedBytes), walStatus)
	}
	if l := r.Lineage; l != nil {
		who := l.Instance
		if l.Site != "" {
			who = l.Site + "/" + l.Instance
		}
		fenced := ""
		if l.Fenced {
			fenced = "; this server is FENCED"
		}
		line("lineage", "generation %d: %s, %s, timeline %d, %s%s", l.Generation, l.Reason, who, l.Timeline, l.Time.UTC().Format("2006-01-02 15:04:05Z07:00"), fenced)
	}
	switch sc := r.Sidecar; {
	case sc.Reachable:
		line("sidecar", "reachable at %s", orUnknown(sc.Address))
	case sc.Address != "":
		line("sidecar", "unreachable at %s", sc.Address)
	default:
		line("sidecar", "not asked")
	}
	if len(r.Problems) == 0 {
		fmt.Fprintln(w, "no problems")
		return
	}
	fmt.Fprintln(w, "problems:")
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  %-8s  %s\n  %-8s  next: %s\n", p.Severity, p.What, "", p.Next)
	}
}

func roleText(r Report) string {
	if r.Role == RoleDown {
		return "down"
	}
	s := fmt.Sprintf("%s, timeline %d", r.Role, r.Timeline)
	if r.Role != RoleStandby {
		return s
	}
	s += ", " + string(r.Mode)
	if rep := r.Replication; rep != nil {
		if rep.Upstream != "" {
			s += ", upstream " + rep.Upstream
		}
		if rep.Slot != "" {
			s += ", slot " + rep.Slot
		}
		if rep.ReceiverStatus != "" && rep.ReceiverStatus != "streaming" {
			s += ", receiver " + rep.ReceiverStatus
		}
	}
	return s
}

func archiveText(r Report) string {
	a := r.Archive
	if !r.Postgres.Reachable && a.LastArchived == "" && a.LastFailed == "" {
		return "unknown"
	}
	s := "last " + orUnknown(a.LastArchived)
	if a.LastArchivedAt != nil {
		s += " " + ago(a.LastArchivedAt, r.Time)
	}
	s += fmt.Sprintf(", %d failed", a.FailedCount)
	if a.Failing {
		s += ", FAILING on " + orUnknown(a.LastFailed)
	}
	if a.Pending > 0 {
		s += fmt.Sprintf(", %d pending", a.Pending)
	}
	if a.SpoolDepth > 0 {
		s += fmt.Sprintf(", %d in spool", a.SpoolDepth)
	}
	if a.ArchiveMode != "" && a.ArchiveMode != "on" {
		s += ", archive_mode " + a.ArchiveMode
	}
	return s
}

func backupText(r Report) string {
	b := r.Backup
	switch {
	case !b.Checked:
		return "not checked (no repository)"
	case b.Error != "":
		return "unknown: " + oneLine(b.Error)
	case b.LastStoppedAt == nil:
		return "none"
	}
	return fmt.Sprintf("%s (%s) %s; %d in the repository", b.LastID, b.LastType, ago(b.LastStoppedAt, r.Time), b.Count)
}

func secondsText(sec float64) string {
	return durationText(secondsDuration(sec))
}
