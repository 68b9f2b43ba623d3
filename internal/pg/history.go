package pg

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// HistoryEntry is one line of a timeline history file: timeline TLI ended,
// and its child began, at SwitchLSN.
type HistoryEntry struct {
	TLI       TimeLineID
	SwitchLSN LSN
	// Reason is PostgreSQL's free-text explanation, e.g.
	// "no recovery target specified"; it may be empty.
	Reason string
}

// maxHistoryLine bounds one line of a history file. PostgreSQL writes short
// lines (a restore point name is at most 63 bytes); anything longer is not a
// history file.
const maxHistoryLine = 64 << 10

// ParseHistory parses a timeline history file (NNNNNNNN.history) as
// PostgreSQL writes it: one "tli<TAB>switch LSN<TAB>reason" line per ancestor
// timeline, oldest first. Like PostgreSQL's readTimeLineHistory it skips blank
// lines and lines starting with '#' (after leading white space), accepts any
// white space between the fields, ignores what follows the LSN apart from
// keeping it as the reason, and requires strictly increasing timeline IDs.
// The history of timeline 1 is empty.
func ParseHistory(r io.Reader) ([]HistoryEntry, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxHistoryLine)
	var out []HistoryEntry
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimRight(sc.Text(), "\r")
		trimmed := strings.TrimLeft(line, " \t\v\f\r")
		if trimmed == "" || trimmed[0] == '#' {
			continue
		}
		e, err := parseHistoryLine(trimmed)
		if err != nil {
			return nil, fmt.Errorf("pg: timeline history line %d %q: %w", lineNo, line, err)
		}
		if n := len(out); n > 0 && e.TLI <= out[n-1].TLI {
			return nil, fmt.Errorf("pg: timeline history line %d %q: timeline IDs must be in increasing sequence", lineNo, line)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("pg: timeline history: line longer than %d bytes: not a history file", maxHistoryLine)
		}
		return nil, fmt.Errorf("pg: read timeline history: %w", err)
	}
	return out, nil
}

func parseHistoryLine(s string) (HistoryEntry, error) {
	tliText, rest := cutField(s)
	tli, err := strconv.ParseUint(tliText, 10, 32)
	if err != nil {
		return HistoryEntry{}, errors.New("expected a numeric timeline ID")
	}
	if tli == 0 {
		return HistoryEntry{}, errors.New("timeline 0 does not exist")
	}
	lsnText, rest := cutField(strings.TrimLeft(rest, " \t\v\f\r"))
	lsn, err := ParseLSN(lsnText)
	if err != nil {
		return HistoryEntry{}, errors.New("expected a write-ahead log switchpoint location")
	}
	return HistoryEntry{
		TLI:       TimeLineID(tli),
		SwitchLSN: lsn,
		Reason:    strings.TrimSpace(rest),
	}, nil
}

// cutField splits s at its first white space.
func cutField(s string) (field, rest string) {
	if i := strings.IndexAny(s, " \t\v\f\r"); i >= 0 {
		return s[:i], s[i:]
	}
	return s, ""
}

// FormatHistory writes entries in PostgreSQL's history file format, one
// "tli<TAB>lsn<TAB>reason" line each (writeTimeLineHistory).
func FormatHistory(w io.Writer, entries []HistoryEntry) error {
	for _, e := range entries {
		if _, err := fmt.Fprintf(w, "%d\t%s\t%s\n", uint32(e.TLI), e.SwitchLSN, e.Reason); err != nil {
			return fmt.Errorf("pg: write timeline history: %w", err)
		}
	}
	return nil
}

// ValidateHistory checks that entries can be the history of timeline tli:
// every ancestor's ID is below tli (PostgreSQL refuses the file otherwise).
func ValidateHistory(entries []HistoryEntry, tli TimeLineID) error {
	if n := len(entries); n > 0 && entries[n-1].TLI >= tli {
		return fmt.Errorf("pg: history of timeline %d lists timeline %d: ancestors must have lower IDs", tli, entries[n-1].TLI)
	}
	return nil
}

// TimelineAt returns the timeline that produced the WAL at lsn in the
// history of timeline current whose ancestors are entries: the first ancestor
// whose switch point is after lsn, else current. A switch point belongs to the
// child timeline.
func TimelineAt(entries []HistoryEntry, current TimeLineID, lsn LSN) TimeLineID {
	for _, e := range entries {
		if lsn < e.SwitchLSN {
			return e.TLI
		}
	}
	return current
}

// SwitchPoint returns the LSN at which ancestor timeline tli ended in
// entries, and false when tli is not an ancestor listed there.
func SwitchPoint(entries []HistoryEntry, tli TimeLineID) (LSN, bool) {
	for _, e := range entries {
		if e.TLI == tli {
			return e.SwitchLSN, true
		}
	}
	return InvalidLSN, false
}
