package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

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
	ProblemCorrupt      = "corrupt"     // an object failed its checksum
	ProblemMissing      = "missing"     // an object the manifest points at does not exist
	ProblemObject       = "object"      // an object's size or checksum differs from its manifest's record
	ProblemLayout       = "layout"      // a manifest's extents do not describe its files
	ProblemContent      = "content"     // a file unit's SHA-256 differs from the manifest's
	ProblemManifest     = "manifest"    // a manifest is missing or unreadable
	ProblemWALGap       = "wal-gap"     // segments missing from the archive
	ProblemWALCorrupt   = "wal-corrupt" // a WAL file failed its checksum
	ProblemBackupWAL    = "backup-wal"  // WAL a backup needs is missing
	ProblemHistory      = "history"     // a timeline history file is missing or invalid
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
	Objects  int       `json:"objects"`
	Bytes    int64     `json:"bytes"`
	Units    int       `json:"units"`
	WAL      *WALCheck `json:"wal,omitempty"`
	Problems []Problem `json:"problems"`
	Notes    []string  `json:"notes,omitempty"`
	Duration Seconds   `json:"duration_seconds"`
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

// Verify re-reads backups and checks them against their manifests: every
// object their files point at (ancestors' included) is read whole, which
// checks its checksum, and compared with the size and SHA-256 the manifest
// recorded; every file's extents must cover it exactly and point inside
// their objects; every 8 MiB unit of every file is hashed again and
// compared with the manifest. The WAL each backup needs (StartWAL to
// StopWAL) must be archived. With o.WAL the archive is checked from the
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
	v := &verifier{r: r, o: o, rep: &VerifyReport{Repository: r.String(), Backups: []BackupCheck{}, Problems: []Problem{}}}
	var selected []*Manifest
	if o.ID != "" {
		m, err := Resolve(ctx, r, o.ID)
		if err != nil {
			return nil, err
		}
		selected = []*Manifest{m}
	} else {
		ms, err := v.readAll(ctx)
		if err != nil {
			return nil, err
		}
		selected = ms
	}
	if err := v.checkBackups(ctx, selected); err != nil {
		return v.rep, err
	}
	if err := v.checkWAL(ctx, selected); err != nil {
		return v.rep, err
	}

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

	// budget is the memory currently held by buffered pieces.
	budget atomic.Int64
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

// readAll reads every backup's manifest; an unreadable one is a problem,
// not the end of the run.
func (v *verifier) readAll(ctx context.Context) ([]*Manifest, error) {
	ids, _, err := IDs(ctx, v.r)
	if err != nil {
		return nil, err
	}
	var out []*Manifest
	for _, id := range ids {
		m, err := ReadManifest(ctx, v.r, id)
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

// unitPiece is a contiguous part of one unit stored in one object.
type unitPiece struct {
	key   string
	at, n int64
}

// unitOwner is a file unit a unit check stands for (identical units of
// several backups are hashed once).
type unitOwner struct {
	backup, path string
	unit         int
	size         int64 // file size, for the byte range in messages
}

// unitCheck recomputes the SHA-256 of one unit from its pieces, which
// arrive from object streams in any order: the piece that comes next is
// hashed as it streams, later pieces are buffered (within the budget)
// until their turn, and a unit whose pieces do not fit in the budget is
// hashed afterwards by reading them again.
type unitCheck struct {
	want   string
	pieces []unitPiece
	owners []unitOwner

	mu       sync.Mutex
	next     int
	h        hash.Hash
	pending  map[int][]byte
	held     int64 // budget held by pending
	fallback bool
	done     bool
	got      string
}

// unitPieceRef routes one piece of a unit from its object's stream.
type unitPieceRef struct {
	u   *unitCheck
	idx int
}

// objectUse is what the verified manifests say about one object.
type objectUse struct {
	record *Object         // the owning manifest's record; nil when not found
	users  map[string]bool // verified backups whose files point into it
	refs   []unitPieceRef  // sorted by raw offset
	raw    int64           // bytes read
	bad    string          // "" when read whole and verified
}

func (v *verifier) checkBackups(ctx context.Context, selected []*Manifest) error {
	records := map[string]*Object{}
	selectedIDs := map[string]bool{}
	for _, m := range selected {
		selectedIDs[m.ID] = true
	}
	// known: the backups whose manifests were read, so a missing record
	// of one of their objects is a manifest problem.
	known := map[string]bool{}
	for id := range selectedIDs {
		known[id] = true
	}
	addRecords := func(m *Manifest) {
		for i := range m.Objects {
			records[m.Objects[i].Key] = &m.Objects[i]
		}
	}
	for _, m := range selected {
		addRecords(m)
	}
	// Ancestors' manifests give the records of the objects they wrote.
	loaded := map[string]bool{}
	for _, m := range selected {
		for _, dep := range append(m.DependsOn(), m.Parent) {
			if dep == "" || selectedIDs[dep] || loaded[dep] {
				continue
			}
			loaded[dep] = true
			pm, err := ReadManifest(ctx, v.r, dep)
			if err != nil {
				if !isNoBackup(err) && !errors.Is(err, codec.ErrCorrupt) {
					return err
				}
				v.problem(Problem{Kind: ProblemManifest, Backups: []string{m.ID}, Key: repo.BackupManifestKey(dep),
					Message: fmt.Sprintf("backup %s: it depends on backup %s, whose manifest cannot be read (%v): it cannot be restored", m.ID, dep, err)})
				continue
			}
			addRecords(pm)
			known[dep] = true
		}
	}

	objects := map[string]*objectUse{}
	use := func(key string) *objectUse {
		u := objects[key]
		if u == nil {
			u = &objectUse{record: records[key], users: map[string]bool{}}
			objects[key] = u
		}
		return u
	}
	for _, m := range selected {
		for _, ob := range m.Objects {
			use(ob.Key)
		}
	}
	units := map[string]*unitCheck{}
	var kb strings.Builder
	for _, m := range selected {
		for fi := range m.Files {
			f := &m.Files[fi]
			for _, e := range f.Extents {
				if _, _, ok := repo.BackupIDFromKey(e.Key); ok {
					use(e.Key).users[m.ID] = true
				}
			}
			if msg := extentLayoutProblem(f); msg != "" {
				v.problem(Problem{Kind: ProblemLayout, Backups: []string{m.ID},
					Message: fmt.Sprintf("backup %s: file %s: %s", m.ID, f.Path, msg)})
				continue
			}
			ej := 0
			for u := range f.Sums {
				lo := int64(u) * UnitSize
				hi := min(lo+UnitSize, f.Size)
				var ps []unitPiece
				for j := ej; j < len(f.Extents) && f.Extents[j].Off < hi; j++ {
					e := f.Extents[j]
					a, b := max(lo, e.Off), min(hi, e.Off+e.Len)
					if a < b {
						ps = append(ps, unitPiece{key: e.Key, at: e.At + (a - e.Off), n: b - a})
					}
				}
				for ej < len(f.Extents) && f.Extents[ej].Off+f.Extents[ej].Len <= hi {
					ej++
				}
				kb.Reset()
				kb.WriteString(f.Sums[u])
				for _, p := range ps {
					kb.WriteByte('|')
					kb.WriteString(p.key)
					kb.WriteByte('@')
					kb.WriteString(strconv.FormatInt(p.at, 10))
					kb.WriteByte('+')
					kb.WriteString(strconv.FormatInt(p.n, 10))
				}
				uc := units[kb.String()]
				if uc == nil {
					uc = &unitCheck{want: strings.ToLower(f.Sums[u]), pieces: ps}
					units[kb.String()] = uc
					for i, p := range ps {
						ou := use(p.key)
						ou.refs = append(ou.refs, unitPieceRef{u: uc, idx: i})
					}
				}
				uc.owners = append(uc.owners, unitOwner{backup: m.ID, path: f.Path, unit: u, size: f.Size})
			}
		}
	}
	keys := make([]string, 0, len(objects))
	for k, ou := range objects {
		keys = append(keys, k)
		sort.Slice(ou.refs, func(i, j int) bool {
			return ou.refs[i].u.pieces[ou.refs[i].idx].at < ou.refs[j].u.pieces[ou.refs[j].idx].at
		})
	}
	// Newest backups' objects first: an incremental's pieces of a unit
	// (its changed pages) are then the ones that wait in the buffer for
	// their turn, not its parent's unchanged bulk.
	sort.Slice(keys, func(i, j int) bool {
		oi, oj := objectOwner(keys[i]), objectOwner(keys[j])
		if oi != oj {
			return oi > oj
		}
		return keys[i] < keys[j]
	})

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.o.Jobs)
	var nObjects atomic.Int64
	var nBytes atomic.Int64
	for _, k := range keys {
		ou := objects[k]
		g.Go(func() error {
			if err := v.readObject(gctx, k, ou); err != nil {
				return err
			}
			nObjects.Add(1)
			nBytes.Add(ou.raw)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	v.rep.Objects, v.rep.Bytes = int(nObjects.Load()), nBytes.Load()

	// Objects: problems, then extents pointing past their object's end.
	for _, k := range keys {
		v.objectProblems(ctx, k, objects[k], selected, known)
	}
	for _, m := range selected {
		for _, f := range m.Files {
			for _, e := range f.Extents {
				ou := objects[e.Key]
				if ou != nil && ou.bad == "" && e.At >= 0 && e.At+e.Len > ou.raw {
					v.problem(Problem{Kind: ProblemLayout, Backups: []string{m.ID}, Key: e.Key,
						Message: fmt.Sprintf("backup %s: file %s: bytes %d-%d are said to be at %d-%d of object %s, which holds only %d bytes",
							m.ID, f.Path, e.Off, e.Off+e.Len-1, e.At, e.At+e.Len-1, e.Key, ou.raw)})
				}
			}
		}
	}

	// Units: compare, or hash again those that did not fit in the budget.
	var again []*unitCheck
	for _, uc := range units {
		if unitTainted(uc, objects) {
			continue
		}
		if uc.done {
			v.compareUnit(uc)
		} else {
			again = append(again, uc)
		}
		uc.pending = nil
	}
	if err := v.hashAgain(ctx, again); err != nil {
		return err
	}
	for _, uc := range again {
		v.compareUnit(uc)
	}
	for _, uc := range units {
		if uc.done && !unitTainted(uc, objects) {
			v.rep.Units += len(uc.owners)
		}
	}
	return nil
}

// extentLayoutProblem says what is wrong with a file's extents and sums, or "".
func extentLayoutProblem(f *File) string {
	var pos int64
	for i, e := range f.Extents {
		switch {
		case e.Len <= 0:
			return fmt.Sprintf("extent %d has length %d", i, e.Len)
		case e.At < 0:
			return fmt.Sprintf("extent %d has a negative object offset %d", i, e.At)
		case e.Off != pos:
			if e.Off < pos {
				return fmt.Sprintf("the extents do not tile the file: extent %d starts at %d, inside the previous one (which ends at %d)", i, e.Off, pos)
			}
			return fmt.Sprintf("the extents do not tile the file: bytes %d-%d are in no extent", pos, e.Off-1)
		}
		if _, _, ok := repo.BackupIDFromKey(e.Key); !ok {
			return fmt.Sprintf("extent %d points at %q, which is not a backup object", i, e.Key)
		}
		pos += e.Len
	}
	if pos != f.Size {
		if pos < f.Size {
			return fmt.Sprintf("the extents do not tile the file: bytes %d-%d of %d are in no extent", pos, f.Size-1, f.Size)
		}
		return fmt.Sprintf("the extents do not tile the file: they cover %d bytes, the file has %d", pos, f.Size)
	}
	if want := (f.Size + UnitSize - 1) / UnitSize; int64(len(f.Sums)) != want {
		return fmt.Sprintf("%d unit checksums for %d bytes; want %d (one per 8 MiB)", len(f.Sums), f.Size, want)
	}
	return ""
}

// readObject streams one object once, routing each piece to its unit.
func (v *verifier) readObject(ctx context.Context, key string, ou *objectUse) error {
	obj, err := v.r.Get(ctx, key)
	if err != nil {
		switch {
		case errors.Is(err, storage.ErrNotExist):
			ou.bad = ProblemMissing
			return nil
		case errors.Is(err, codec.ErrCorrupt):
			ou.bad = err.Error()
			return nil
		}
		return fmt.Errorf("read %s in %s: %w", key, v.r, err)
	}
	defer obj.Close()
	type state struct {
		direct, skip bool
		buffered     []byte
	}
	states := make([]state, len(ou.refs))
	off, rerr := pieceSweep(obj, make([]byte, sweepBufSize), len(ou.refs),
		func(i int) (int64, int64) { p := ou.refs[i].u.pieces[ou.refs[i].idx]; return p.at, p.n },
		func(i int) {
			st := &states[i]
			st.direct, st.skip = v.startPiece(ou.refs[i])
			if !st.direct && !st.skip {
				st.buffered = make([]byte, 0, ou.refs[i].u.pieces[ou.refs[i].idx].n)
			}
		},
		func(i int, b []byte) {
			switch st := &states[i]; {
			case st.skip:
			case st.direct:
				ou.refs[i].u.h.Write(b)
			default:
				st.buffered = append(st.buffered, b...)
			}
		},
		func(i int) {
			st := &states[i]
			if !st.skip {
				v.finishPiece(ou.refs[i], st.direct, st.buffered)
			}
			st.buffered = nil
		},
		false)
	if rerr != nil {
		if errors.Is(rerr, codec.ErrCorrupt) {
			ou.bad, ou.raw = rerr.Error(), off
			return nil
		}
		return fmt.Errorf("read %s in %s: %w", key, v.r, rerr)
	}
	ou.raw = off
	if rec := ou.record; rec != nil {
		if rec.RawSize != off {
			ou.bad = ProblemObject
			v.problem(Problem{Kind: ProblemObject, Backups: sortedIDs(ou.users), Key: key,
				Message: fmt.Sprintf("backup %s: object %s holds %d bytes, its manifest says %d", objectOwner(key), key, off, rec.RawSize)})
		} else if rec.Sum != "" && !strings.EqualFold(rec.Sum, obj.Sum()) {
			ou.bad = ProblemObject
			v.problem(Problem{Kind: ProblemObject, Backups: sortedIDs(ou.users), Key: key,
				Message: fmt.Sprintf("backup %s: object %s has checksum %s, its manifest says %s (replaced after the backup?)", objectOwner(key), key, obj.Sum(), rec.Sum)})
		}
	}
	return nil
}

// startPiece decides how a piece's bytes are used as they stream: hashed
// at once when it is its unit's next piece, buffered when an earlier piece
// is still to come, skipped when the unit will be hashed again later.
func (v *verifier) startPiece(ref unitPieceRef) (direct, skip bool) {
	u := ref.u
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.fallback || u.done {
		return false, true
	}
	if u.next == ref.idx {
		if u.h == nil {
			u.h = sha256.New()
		}
		return true, false
	}
	n := u.pieces[ref.idx].n
	if v.budget.Add(n) > v.o.BufferBudget {
		v.budget.Add(-n)
		u.fallback = true
		v.budget.Add(-u.held)
		u.pending, u.held = nil, 0
		return false, true
	}
	u.held += n
	return false, false
}

// finishPiece records a piece that streamed whole and hashes every
// buffered piece whose turn has come.
func (v *verifier) finishPiece(ref unitPieceRef, direct bool, buffered []byte) {
	u := ref.u
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.fallback {
		return // the unit is hashed again later; its budget was returned
	}
	if direct {
		u.next++
	} else {
		if u.pending == nil {
			u.pending = map[int][]byte{}
		}
		u.pending[ref.idx] = buffered
	}
	for {
		b, ok := u.pending[u.next]
		if !ok {
			break
		}
		if u.h == nil {
			u.h = sha256.New()
		}
		u.h.Write(b)
		delete(u.pending, u.next)
		u.held -= int64(len(b))
		v.budget.Add(-int64(len(b)))
		u.next++
	}
	if u.next == len(u.pieces) {
		if u.h == nil { // a unit of no piece cannot exist (sizes are positive)
			u.h = sha256.New()
		}
		u.got = hex.EncodeToString(u.h.Sum(nil))
		u.done, u.h = true, nil
	}
}

// sweepBufSize is the read size of object streams.
const sweepBufSize = 256 << 10

// pieceSweep streams r once and hands each of n spans (sorted by raw
// offset, possibly overlapping) its bytes in order: start(i) before the
// first, feed(i, b) for every part, done(i) after the last. With
// untilLast it stops once the last span is done instead of reading to
// EOF. It returns the bytes read and the error that ended the stream
// (nil at EOF, or when it stopped early).
func pieceSweep(r io.Reader, buf []byte, n int, span func(int) (at, n int64),
	start func(int), feed func(int, []byte), done func(int), untilLast bool) (int64, error) {
	type live struct {
		i       int
		at, end int64
	}
	var active []live
	next, finished := 0, 0
	var off int64
	for {
		if untilLast && finished == n {
			return off, nil
		}
		k, err := r.Read(buf)
		if k > 0 {
			c0, c1 := off, off+int64(k)
			for ; next < n; next++ {
				at, ln := span(next)
				if at >= c1 {
					break
				}
				start(next)
				active = append(active, live{i: next, at: at, end: at + ln})
			}
			kept := active[:0]
			for _, a := range active {
				if lo, hi := max(a.at, c0), min(a.end, c1); lo < hi {
					feed(a.i, buf[lo-c0:hi-c0])
				}
				if a.end <= c1 {
					done(a.i)
					finished++
					continue
				}
				kept = append(kept, a)
			}
			active = kept
			off = c1
		}
		if err == io.EOF {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

// hashAgain hashes the units whose pieces did not fit in the budget when
// they arrived out of order. They are assembled in windows of about the
// budget (at least one unit): each window streams the objects its units
// need once, copying the pieces into unit buffers, then hashes them.
// Units are grouped by the objects they need, so an object is streamed
// about once for all its units.
func (v *verifier) hashAgain(ctx context.Context, units []*unitCheck) error {
	sort.Slice(units, func(i, j int) bool {
		a, b := units[i].pieces[0], units[j].pieces[0]
		if a.key != b.key {
			return a.key < b.key
		}
		return a.at < b.at
	})
	window := max(v.o.BufferBudget, UnitSize)
	for i := 0; i < len(units); {
		var size int64
		j := i
		for j < len(units) && (j == i || size+unitLen(units[j]) <= window) {
			size += unitLen(units[j])
			j++
		}
		if err := v.hashWindow(ctx, units[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

func unitLen(u *unitCheck) int64 {
	var n int64
	for _, p := range u.pieces {
		n += p.n
	}
	return n
}

func (v *verifier) hashWindow(ctx context.Context, units []*unitCheck) error {
	type place struct {
		dst     []byte
		at      int64
		written int
	}
	perKey := map[string][]*place{}
	bufs := make([][]byte, len(units))
	for ui, u := range units {
		bufs[ui] = make([]byte, unitLen(u))
		var off int64
		for _, p := range u.pieces {
			perKey[p.key] = append(perKey[p.key], &place{dst: bufs[ui][off : off+p.n], at: p.at})
			off += p.n
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.o.Jobs)
	for key, places := range perKey {
		sort.Slice(places, func(i, j int) bool { return places[i].at < places[j].at })
		g.Go(func() error {
			obj, err := v.r.Get(gctx, key)
			if err != nil {
				return fmt.Errorf("read %s in %s again: %w", key, v.r, err)
			}
			defer obj.Close()
			_, err = pieceSweep(obj, make([]byte, sweepBufSize), len(places),
				func(i int) (int64, int64) { return places[i].at, int64(len(places[i].dst)) },
				func(int) {},
				func(i int, b []byte) { places[i].written += copy(places[i].dst[places[i].written:], b) },
				func(int) {},
				true)
			if err != nil {
				return fmt.Errorf("read %s in %s again: %w", key, v.r, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for ui, u := range units {
		sum := sha256.Sum256(bufs[ui])
		u.got, u.done = hex.EncodeToString(sum[:]), true
	}
	return nil
}

func (v *verifier) compareUnit(u *unitCheck) {
	if u.got == u.want {
		return
	}
	for _, o := range u.owners {
		lo := int64(o.unit) * UnitSize
		hi := min(lo+UnitSize, o.size) - 1
		v.problem(Problem{Kind: ProblemContent, Backups: []string{o.backup},
			Message: fmt.Sprintf("backup %s: file %s: bytes %d-%d do not match the manifest (SHA-256 %s, manifest %s)",
				o.backup, o.path, lo, hi, u.got, u.want)})
	}
}

// unitTainted reports whether a unit depends on an object that could not be
// read whole, or on bytes past an object's end: the object's problem is
// reported, the unit's would only repeat it.
func unitTainted(u *unitCheck, objects map[string]*objectUse) bool {
	for _, p := range u.pieces {
		ou := objects[p.key]
		if ou.bad != "" && ou.bad != ProblemObject || p.at+p.n > ou.raw {
			return true
		}
	}
	return false
}

// objectProblems reports an object that is missing or corrupt, naming the
// files that need it.
func (v *verifier) objectProblems(ctx context.Context, key string, ou *objectUse, selected []*Manifest, known map[string]bool) {
	users := sortedIDs(ou.users)
	owner := objectOwner(key)
	if len(users) == 0 { // an object of the backup's that no file points at
		users = []string{owner}
	}
	if ou.record == nil && known[owner] && ou.bad != ProblemMissing {
		v.problem(Problem{Kind: ProblemLayout, Backups: users, Key: key,
			Message: fmt.Sprintf("backup %s: object %s is not listed in the objects of its manifest", owner, key)})
	}
	var what, kind string
	switch ou.bad {
	case "", ProblemObject:
		return
	case ProblemMissing:
		// A backup deleted while verify ran takes its objects with it.
		var stillThere []string
		for _, id := range users {
			if _, err := v.r.Store().Stat(ctx, repo.BackupManifestKey(id)); !errors.Is(err, storage.ErrNotExist) {
				stillThere = append(stillThere, id)
			}
		}
		if len(users) > 0 && len(stillThere) == 0 {
			v.note(fmt.Sprintf("backups %s were deleted while verify ran", strings.Join(users, ", ")))
			return
		}
		kind, what = ProblemMissing, "is missing (the repository lost it)"
	default:
		kind, what = ProblemCorrupt, "is corrupt ("+ou.bad+")"
	}
	msg := fmt.Sprintf("backup %s: object %s %s", owner, key, what)
	for _, m := range selected {
		if !ou.users[m.ID] {
			continue
		}
		var files []string
		for _, f := range m.Files {
			for _, e := range f.Extents {
				if e.Key == key {
					files = append(files, f.Path)
					break
				}
			}
		}
		list := strings.Join(files[:min(len(files), maxFilesInAProblem)], ", ")
		if len(files) > maxFilesInAProblem {
			list += fmt.Sprintf(" and %d more", len(files)-maxFilesInAProblem)
		}
		msg += fmt.Sprintf("; backup %s needs it for %d file(s): %s", m.ID, len(files), list)
	}
	v.problem(Problem{Kind: kind, Backups: users, Key: key, Message: msg})
}

func objectOwner(key string) string {
	if id, _, ok := repo.BackupIDFromKey(key); ok {
		return id
	}
	return "?"
}

func sortedIDs(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// walListing is the archive's listing, by kind.
type walListing struct {
	segments map[pg.TimeLineID]map[pg.SegNo]storage.ObjectInfo
	others   []walListedObject // .partial and .backup files
	history  map[pg.TimeLineID]storage.ObjectInfo
	newest   pg.TimeLineID
}

type walListedObject struct {
	info  storage.ObjectInfo
	segNo pg.SegNo
}

func (w *walListing) has(tli pg.TimeLineID, s pg.SegNo) bool {
	_, ok := w.segments[tli][s]
	return ok
}

func (v *verifier) listWAL(ctx context.Context, size pg.WALSegmentSize) (*walListing, error) {
	w := &walListing{segments: map[pg.TimeLineID]map[pg.SegNo]storage.ObjectInfo{}, history: map[pg.TimeLineID]storage.ObjectInfo{}}
	err := v.r.Store().List(ctx, repo.WALPrefix, func(oi storage.ObjectInfo) error {
		f, err := pg.ParseWALFileName(path.Base(oi.Key), size)
		if err != nil {
			return nil
		}
		w.newest = max(w.newest, f.TLI)
		switch f.Kind {
		case pg.KindSegment:
			if w.segments[f.TLI] == nil {
				w.segments[f.TLI] = map[pg.SegNo]storage.ObjectInfo{}
			}
			w.segments[f.TLI][f.SegNo] = oi
		case pg.KindHistory:
			w.history[f.TLI] = oi
		default:
			w.others = append(w.others, walListedObject{info: oi, segNo: f.SegNo})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list WAL in %s: %w", v.r, err)
	}
	return w, nil
}

// recoveryPath says which timeline's copy of each segment recovery to the
// newest timeline reads: the timeline that wrote the segment's last byte.
type recoveryPath struct {
	newest  pg.TimeLineID
	entries []pg.HistoryEntry
	known   bool // false when the newest timeline's history is missing
	size    pg.WALSegmentSize
}

func (t recoveryPath) at(s pg.SegNo) pg.TimeLineID {
	last := t.size.StartLSN(s) + pg.LSN(t.size.Bytes()-1)
	return pg.TimelineAt(t.entries, t.newest, last)
}

func (v *verifier) readHistory(ctx context.Context, w *walListing, size pg.WALSegmentSize) (recoveryPath, error) {
	t := recoveryPath{newest: w.newest, size: size, known: true}
	if w.newest <= 1 {
		return t, nil
	}
	oi, ok := w.history[w.newest]
	if !ok {
		t.known = false
		v.problem(Problem{Kind: ProblemHistory, Message: fmt.Sprintf("timeline %d: its history file %s is missing: recovery cannot follow it",
			w.newest, pg.HistoryFileName(w.newest))})
		return t, nil
	}
	obj, err := v.r.Get(ctx, oi.Key)
	if err != nil {
		return t, fmt.Errorf("read %s in %s: %w", oi.Key, v.r, err)
	}
	defer obj.Close()
	entries, err := pg.ParseHistory(obj)
	if err == nil {
		err = pg.ValidateHistory(entries, w.newest)
	}
	if err != nil {
		if !errors.Is(err, codec.ErrCorrupt) && (storage.IsRetryable(err) || ctx.Err() != nil) {
			return t, err
		}
		t.known = false
		kind := ProblemHistory
		if errors.Is(err, codec.ErrCorrupt) {
			kind = ProblemWALCorrupt
		}
		v.problem(Problem{Kind: kind, Key: oi.Key, Message: fmt.Sprintf("timeline %d: history file %s: %v", w.newest, oi.Key, err)})
		return t, nil
	}
	t.entries = entries
	for _, e := range entries {
		if e.TLI > 1 {
			if _, ok := w.history[e.TLI]; !ok {
				v.problem(Problem{Kind: ProblemHistory, Message: fmt.Sprintf("timeline %d: its history file %s is missing",
					e.TLI, pg.HistoryFileName(e.TLI))})
			}
		}
	}
	return t, nil
}

// present reports whether segment s is archived where recovery along the
// path looks for it (any timeline when the path is unknown).
func (t recoveryPath) present(w *walListing, s pg.SegNo) (pg.TimeLineID, bool) {
	if t.known {
		tli := t.at(s)
		return tli, w.has(tli, s)
	}
	for tli := t.newest; tli >= 1; tli-- {
		if w.has(tli, s) {
			return tli, true
		}
	}
	return t.newest, false
}

func (v *verifier) checkWAL(ctx context.Context, selected []*Manifest) error {
	size, err := v.r.Metadata().SegmentSize()
	if err != nil {
		return err
	}
	w, err := v.listWAL(ctx, size)
	if err != nil {
		return err
	}
	rp, err := v.readHistory(ctx, w, size)
	if err != nil {
		return err
	}

	// Every backup's own WAL, whatever --wal says: without it the backup
	// cannot be restored.
	first, haveFirst := pg.SegNo(0), false
	for _, m := range selected {
		tli, s0, err1 := pg.ParseSegmentName(m.StartWAL, size)
		_, s1, err2 := pg.ParseSegmentName(m.StopWAL, size)
		if err1 != nil || err2 != nil || s1 < s0 {
			v.problem(Problem{Kind: ProblemManifest, Backups: []string{m.ID},
				Message: fmt.Sprintf("backup %s: its WAL range %q..%q is not valid", m.ID, m.StartWAL, m.StopWAL)})
			continue
		}
		if !haveFirst || s0 < first {
			first, haveFirst = s0, true
		}
		var missing []pg.SegNo
		for s := s0; s <= s1; s++ {
			if w.has(tli, s) {
				continue
			}
			if _, ok := rp.present(w, s); !ok {
				missing = append(missing, s)
			}
		}
		for _, r := range segRuns(missing) {
			v.problem(Problem{Kind: ProblemBackupWAL, Backups: []string{m.ID},
				Message: fmt.Sprintf("backup %s: WAL %s missing: the backup cannot be restored",
					m.ID, segRangeText(tli, r, size))})
		}
	}
	if !v.o.WAL {
		return nil
	}

	// Continuity from the oldest verified backup's start (or the oldest
	// segment) to the newest segment on the recovery path.
	wc := &WALCheck{Timelines: []pg.TimeLineID{}}
	v.rep.WAL = wc
	var lo, last pg.SegNo
	onPath := false
	for tli, segs := range w.segments {
		for s := range segs {
			if ptli, _ := rp.present(w, s); rp.known && ptli != tli {
				continue // a branch recovery does not follow
			}
			if !onPath || s < lo {
				lo = s
			}
			if !onPath || s > last {
				last = s
			}
			onPath = true
		}
	}
	if !haveFirst {
		first = lo
	}
	if !onPath || last < first {
		if !onPath {
			v.note("the archive holds no WAL segment on the timelines recovery follows")
		}
		return v.rereadWAL(ctx, w, first, first, onPath)
	}
	var missing []pg.SegNo
	var missingTLI []pg.TimeLineID
	seenTLI := map[pg.TimeLineID]bool{}
	for s := first; s <= last; s++ {
		tli, ok := rp.present(w, s)
		if !seenTLI[tli] {
			seenTLI[tli] = true
			wc.Timelines = append(wc.Timelines, tli)
		}
		wc.Segments++
		if !ok {
			missing = append(missing, s)
			missingTLI = append(missingTLI, tli)
		}
	}
	t0, _ := rp.present(w, first)
	t1, _ := rp.present(w, last)
	wc.From, wc.To = pg.SegmentName(t0, first, size), pg.SegmentName(t1, last, size)
	wc.Missing = len(missing)
	// Group the gaps by timeline and consecutive numbers.
	for i := 0; i < len(missing); {
		j := i
		for j+1 < len(missing) && missing[j+1] == missing[j]+1 && missingTLI[j+1] == missingTLI[i] {
			j++
		}
		r := [2]pg.SegNo{missing[i], missing[j]}
		var affected []string
		for _, m := range selected {
			if _, s1, err := pg.ParseSegmentName(m.StopWAL, size); err == nil && s1 < r[0] {
				affected = append(affected, m.ID)
			}
		}
		msg := fmt.Sprintf("timeline %d: %s missing", missingTLI[i], segRangeText(missingTLI[i], r, size))
		if len(affected) > 0 {
			msg += " (point-in-time recovery from " + strings.Join(affected, ", ") + " stops before it)"
		}
		v.problem(Problem{Kind: ProblemWALGap, Message: msg})
		i = j + 1
	}
	return v.rereadWAL(ctx, w, first, last, true)
}

// rereadWAL reads every WAL file in [first, last] and every history file
// whole, checking their checksums.
func (v *verifier) rereadWAL(ctx context.Context, w *walListing, first, last pg.SegNo, haveRange bool) error {
	var infos []storage.ObjectInfo
	for _, oi := range w.history {
		infos = append(infos, oi)
	}
	if haveRange {
		for _, segs := range w.segments {
			for s, oi := range segs {
				if s >= first && s <= last {
					infos = append(infos, oi)
				}
			}
		}
		for _, o := range w.others {
			if o.segNo >= first && o.segNo <= last {
				infos = append(infos, o.info)
			}
		}
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.o.Jobs)
	var n, bytes atomic.Int64
	for _, oi := range infos {
		g.Go(func() error {
			obj, err := v.r.Get(gctx, oi.Key)
			if errors.Is(err, storage.ErrNotExist) {
				return nil // removed since the listing (backup-delete)
			}
			if err != nil && !errors.Is(err, codec.ErrCorrupt) {
				return fmt.Errorf("read %s in %s: %w", oi.Key, v.r, err)
			}
			var read int64
			if err == nil {
				read, err = io.Copy(io.Discard, obj)
				obj.Close()
			}
			if err != nil {
				if !errors.Is(err, codec.ErrCorrupt) {
					return fmt.Errorf("read %s in %s: %w", oi.Key, v.r, err)
				}
				v.problem(Problem{Kind: ProblemWALCorrupt, Key: oi.Key,
					Message: fmt.Sprintf("WAL file %s is corrupt (%v)", oi.Key, err)})
			}
			n.Add(1)
			bytes.Add(read)
			return nil
		})
	}
	err := g.Wait()
	v.rep.WAL.Objects, v.rep.WAL.Bytes = int(n.Load()), bytes.Load()
	return err
}

// segRuns groups sorted segment numbers into runs.
func segRuns(s []pg.SegNo) [][2]pg.SegNo {
	var out [][2]pg.SegNo
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		out = append(out, [2]pg.SegNo{s[i], s[j]})
		i = j + 1
	}
	return out
}

func segRangeText(tli pg.TimeLineID, r [2]pg.SegNo, size pg.WALSegmentSize) string {
	if r[0] == r[1] {
		return pg.SegmentName(tli, r[0], size)
	}
	return pg.SegmentName(tli, r[0], size) + ".." + pg.SegmentName(tli, r[1], size)
}
