package backup_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// TestVerifyUnownedTimelines: a copy promoted from the backup archived
// timeline 2 into the repository while the record's primary stayed on
// timeline 1: verify names timeline 2 with its fix (a problem, and the
// report's unowned_timelines), and so does UnownedTimelines, restore's
// check. Once walferry promote records timeline 2, it is owned.
func TestVerifyUnownedTimelines(t *testing.T) {
	f := newFixture(t)
	f.backup(fxSpec{start: day(1), startSeg: 2, stopSeg: 2, files: []fxFile{{"PG_VERSION", []byte("15\n")}}})
	f.wal(1, 2, 6)
	g1, err := f.r.NextGeneration(f.ctx, 0, repo.Generation{Instance: "pg-0", Site: "a", Reason: "init", Timeline: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{WAL: true}); err != nil {
		t.Fatalf("before the copy: %v", err)
	}
	fork := f.size.StartLSN(4) + 0x1000
	f.history(2, pg.HistoryEntry{TLI: 1, SwitchLSN: fork, Reason: "no recovery target specified"})
	f.wal(2, 4, 5)

	rep, err := backup.Verify(f.ctx, f.r, backup.VerifyOptions{})
	if !errors.Is(err, backup.ErrVerify) {
		t.Fatalf("err = %v", err)
	}
	ps := problemsOf(rep, backup.ProblemLineage)
	if len(ps) != 1 || len(rep.UnownedTimelines) != 1 {
		t.Fatalf("problems %+v, unowned %+v; want timeline 2 once", rep.Problems, rep.UnownedTimelines)
	}
	u := rep.UnownedTimelines[0]
	if u.Timeline != 2 || !u.History || u.Files != 2 || u.First != "000000020000000000000004" || u.Last != "000000020000000000000005" {
		t.Errorf("unowned %+v", u)
	}
	for _, want := range []string{"timeline 2", "00000002.history", "generation 1", "a/pg-0", "--target-timeline 1", "walferry promote"} {
		if !strings.Contains(ps[0].Message, want) {
			t.Errorf("message %q does not name %q", ps[0].Message, want)
		}
	}
	got, err := backup.UnownedTimelines(f.ctx, f.r)
	if err != nil || len(got) != 1 || got[0].Timeline != 2 || !got[0].History {
		t.Errorf("UnownedTimelines = %+v, %v", got, err)
	}

	// walferry promote of that copy: timeline 2 is the record's; the old
	// primary's timeline 1 past the fork (segments 4..6) is not, but
	// recovery does not read it: a note, not a problem.
	if _, err := f.r.NextGeneration(f.ctx, g1.Number, repo.Generation{Instance: "copy", Reason: "promote", Timeline: 2, TimelineStart: fork}); err != nil {
		t.Fatal(err)
	}
	rep, err = backup.Verify(f.ctx, f.r, backup.VerifyOptions{})
	if err != nil || len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "walferry rejoin") {
		t.Errorf("after promote: %v, notes %q; want ok with a note on timeline 1", err, rep.Notes)
	}
	if len(rep.UnownedTimelines) != 1 || rep.UnownedTimelines[0].Timeline != 1 || rep.UnownedTimelines[0].Files != 3 ||
		!strings.Contains(rep.UnownedTimelines[0].Message, "walferry rejoin") {
		t.Errorf("after promote: unowned %+v", rep.UnownedTimelines)
	}
	if got, err := backup.UnownedTimelines(f.ctx, f.r); err != nil || len(got) != 0 {
		t.Errorf("after promote, UnownedTimelines (history only) = %+v, %v", got, err)
	}
}
