package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

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
