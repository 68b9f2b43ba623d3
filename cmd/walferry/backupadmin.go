package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/walferry/walferry/internal/humanize"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/codec"
)

// The backup administration commands: backup-list, backup-show,
// backup-delete and verify. They read (and, for backup-delete, prune)
// what backup-push wrote; the rules live in package backup.

const timeLayout = "2006-01-02 15:04:05 MST"

func (a *app) backupListCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup-list",
		Usage:     "list backups",
		UsageText: "walferry backup-list --repo URL... [--json]",
		Description: `Lists the backups of every --repo, oldest first: id, type (full or
incremental) and parent, start and stop time, LSNs and timeline, the size of
the data directory it restores (DATA), what its own objects take in the
repository (STORED), the PostgreSQL version, and the WAL segments it needs
(START WAL..STOP WAL, all of which must stay archived).

Only complete backups are listed (those whose manifest was written);
leftovers of interrupted backups are removed by backup-delete.`,
		Flags:  withCommonFlags(&cli.BoolFlag{Name: "json", Usage: "print a JSON array for scripts"}),
		Action: a.backupList,
	}
}

func (a *app) backupShowCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup-show",
		ArgsUsage: "<id|LATEST>",
		Usage:     "show one backup",
		UsageText: "walferry backup-show <id|LATEST> --repo URL... [--json [--files]]",
		Description: `Prints everything about one backup: its times, LSNs, timeline and WAL
range, the chain it restores through (its ancestors down to the full
backup), tablespaces, files and objects, page checksum errors seen while
it was taken, and the bytes it stored itself versus those it takes from
its ancestors.

--json prints the manifest (without the per-file list unless --files is
given) with the chain added.`,
		Flags: withCommonFlags(
			&cli.BoolFlag{Name: "json", Usage: "print the manifest as JSON"},
			&cli.BoolFlag{Name: "files", Usage: "with --json, include the per-file list (size, mode, checksums, extents)"},
		),
		Action: a.backupShow,
	}
}

func (a *app) backupDeleteCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup-delete",
		ArgsUsage: "[<id>]",
		Usage:     "delete backups and the WAL only they need",
		UsageText: "walferry backup-delete (--retain-full N | --before TIME | <id>) --repo URL... [--dry-run] [--json]",
		Description: `Applies one retention rule. A backup is only ever deleted together with
every incremental built on it, so no chain is broken:

   --retain-full N   keep the N newest full backups and the incrementals
                     built on them; delete older chains
   --before TIME     delete the chains whose newest backup stopped before
                     TIME: 2026-11-01T00:00:00Z, '2026-11-01 00:00:00'
                     (UTC), 2026-11-01, or an age: 14d, 2w, 36h. A full
                     older than TIME stays while a newer incremental needs
                     it, and the newest backup always stays.
   <id>              delete one backup; refused while incrementals depend
                     on it (delete them first, newest first)

Each backup disappears at once (its manifest is deleted first, then its
objects). Then the archived WAL no remaining backup needs is deleted: every
segment, .partial and .backup file before the oldest remaining backup's
start segment, on every timeline. Timeline history files are never
deleted, and when no backup remains no WAL is deleted. Leftovers of
interrupted backups (objects without a manifest) are removed too.

It holds the repository's backup lease, so it never runs beside
backup-push (the second one to start fails, naming the other).
--dry-run prints what would be deleted and changes nothing.`,
		Flags: withCommonFlags(
			&cli.IntFlag{Name: "retain-full", Usage: "keep the `N` newest full backups (N >= 1) and their incrementals"},
			&cli.StringFlag{Name: "before", Usage: "delete chains that ended before `TIME` (RFC 3339, 'YYYY-MM-DD HH:MM:SS' UTC, or an age like 14d, 36h)"},
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "print what would be deleted; delete nothing"},
			&cli.BoolFlag{Name: "json", Usage: "print a JSON object for scripts"},
		),
		Action: a.backupDelete,
	}
}

func (a *app) verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		ArgsUsage: "[<id>|LATEST]",
		Usage:     "re-read and check backups and WAL continuity",
		UsageText: "walferry verify [<id>|LATEST] --repo URL... [--wal] [--jobs N] [--json]",
		Description: `Re-reads every object the backups need (one backup with <id>, all of
them otherwise; an incremental's ancestors' objects included), whole, in
parallel (--jobs): each object's checksum is checked, its size and SHA-256
are compared with the manifest, every file's extents must cover it exactly
and lie inside their objects, and every 8 MiB unit of every file is hashed
again and compared with the manifest. Each backup's own WAL (its start to
stop segment) must be archived.

--wal also checks the archive from the oldest verified backup's start
segment to the newest segment, following timeline switches through the
history files as recovery would, reports every missing range, and
re-reads every WAL file in that range.

Exit status: 0 when everything is intact; 6 when an object is corrupt;
1 for anything else found wrong (missing objects or WAL, manifests that
do not match); 3 when the store could not be read. Problems are printed
one per line; --json prints the whole report.`,
		Flags: withCommonFlags(
			&cli.BoolFlag{Name: "wal", Usage: "also check WAL continuity and re-read the archived WAL"},
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, EnvVars: []string{"WALFERRY_VERIFY_JOBS"}, Value: runtime.NumCPU(),
				Usage: "`N` objects read at once", DefaultText: "one per CPU"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
		),
		Action: a.verify,
	}
}

// listRow is a backup-list JSON row: the backup and the repository
// holding it.
type listRow struct {
	Repository string `json:"repository"`
	backup.Summary
}

func (a *app) backupList(c *cli.Context) error {
	args, err := adminArgs(c)
	if err != nil {
		return err
	}
	if len(args) != 0 {
		return usage(fmt.Errorf("backup-list takes no arguments, got %q", args))
	}
	s, repos, closeStores, err := a.loadRepos(c)
	if err != nil {
		return err
	}
	defer closeStores()
	rows := []listRow{}
	for i, r := range repos {
		ms, err := backup.List(c.Context, r)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			for _, m := range ms {
				rows = append(rows, listRow{Repository: s.cfg.Repos[i], Summary: m.Summarize()})
			}
			continue
		}
		if i > 0 {
			fmt.Fprintln(a.stdout)
		}
		if len(repos) > 1 {
			fmt.Fprintf(a.stdout, "%s:\n", s.cfg.Repos[i])
		}
		if len(ms) == 0 {
			fmt.Fprintf(a.stdout, "no backups in %s\n", s.cfg.Repos[i])
			continue
		}
		printBackupTable(a.stdout, ms)
	}
	if c.Bool("json") {
		return a.printJSON(rows)
	}
	return nil
}

func printBackupTable(w io.Writer, ms []*backup.Manifest) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tPARENT\tSTART\tSTOP\tSTART LSN\tSTOP LSN\tTL\tDATA\tSTORED\tPG\tWAL")
	for _, m := range ms {
		sm := m.Summarize()
		parent := sm.Parent
		if parent == "" {
			parent = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s..%s\n",
			sm.ID, sm.Type, parent, sm.StartTime.UTC().Format(timeLayout), sm.StopTime.UTC().Format(timeLayout),
			sm.StartLSN, sm.StopLSN, sm.Timeline, humanize.Bytes(sm.DataBytes), humanize.Bytes(sm.StoredBytes),
			sm.PGVersion, sm.StartWAL, sm.StopWAL)
	}
	tw.Flush()
}

// showJSON is backup-show --json: the manifest, its file list only with
// --files, and the chain.
type showJSON struct {
	Repository string `json:"repository"`
	*backup.Manifest
	Files       []backup.File `json:"files,omitempty"`
	PGVersion   string        `json:"pg_version"`
	Chain       []string      `json:"chain"`
	BrokenChain string        `json:"broken_chain,omitempty"`
}

func (a *app) backupShow(c *cli.Context) error {
	args, err := adminArgs(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usage(errors.New("backup-show takes one backup id or LATEST (see walferry backup-list)"))
	}
	if c.Bool("files") && !c.Bool("json") {
		return usage(errors.New("--files goes with --json (the text output summarizes the files)"))
	}
	s, repos, closeStores, err := a.loadRepos(c)
	if err != nil {
		return err
	}
	defer closeStores()
	var out []showJSON
	for i, r := range repos {
		m, err := backup.Resolve(c.Context, r, args[0])
		if err != nil {
			return err
		}
		d, err := backup.Describe(c.Context, r, m)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			sj := showJSON{Repository: s.cfg.Repos[i], Manifest: m, PGVersion: d.PGVersion, Chain: d.Chain, BrokenChain: d.BrokenChain}
			if c.Bool("files") {
				sj.Files = m.Files
			}
			out = append(out, sj)
			continue
		}
		if i > 0 {
			fmt.Fprintln(a.stdout)
		}
		a.printDetails(s.cfg.Repos[i], d)
	}
	if c.Bool("json") {
		if len(out) == 1 {
			return a.printJSON(out[0])
		}
		return a.printJSON(out)
	}
	return nil
}

func (a *app) printDetails(url string, d *backup.Details) {
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "backup\t%s\n", d.ID)
	fmt.Fprintf(w, "repository\t%s\n", url)
	typ := string(d.Type)
	if d.Parent != "" {
		typ += " (parent " + d.Parent + ")"
	}
	fmt.Fprintf(w, "type\t%s\n", typ)
	chain := strings.Join(d.Chain, " <- ")
	if d.BrokenChain != "" {
		chain += " <- " + d.BrokenChain + " MISSING: this backup cannot be restored"
	}
	fmt.Fprintf(w, "chain\t%s\n", chain)
	if d.Label != "" {
		fmt.Fprintf(w, "label\t%s\n", d.Label)
	}
	fmt.Fprintf(w, "mode\t%s\n", d.Mode)
	fmt.Fprintf(w, "start\t%s  LSN %s\n", d.StartTime.UTC().Format(timeLayout), d.StartLSN)
	fmt.Fprintf(w, "stop\t%s  LSN %s\n", d.StopTime.UTC().Format(timeLayout), d.StopLSN)
	fmt.Fprintf(w, "duration\t%s\n", time.Duration(float64(d.Duration)*float64(time.Second)).Round(time.Second))
	fmt.Fprintf(w, "timeline\t%d\n", d.Timeline)
	fmt.Fprintf(w, "WAL needed\t%s..%s\n", d.StartWAL, d.StopWAL)
	fmt.Fprintf(w, "PostgreSQL\t%s (system identifier %d)\n", d.PGVersion, d.SystemID)
	checksums := "off"
	if d.DataChecksums {
		checksums = "on"
	}
	fmt.Fprintf(w, "data checksums\t%s\n", checksums)
	if d.Owner != "" {
		fmt.Fprintf(w, "owner\t%s\n", d.Owner)
	}
	fmt.Fprintf(w, "data size\t%s\n", humanize.Bytes(d.DataBytes))
	fmt.Fprintf(w, "new\t%s (stored by this backup)\n", humanize.Bytes(d.NewBytes))
	fmt.Fprintf(w, "referenced\t%s (from its ancestors)\n", humanize.Bytes(d.ReferencedBytes))
	fmt.Fprintf(w, "stored\t%s in %d objects\n", humanize.Bytes(d.StoredBytes), d.Objects)
	fmt.Fprintf(w, "needs objects\t%d", d.ReferencedObjects)
	if len(d.DependsOn) > 0 {
		fmt.Fprintf(w, " (also of %s)", strings.Join(d.DependsOn, ", "))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "files\t%d in %d directories\n", d.Files, d.Dirs)
	if len(d.Tablespaces) == 0 {
		fmt.Fprintf(w, "tablespaces\tnone\n")
	}
	for _, ts := range d.Tablespaces {
		name := ts.Name
		if name == "" {
			name = "?"
		}
		fmt.Fprintf(w, "tablespace\t%d %s -> %s\n", ts.OID, name, ts.Location)
	}
	fmt.Fprintf(w, "page checksum errors\t%d\n", len(d.PageChecksumErrors))
	w.Flush()
	const maxPages = 20
	for i, pe := range d.PageChecksumErrors {
		if i == maxPages {
			fmt.Fprintf(a.stdout, "  ... and %d more (see --json)\n", len(d.PageChecksumErrors)-maxPages)
			break
		}
		fmt.Fprintf(a.stdout, "  %s block %d\n", pe.Path, pe.Block)
	}
}

// deleteOptions turns backup-delete's command line into options; every
// mistake is a usage error.
func deleteOptions(c *cli.Context, now time.Time) (backup.DeleteOptions, error) {
	args, err := adminArgs(c)
	if err != nil {
		return backup.DeleteOptions{}, err
	}
	o := backup.DeleteOptions{DryRun: c.Bool("dry-run")}
	if len(args) > 1 {
		return o, usage(fmt.Errorf("backup-delete takes at most one backup id, got %q", args))
	}
	if len(args) == 1 {
		o.ID = args[0]
	}
	if c.IsSet("retain-full") {
		o.RetainFull = c.Int("retain-full")
		if o.RetainFull < 1 {
			return o, usage(fmt.Errorf("--retain-full %d: keep at least 1 full backup (to delete every backup, delete them by id)", o.RetainFull))
		}
	}
	if c.IsSet("before") {
		t, err := backup.ParseBefore(c.String("before"), now)
		if err != nil {
			return o, usage(err)
		}
		o.Before = t
	}
	if err := o.Validate(); err != nil {
		return o, usage(err)
	}
	return o, nil
}

func (a *app) backupDelete(c *cli.Context) error {
	o, err := deleteOptions(c, time.Now())
	if err != nil {
		return err
	}
	s, repos, closeStores, err := a.loadRepos(c)
	if err != nil {
		return err
	}
	defer closeStores()
	o.Jobs = s.cfg.Storage.Concurrency
	var results []*backup.DeleteResult
	for i, r := range repos {
		res, err := backup.Delete(c.Context, r, o)
		if err != nil {
			return err
		}
		res.Repository = s.cfg.Repos[i]
		results = append(results, res)
		if !c.Bool("json") {
			if i > 0 {
				fmt.Fprintln(a.stdout)
			}
			a.printDeleteResult(res)
		}
	}
	if c.Bool("json") {
		if len(results) == 1 {
			return a.printJSON(results[0])
		}
		return a.printJSON(results)
	}
	return nil
}

func (a *app) printDeleteResult(res *backup.DeleteResult) {
	verb := "deleted"
	if res.DryRun {
		verb = "would delete"
	}
	fmt.Fprintf(a.stdout, "%s (%s):\n", res.Repository, res.Rule)
	if len(res.Deleted) == 0 {
		fmt.Fprintf(a.stdout, "  no backup to delete\n")
	}
	for _, d := range res.Deleted {
		fmt.Fprintf(a.stdout, "  %s backup %s (%s, stopped %s): %d objects, %s; %s\n",
			verb, d.ID, d.Type, d.StopTime.UTC().Format(timeLayout), d.Objects, humanize.Bytes(d.Bytes), d.Reason)
	}
	for _, d := range res.Incomplete {
		fmt.Fprintf(a.stdout, "  %s incomplete backup %s: %d objects, %s\n", verb, d.ID, d.Objects, humanize.Bytes(d.Bytes))
	}
	if t := res.Temporary; t.Objects > 0 {
		fmt.Fprintf(a.stdout, "  %s %d temporary objects left by interrupted writers, %s\n", verb, t.Objects, humanize.Bytes(t.Bytes))
	}
	if res.WALKeptFrom != "" {
		fmt.Fprintf(a.stdout, "  %s %d WAL files, %s (WAL kept from %s on)\n", verb, res.WALObjects, humanize.Bytes(res.WALBytes), res.WALKeptFrom)
	}
	for _, n := range res.Notes {
		fmt.Fprintf(a.stdout, "  note: %s\n", n)
	}
	kept := "none"
	if len(res.Kept) > 0 {
		kept = strings.Join(res.Kept, ", ")
	}
	fmt.Fprintf(a.stdout, "  kept: %s\n", kept)
	freed := "freed"
	if res.DryRun {
		freed = "would be freed (dry run: nothing was deleted)"
	}
	fmt.Fprintf(a.stdout, "  %s %s\n", humanize.Bytes(res.BytesFreed), freed)
}

func (a *app) verify(c *cli.Context) error {
	args, err := adminArgs(c)
	if err != nil {
		return err
	}
	if len(args) > 1 {
		return usage(fmt.Errorf("verify takes at most one backup id, got %q", args))
	}
	id := ""
	if len(args) == 1 {
		id = args[0]
	}
	if c.Int("jobs") < 1 {
		return usage(fmt.Errorf("--jobs %d: read at least 1 object at a time", c.Int("jobs")))
	}
	s, repos, closeStores, err := a.loadRepos(c)
	if err != nil {
		return err
	}
	defer closeStores()
	o := backup.VerifyOptions{ID: id, WAL: c.Bool("wal"), Jobs: c.Int("jobs")}
	var reports []*backup.VerifyReport
	var failure error
	for i, r := range repos {
		rep, err := backup.Verify(c.Context, r, o)
		var ve *backup.VerifyError
		if err != nil && !errors.As(err, &ve) {
			return err // could not check: not a verdict
		}
		rep.Repository = s.cfg.Repos[i]
		if err != nil && (failure == nil || errors.Is(err, codec.ErrCorrupt) && !errors.Is(failure, codec.ErrCorrupt)) {
			failure = err
		}
		reports = append(reports, rep)
		if !c.Bool("json") {
			if i > 0 {
				fmt.Fprintln(a.stdout)
			}
			a.printVerifyReport(rep)
		}
	}
	if c.Bool("json") {
		var err error
		if len(reports) == 1 {
			err = a.printJSON(reports[0])
		} else {
			err = a.printJSON(reports)
		}
		if err != nil {
			return err
		}
	}
	return failure
}

func (a *app) printVerifyReport(rep *backup.VerifyReport) {
	out := a.stdout
	fmt.Fprintf(out, "%s:\n", rep.Repository)
	if len(rep.Backups) == 0 {
		fmt.Fprintf(out, "  no backups\n")
	}
	for _, b := range rep.Backups {
		verdict := "ok"
		if !b.OK {
			verdict = "DAMAGED"
		}
		fmt.Fprintf(out, "  backup %s: %s (%d files, %s, %d objects)\n", b.ID, verdict, b.Files, humanize.Bytes(b.DataBytes), b.Objects)
	}
	secs := float64(rep.Duration)
	rate := ""
	if secs > 0 {
		rate = ", " + humanize.Bytes(int64(float64(rep.Bytes)/secs)) + "/s"
	}
	fmt.Fprintf(out, "  read %d objects, %s in %.1fs%s; %d file units checked\n", rep.Objects, humanize.Bytes(rep.Bytes), secs, rate, rep.Units)
	if w := rep.WAL; w != nil {
		if w.From == "" {
			fmt.Fprintf(out, "  WAL: nothing to check\n")
		} else {
			tls := make([]string, len(w.Timelines))
			for i, t := range w.Timelines {
				tls[i] = fmt.Sprint(t)
			}
			state := "continuous"
			if w.Missing > 0 {
				state = fmt.Sprintf("%d of %d segments MISSING", w.Missing, w.Segments)
			}
			fmt.Fprintf(out, "  WAL %s..%s (timelines %s): %s; re-read %d files, %s\n",
				w.From, w.To, strings.Join(tls, ", "), state, w.Objects, humanize.Bytes(w.Bytes))
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(out, "  note: %s\n", n)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(out, "  problem: %s\n", p.Message)
	}
	if rep.OK {
		fmt.Fprintf(out, "  ok\n")
	} else {
		fmt.Fprintf(out, "  %d problems\n", len(rep.Problems))
	}
}

// adminArgs returns the command's arguments and applies the flags that
// follow them ("walferry backup-show LATEST --json"): urfave/cli stops
// parsing flags at the first argument. "--" ends the flags.
func adminArgs(c *cli.Context) ([]string, error) {
	var args []string
	rest := c.Args().Slice()
	for len(rest) > 0 {
		if rest[0] == "--" {
			return append(args, rest[1:]...), nil
		}
		if !strings.HasPrefix(rest[0], "-") || rest[0] == "-" {
			args, rest = append(args, rest[0]), rest[1:]
			continue
		}
		set := flag.NewFlagSet(c.Command.Name, flag.ContinueOnError)
		set.SetOutput(io.Discard)
		byName := map[string]cli.Flag{}
		for _, f := range c.Command.Flags {
			if err := f.Apply(set); err != nil {
				return nil, err
			}
			for _, n := range f.Names() {
				byName[n] = f
			}
		}
		if err := set.Parse(rest); err != nil {
			return nil, usage(fmt.Errorf("%w (see: walferry %s --help)", err, c.Command.FullName()))
		}
		var setErr error
		set.Visit(func(fl *flag.Flag) {
			f := byName[fl.Name]
			if f == nil || setErr != nil {
				return
			}
			if v, ok := fl.Value.(*cli.StringSlice); ok {
				for _, s := range v.Value() {
					setErr = errors.Join(setErr, c.Set(f.Names()[0], s))
				}
				return
			}
			for _, n := range f.Names() {
				setErr = errors.Join(setErr, c.Set(n, fl.Value.String()))
			}
		})
		if setErr != nil {
			return nil, usage(setErr)
		}
		rest = set.Args()
	}
	return args, nil
}
