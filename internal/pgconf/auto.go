package pgconf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
)

// What walferry restore wrote into postgresql.auto.conf before it had
// walferry.conf (every earlier version wrote the same): a block that starts with a legacyStart line (then the
// backup id and time), holds legacyKeys, and ends with legacyEnd.
// ALTER SYSTEM rewrites the file without comments, and so without these
// markers: walferry's lines are then indistinguishable from the user's
// and stay (Overrides reports them).
const (
	legacyStart = "# Added by walferry restore"
	legacyEnd   = "# End of walferry restore settings"
)

// legacyKeys are the settings such a block held.
var legacyKeys = []string{
	"restore_command",
	"recovery_target", "recovery_target_time", "recovery_target_lsn", "recovery_target_xid", "recovery_target_name",
	"recovery_target_inclusive", "recovery_target_action", "recovery_target_timeline",
}

// RemoveLegacy removes from postgresql.auto.conf the blocks earlier
// walferry versions wrote there (marker lines, and the recovery settings
// and comments between them) and returns the settings it removed. Every
// other line stays as it was, ALTER SYSTEM values of the same settings
// included. As earlier versions read it, a block whose end marker was
// edited away ends at its first line that is not one of its settings, a
// comment or blank.
func (f Files) RemoveLegacy() ([]Setting, error) {
	return f.rewriteAuto(func(lines []string) []bool {
		drop := make([]bool, len(lines))
		in := false
		for i, line := range lines {
			trimmed := strings.TrimSpace(line)
			key, _, _ := parseLine(line)
			switch {
			case strings.HasPrefix(trimmed, legacyStart):
				in, drop[i] = true, true
			case in && trimmed == legacyEnd:
				in, drop[i] = false, true
			case in && (trimmed == "" || strings.HasPrefix(trimmed, "#") || hasKey(legacyKeys, key)):
				drop[i] = true
			default:
				in = false
			}
		}
		return drop
	})
}

// ResetAuto removes every setting of keys from postgresql.auto.conf, as
// ALTER SYSTEM RESET would on a running server, and returns what it
// removed.
func (f Files) ResetAuto(keys ...string) ([]Setting, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	return f.rewriteAuto(func(lines []string) []bool {
		drop := make([]bool, len(lines))
		for i, line := range lines {
			if key, _, _ := parseLine(line); key != "" && hasKey(keys, key) {
				drop[i] = true
			}
		}
		return drop
	})
}

// rewriteAuto removes the lines of postgresql.auto.conf that drop marks,
// atomically and keeping its owner and mode, and returns the settings on
// them. Nothing is written when no line goes; a missing file is left
// missing.
func (f Files) rewriteAuto(drop func(lines []string) []bool) ([]Setting, error) {
	p := f.AutoConfPath()
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pgconf: %w", err)
	}
	lines := splitLines(string(data))
	marks := drop(lines)
	var removed []Setting
	var b strings.Builder
	dropped := false
	for i, line := range lines {
		if !marks[i] {
			b.WriteString(line + "\n")
			continue
		}
		dropped = true
		if k, v, ok := parseLine(line); ok {
			removed = append(removed, Setting{k, v})
		}
	}
	if !dropped {
		return nil, nil
	}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("pgconf: %w", err)
	}
	if err := replace(p, []byte(b.String()), fi.Mode().Perm(), fi); err != nil {
		return nil, err
	}
	return removed, nil
}

// Override is a setting PostgreSQL reads after walferry.conf, so its
// value, not walferry's, is the one in effect.
type Override struct {
	Setting
	// File and Line (from 1) locate it: postgresql.auto.conf (ALTER
	// SYSTEM), or postgresql.conf below its include of walferry.conf.
	File string
	Line int
	// Walferry is the value walferry sets; Unset when it sets none (the
	// key is one it owns, e.g. another recovery target).
	Walferry string
	Unset    bool
	auto     bool
}

// Fix says how to make walferry's value the one in effect.
func (o Override) Fix() string {
	if o.auto {
		return "ALTER SYSTEM RESET " + o.Key
	}
	return fmt.Sprintf("remove line %d of %s or move it above the include of %s", o.Line, o.File, FileName)
}

func (o Override) String() string {
	what := "it overrides walferry's " + Quote(o.Walferry)
	if o.Unset {
		what = "PostgreSQL uses it though walferry sets no " + o.Key
	}
	return fmt.Sprintf("%s line %d sets %s, read after %s: %s; fix: %s", o.File, o.Line, o.Setting, FileName, what, o.Fix())
}

// Overrides returns the settings read after walferry.conf that would undo
// the given ones, each where it takes effect (the last of a key): in
// postgresql.auto.conf, and in postgresql.conf below its include of
// walferry.conf. A key of settings counts when its value differs (the
// same value is harmless); a key of owned, which walferry manages without
// setting it now (a recovery target the new one must not mix with),
// counts whatever its value. Call it before writing, after RemoveLegacy.
func (f Files) Overrides(settings []Setting, owned ...string) ([]Override, error) {
	want := map[string]Setting{}
	for _, s := range settings {
		want[strings.ToLower(s.Key)] = s
	}
	found := map[string]Override{}
	scan := func(path string, from int, auto bool) error {
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("pgconf: %w", err)
		}
		for i, line := range splitLines(string(data)) {
			k, v, ok := parseLine(line)
			if !ok || i < from {
				continue
			}
			w, set := want[k]
			switch {
			case set && w.Value == v:
				delete(found, k) // the one in effect is walferry's value
			case set || hasKey(owned, k):
				found[k] = Override{Setting: Setting{k, v}, File: path, Line: i + 1, Walferry: w.Value, Unset: !set, auto: auto}
			}
		}
		return nil
	}
	if data, err := os.ReadFile(f.ConfigPath()); err == nil {
		if at := f.included(string(data)); at >= 0 {
			if err := scan(f.ConfigPath(), at+1, false); err != nil {
				return nil, err
			}
		}
	}
	if err := scan(f.AutoConfPath(), 0, true); err != nil {
		return nil, err
	}
	out := make([]Override, 0, len(found))
	for _, o := range found {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].auto != out[j].auto {
			return out[j].auto
		}
		return out[i].Line < out[j].Line
	})
	return out, nil
}
