package restore

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pgconf"
)

// Target is where recovery stops. At most one of Time, LSN, XID, Name and
// Immediate may be set; the values are passed to PostgreSQL as given,
// once validated.
type Target struct {
	// Time is recovery_target_time: a PostgreSQL timestamp such as
	// "2026-11-22 10:15:00+00", or RFC 3339. Without a zone PostgreSQL
	// reads it in the server's timezone.
	Time string
	// LSN is recovery_target_lsn, e.g. "0/3000028".
	LSN string
	// XID is recovery_target_xid, a transaction id.
	XID string
	// Name is recovery_target_name, a restore point made with
	// pg_create_restore_point().
	Name string
	// Immediate stops as soon as the backup is consistent
	// (recovery_target = 'immediate').
	Immediate bool
	// Action is recovery_target_action once the target is reached:
	// promote, pause or shutdown (PostgreSQL's default is pause).
	Action string
	// Exclusive stops just before the target (recovery_target_inclusive = off).
	Exclusive bool
	// Timeline is recovery_target_timeline: latest (PostgreSQL's default),
	// current, or a timeline number.
	Timeline string
}

// recoveryKeys are the settings a restore owns: walferry.conf holds the
// ones it sets, and a value of any of them read after walferry.conf
// (ALTER SYSTEM) would change where WAL comes from or where recovery
// stops, so the restore reports it, or refuses (restore_command).
var recoveryKeys = []string{
	"restore_command",
	"recovery_target", "recovery_target_time", "recovery_target_lsn", "recovery_target_xid", "recovery_target_name",
	"recovery_target_inclusive", "recovery_target_action", "recovery_target_timeline",
}

// maxRestorePointName is PostgreSQL's limit on a restore point's name
// (MAXFNAMELEN - 1).
const maxRestorePointName = 63

// settings validates t and returns its recovery_target* settings. Errors
// match ErrInvalid and name the flag.
func (t Target) settings() ([]pgconf.Setting, error) {
	var out []pgconf.Setting
	var given []string
	if t.Time != "" {
		given = append(given, "--target-time")
		_, zoned, err := parseTargetTime(t.Time)
		if err != nil {
			return nil, invalidf("--target-time %q: %v", t.Time, err)
		}
		if !zoned {
			// PostgreSQL would read it in the restored server's timezone
			// setting, unknown here and easily not what the user meant.
			return nil, invalidf("--target-time %q has no time zone: PostgreSQL would read it in the restored server's timezone setting; "+
				"add one, e.g. '%s+00', '%s UTC' or '%s Europe/Paris'", t.Time, strings.TrimSpace(t.Time), strings.TrimSpace(t.Time), strings.TrimSpace(t.Time))
		}
		out = append(out, pgconf.Setting{Key: "recovery_target_time", Value: t.Time})
	}
	if t.LSN != "" {
		given = append(given, "--target-lsn")
		if _, err := pg.ParseLSN(t.LSN); err != nil {
			return nil, invalidf("--target-lsn %q is not an LSN: want two hex numbers separated by '/', e.g. 16/B374D848", t.LSN)
		}
		out = append(out, pgconf.Setting{Key: "recovery_target_lsn", Value: t.LSN})
	}
	if t.XID != "" {
		given = append(given, "--target-xid")
		if _, err := strconv.ParseUint(t.XID, 10, 64); err != nil {
			return nil, invalidf("--target-xid %q is not a transaction id: want a decimal number, e.g. 7531 (SELECT pg_current_xact_id())", t.XID)
		}
		out = append(out, pgconf.Setting{Key: "recovery_target_xid", Value: t.XID})
	}
	if t.Name != "" {
		given = append(given, "--target-name")
		if len(t.Name) > maxRestorePointName {
			return nil, invalidf("--target-name is %d bytes long; restore point names are at most %d", len(t.Name), maxRestorePointName)
		}
		out = append(out, pgconf.Setting{Key: "recovery_target_name", Value: t.Name})
	}
	if t.Immediate {
		given = append(given, "--target-immediate")
		out = append(out, pgconf.Setting{Key: "recovery_target", Value: "immediate"})
	}
	if len(given) > 1 {
		return nil, invalidf("%s: give at most one recovery target", strings.Join(given, " and "))
	}
	if t.Exclusive {
		if len(given) == 0 || t.Immediate || t.Name != "" {
			return nil, invalidf("--target-exclusive goes with --target-time, --target-lsn or --target-xid (it stops just before that target)")
		}
		out = append(out, pgconf.Setting{Key: "recovery_target_inclusive", Value: "off"})
	}
	if t.Action != "" {
		switch t.Action {
		case "promote", "pause", "shutdown":
		default:
			return nil, invalidf("--target-action %q: want promote, pause or shutdown", t.Action)
		}
		if len(given) == 0 {
			return nil, invalidf("--target-action %s needs a recovery target (--target-time, --target-lsn, --target-xid, --target-name or --target-immediate)", t.Action)
		}
		out = append(out, pgconf.Setting{Key: "recovery_target_action", Value: t.Action})
	}
	if t.Timeline != "" {
		switch tl := strings.ToLower(t.Timeline); {
		case tl == "latest" || tl == "current":
		default:
			if n, err := strconv.ParseUint(t.Timeline, 10, 32); err != nil || n == 0 {
				return nil, invalidf("--target-timeline %q: want latest, current or a timeline number (1, 2, ...)", t.Timeline)
			}
		}
		out = append(out, pgconf.Setting{Key: "recovery_target_timeline", Value: t.Timeline})
	}
	return out, nil
}

// recoverySettings returns what walferry.conf holds after a restore:
// restore_command, then the target's settings. After Validate.
func (o *Options) recoverySettings() []pgconf.Setting {
	target, _ := o.Target.settings() // validated
	return append([]pgconf.Setting{{Key: "restore_command", Value: o.RestoreCommand.commandLine()}}, target...)
}

// comparable reports whether the target can be compared with a backup's
// end (a time or an LSN).
func (t Target) comparable() bool { return t.Time != "" || t.LSN != "" }

// reachableFrom returns nil when recovery from m can stop at t:
// PostgreSQL refuses a target before the end of the backup.
func (t Target) reachableFrom(m *backup.Manifest) error {
	if t.LSN != "" {
		lsn, err := pg.ParseLSN(t.LSN)
		if err == nil && lsn < m.StopLSN {
			return invalidf("--target-lsn %s is before the end of backup %s (LSN %s): recovery cannot stop before the backup is consistent; choose an older backup (with LATEST walferry picks one)",
				t.LSN, m.ID, m.StopLSN)
		}
	}
	if t.Time != "" {
		at, _, err := parseTargetTime(t.Time)
		if err == nil && !m.StopTime.IsZero() && at.Before(m.StopTime) {
			return invalidf("--target-time %s is before the end of backup %s (%s): recovery cannot stop before the backup is consistent; choose an older backup (with LATEST walferry picks one)",
				t.Time, m.ID, m.StopTime.UTC().Format("2006-01-02 15:04:05Z07:00"))
		}
	}
	return nil
}

// describe names the target for messages and Result.RecoveryTarget.
func (t Target) describe() string {
	s, err := t.settings()
	if err != nil {
		return ""
	}
	var parts []string
	for _, st := range s {
		if st.Key == "recovery_target_timeline" {
			continue
		}
		parts = append(parts, st.String())
	}
	return strings.Join(parts, ", ")
}

// Time layouts accepted for a recovery target: PostgreSQL's ISO forms
// ("2026-11-22 10:15:00", optional fraction, zone as +00, +05:30, +0530 or
// Z) and RFC 3339. Go accepts a fraction after the seconds without it
// being in the layout.
var targetTimeLayouts = []string{
	"2006-01-02 15:04:05Z07:00", "2006-01-02 15:04:05Z0700", "2006-01-02 15:04:05Z07", "2006-01-02 15:04:05",
	"2006-01-02T15:04:05Z07:00", "2006-01-02T15:04:05Z0700", "2006-01-02T15:04:05Z07", "2006-01-02T15:04:05",
	"2006-01-02 15:04Z07:00", "2006-01-02 15:04Z07", "2006-01-02 15:04",
	"2006-01-02",
}

var zoneName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_+/-]*$`)

// parseTargetTime parses a recovery target time and reports whether it
// has a zone; a time without one is read in the local zone (PostgreSQL
// reads it in the server's).
func parseTargetTime(s string) (time.Time, bool, error) {
	s = strings.TrimSpace(s)
	loc := time.Local
	hasZone := false
	// A trailing zone name: "2026-11-22 10:15:00 UTC", "... Europe/Paris".
	if i := strings.LastIndexByte(s, ' '); i > 0 && zoneName.MatchString(s[i+1:]) {
		name := s[i+1:]
		switch strings.ToUpper(name) {
		case "UTC", "GMT", "Z":
			loc = time.UTC
		default:
			l, err := time.LoadLocation(name)
			if err != nil {
				return time.Time{}, false, fmt.Errorf("unknown time zone %q: use an offset such as +00 or a zone such as UTC or Europe/Paris", name)
			}
			loc = l
		}
		s, hasZone = strings.TrimSpace(s[:i]), true
	}
	for _, layout := range targetTimeLayouts {
		t, err := time.ParseInLocation(layout, s, loc)
		if err == nil {
			return t, hasZone || strings.Contains(layout, "Z07"), nil
		}
	}
	return time.Time{}, false, fmt.Errorf("not a timestamp: want e.g. '2026-11-22 10:15:00+00' or 2026-11-22T10:15:00Z")
}

// shellSafe matches arguments /bin/sh reads literally without quotes.
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// shellQuote quotes s for /bin/sh, which runs restore_command.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Line is the restore_command value rc stands for, for callers that write
// it themselves (k8s/bootstrap after a copy); Executable must be set.
func (rc RestoreCommand) Line() string { return rc.commandLine() }

// restoreCommandLine is the shell command PostgreSQL runs to fetch WAL.
// The flags come before %f %p: walferry parses none after its arguments.
func (rc RestoreCommand) commandLine() string {
	args := []string{shellQuote(rc.Executable), "archive-get"}
	for _, u := range rc.Repos {
		args = append(args, "--repo", shellQuote(u))
	}
	if rc.Config != "" {
		args = append(args, "--config", shellQuote(rc.Config))
	}
	if rc.PassphraseFile != "" {
		args = append(args, "--encryption-passphrase-file", shellQuote(rc.PassphraseFile))
	}
	if rc.Partial {
		args = append(args, "--partial")
	}
	if rc.Socket != "" {
		args = append(args, "--socket", shellQuote(rc.Socket))
	}
	return strings.Join(append(args, "%f", "%p"), " ")
}

// tablespaceMapLine is one entry of a tablespace_map file.
type tablespaceMapLine struct {
	oid  string
	path string // unescaped
}

// parseTablespaceMapFile reads a tablespace_map file as PostgreSQL does:
// one "<oid> <path>" per line, a backslash making the next character
// literal (PostgreSQL 13 and later escape backslash, newline and carriage
// return in paths), an unescaped newline or carriage return ending a line.
func parseTablespaceMapFile(s string) ([]tablespaceMapLine, error) {
	var out []tablespaceMapLine
	var cur strings.Builder
	flush := func() error {
		line := cur.String()
		cur.Reset()
		if line == "" {
			return nil
		}
		oid, p, ok := strings.Cut(line, " ")
		if !ok {
			return fmt.Errorf("tablespace_map line %q has no path", line)
		}
		if _, err := strconv.ParseUint(oid, 10, 32); err != nil {
			return fmt.Errorf("tablespace_map line starts with %q, not a tablespace OID", oid)
		}
		out = append(out, tablespaceMapLine{oid: oid, path: p})
		return nil
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == '\n' || c == '\r':
			if err := flush(); err != nil {
				return nil, err
			}
		default:
			cur.WriteByte(c)
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// formatTablespaceMap writes entries in tablespace_map's format.
func formatTablespaceMap(lines []tablespaceMapLine) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.oid + " ")
		for i := 0; i < len(l.path); i++ {
			if c := l.path[i]; c == '\\' || c == '\n' || c == '\r' {
				b.WriteByte('\\')
			}
			b.WriteByte(l.path[i])
		}
		b.WriteByte('\n')
	}
	return b.String()
}
