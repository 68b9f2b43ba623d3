package backup

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// VerifyOptions select what Verify checks.
type VerifyOptions struct {
	// ID is a backup id or LATEST; empty verifies every backup.
	ID string
	// WAL also checks the archived WAL: continuity from the oldest
	// verified backup's start to the newest segment, following timeline
	// switches, re-reading every WAL file in that range.
	WAL bool
	// Jobs is how many objects are read at once; 0 means the number of CPUs.
	Jobs int
	// BufferBudget bounds the memory held for file pieces that arrive
	// before the piece preceding them in their 8 MiB unit (a file split
	// across objects read in parallel, or an incremental's changed pages
	// next to its parent's); 0 means 128 MiB. Units that do not fit are
	// checked afterwards, assembled in windows of this size.
	BufferBudget int64
}

// Problem kinds.
const (
	ProblemCorrupt    = "corrupt"     // an object failed its checksum
	ProblemMissing    = "missing"     // an object the manifest points at does not exist
	ProblemObject     = "object"      // an object's size or checksum differs from its manifest's record
	ProblemLayout     = "layout"      // a file's record breaks the manifest rules, or its extents point past their object's end
	ProblemContent    = "content"     // a file unit's SHA-256 differs from the manifest's
	ProblemManifest   = "manifest"    // a manifest is missing, unreadable, or breaks the rules of the backup as a whole
	ProblemWALGap     = "wal-gap"     // segments missing from the archive
	ProblemWALCorrupt = "wal-corrupt" // a WAL file failed its checksum
	ProblemBackupWAL  = "backup-wal"  // WAL a backup needs is missing
	ProblemHistory    = "history"     // a timeline history file is missing or invalid
	// ProblemLineage (verify_lineage.go): WAL the lineage record does not permit.
	maxFilesInAProblem  = 3
	defaultBufferBudget = 128 << 20
)

// Problem is one thing Verify found wrong.
type Problem struct {
	Kind string `json:"kind"`
	// Backups are the verified backups the problem affects.
	Backups []string `json:"backups,omitempty"`
	Key     string   `json:"key,omitempty"`
	Message string   `json:"message"`
}

// BackupCheck is the verdict on one backup.
type BackupCheck struct {
	ID      string `json:"id"`
	OK      bool   `json:"ok"`
	Files   int    `json:"files"`
	Objects int    `json:"objects"`
	// DataBytes is the size of the data directory the backup restores.
	DataBytes int64 `json:"data_bytes"`
}

// WALCheck summarizes the WAL continuity check.
type WALCheck struct {
	// From and To name the first and last segment checked, on the
	// timelines recovery would follow.
	From      string          `json:"from,omitempty"`
	To        string          `json:"to,omitempty"`
	Timelines []pg.TimeLineID `json:"timelines"`
	Segments  int             `json:"segments"`
	Missing   int             `json:"missing"`
	// Objects and Bytes count the WAL files re-read (segments, .partial,
	// .backup and history files).
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"`
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Repository string        `json:"repository"`
	OK         bool          `json:"ok"`
	Backups    []BackupCheck `json:"backups"`
	// Objects and Bytes count the backup objects read and their raw bytes;
	// Units the file units whose SHA-256 was recomputed.
	Objects int       `json:"objects"`
	Bytes   int64     `json:"bytes"`
	Units   int       `json:"units"`
	WAL     *WALCheck `json:"wal,omitempty"`
	// UnownedTimelines is WAL the repository's lineage record does not
	// permit, each also a problem of kind ProblemLineage.
	UnownedTimelines []UnownedTimeline `json:"unowned_timelines,omitempty"`
	Problems         []Problem         `json:"problems"`
	Notes            []string          `json:"notes,omitempty"`
	Duration         Seconds           `json:"duration_seconds"`
}

// ErrVerify: verification found problems (listed in the report).
var ErrVerify = errors.New("verification failed")

// VerifyError is returned when a report has problems. It matches
// ErrVerify, and codec.ErrCorrupt when an object is corrupt.
type VerifyError struct {
	Report *VerifyReport
}

func (e *VerifyError) Error() string {
	ps := e.Report.Problems
	msg := fmt.Sprintf("verify of %s found %d problem", e.Report.Repository, len(ps))
	if len(ps) != 1 {
		msg += "s"
	}
	if len(ps) > 0 {
		msg += ": " + ps[0].Message
		if len(ps) > 1 {
			msg += fmt.Sprintf(" (and %d more)", len(ps)-1)
		}
	}
	return msg
}

// Unwrap lets errors.Is find ErrVerify and, for corruption, codec.ErrCorrupt.
func (e *VerifyError) Unwrap() []error {
	out := []error{ErrVerify}
	for _, p := range e.Report.Problems {
		if p.Kind == ProblemCorrupt || p.Kind == ProblemWALCorrupt {
			return append(out, codec.ErrCorrupt)
		}
	}
	return out
}

// Verify re-reads backups and checks them against their manifests: each
// manifest must obey the format's rules (Manifest.Check; what breaks them
// is reported and left alone, the rest is checked); every object their
// files point at (ancestors' included) is read whole, which checks its
// checksum, and compared with the size and SHA-256 the manifest recorded;
// extents must point inside their objects; every 8 MiB unit of every file
// is hashed again and compared with the manifest. The WAL each backup
// needs (StartWAL to StopWAL) must be archived. With o.WAL the archive is checked from the
// oldest verified backup's start to its newest segment.
//
// Objects are read once each, o.Jobs at a time, as streams: memory is
// bounded by o.Jobs read buffers plus o.BufferBudget, not by object or
// file sizes. The report lists every problem; the error is a *VerifyError
// when there is one, or the failure that stopped the check (an
// unreachable store is not reported as damage).
func Verify(ctx context.Context, r *repo.Repo, o VerifyOptions) (*VerifyReport, error) {
	start := time.Now()
	if o.Jobs <= 0 {
		o.Jobs = runtime.NumCPU()
	}
	if o.BufferBudget <= 0 {
		o.BufferBudget = defaultBufferBudget
	}
	v := &verifier{r: r, o: o, rep: &VerifyReport{Repository: r.String(), Backups: []BackupCheck{}, Problems: []Problem{}},
		damaged: map[string]damage{}}
	selected, err := v.selectBackups(ctx)
	if err != nil {
		return nil, err
	}
	if err := v.checkBackups(ctx, selected); err != nil {
		return v.rep, err
	}
	if err := v.checkWAL(ctx, selected); err != nil {
		return v.rep, err
	}
	rep := v.finish(selected)
	rep.Duration = Seconds(time.Since(start).Seconds())
	if !rep.OK {
		return rep, &VerifyError{Report: rep}
	}
	return rep, nil
}

// verifier carries one Verify run's state.
type verifier struct {
	r   *repo.Repo
	o   VerifyOptions
	rep *VerifyReport
	mu  sync.Mutex // guards rep.Problems, rep.Notes

	// damaged says, by backup id, what of a manifest that breaks the
	// format's rules verify leaves alone (reported, not checked further);
	// filled while the manifests are read, before any object is.
	damaged map[string]damage

	// budget is the memory currently held by buffered pieces.
	budget atomic.Int64
}

// damage is what a manifest's *ManifestError rules out: the files and the
// object records whose own rules are broken.
type damage struct {
	files   map[int]bool // indexes into Files
	objects map[string]bool
}

func (v *verifier) problem(p Problem) {
	v.mu.Lock()
	v.rep.Problems = append(v.rep.Problems, p)
	v.mu.Unlock()
}

func (v *verifier) note(s string) {
	v.mu.Lock()
	v.rep.Notes = append(v.rep.Notes, s)
	v.mu.Unlock()
}

// finish sorts the problems and gives each verified backup its verdict.
func (v *verifier) finish(selected []*Manifest) *VerifyReport {
	rep := v.rep
	sort.SliceStable(rep.Problems, func(i, j int) bool { return rep.Problems[i].Message < rep.Problems[j].Message })
	bad := map[string]bool{}
	for _, p := range rep.Problems {
		for _, id := range p.Backups {
			bad[id] = true
		}
	}
	for _, m := range selected {
		rep.Backups = append(rep.Backups, BackupCheck{ID: m.ID, OK: !bad[m.ID], Files: len(m.Files),
			Objects: len(m.ObjectKeys()), DataBytes: m.Stats.DataBytes})
	}
	rep.OK = len(rep.Problems) == 0
	return rep
}

// selectBackups reads the manifests to verify: o.ID's, or every backup's.
func (v *verifier) selectBackups(ctx context.Context) ([]*Manifest, error) {
	if v.o.ID == "" {
		return v.readAll(ctx)
	}
	id, err := resolveID(ctx, v.r, v.o.ID)
	if err != nil {
		return nil, err
	}
	m, err := v.readManifest(ctx, id, true)
	if err != nil {
		return nil, err
	}
	return []*Manifest{m}, nil
}

// readAll reads every backup's manifest; an unreadable one is a problem,
// not the end of the run.
func (v *verifier) readAll(ctx context.Context) ([]*Manifest, error) {
	ids, _, err := IDs(ctx, v.r)
	if err != nil {
		return nil, err
	}
	var out []*Manifest
	for _, id := range ids {
		m, err := v.readManifest(ctx, id, true)
		switch {
		case err == nil:
			out = append(out, m)
		case errors.Is(err, codec.ErrCorrupt):
			v.problem(Problem{Kind: ProblemCorrupt, Backups: []string{id}, Key: repo.BackupManifestKey(id),
				Message: fmt.Sprintf("backup %s: its manifest %s is corrupt (%v)", id, repo.BackupManifestKey(id), err)})
		case isNoBackup(err):
			// deleted since the listing
		default:
			if storage.IsRetryable(err) || ctx.Err() != nil {
				return nil, err
			}
			v.problem(Problem{Kind: ProblemManifest, Backups: []string{id}, Key: repo.BackupManifestKey(id),
				Message: fmt.Sprintf("backup %s: %v", id, err)})
		}
	}
	return out, nil
}

// readManifest reads backup id's manifest. One that breaks the format's
// rules is returned without error: what is damaged is remembered, to be
// left alone, and, when report is set, each broken rule is a problem.
func (v *verifier) readManifest(ctx context.Context, id string, report bool) (*Manifest, error) {
	m, err := readManifest(ctx, v.r, id)
	var me *ManifestError
	if !errors.As(err, &me) {
		return m, err
	}
	d := damage{files: map[int]bool{}, objects: map[string]bool{}}
	for _, is := range me.Issues {
		p := Problem{Kind: ProblemManifest, Backups: []string{id}, Key: is.Object, Message: "backup " + id + ": " + is.String()}
		switch {
		case is.file != 0:
			d.files[is.file-1] = true
			p.Kind = ProblemLayout
		case is.Object != "":
			d.objects[is.Object] = true
		}
		if report {
			v.problem(p)
		}
	}
	v.damaged[id] = d
	return m, nil
}
