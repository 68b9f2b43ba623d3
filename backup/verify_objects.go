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

// objectPlan is what checkBackups reads: every object the verified
// backups wrote or point at, and the units of their files.
type objectPlan struct {
	records map[string]*Object // the manifests' records, by key
	objects map[string]*objectUse
	units   map[string]*unitCheck // by content and pieces
	keys    []string              // the objects in reading order
}

// checkBackups reads every object the selected backups need once, checks
// it against its record, and hashes every unit of their files again. A
// file or object record that breaks the manifest rules was reported when
// its manifest was read and is left alone here.
func (v *verifier) checkBackups(ctx context.Context, selected []*Manifest) error {
	p := &objectPlan{records: map[string]*Object{}, objects: map[string]*objectUse{}, units: map[string]*unitCheck{}}
	known, err := v.addRecords(ctx, p, selected)
	if err != nil {
		return err
	}
	for _, m := range selected {
		for _, ob := range m.Objects {
			if !v.damaged[m.ID].objects[ob.Key] {
				p.use(ob.Key)
			}
		}
		for fi := range m.Files {
			if !v.damaged[m.ID].files[fi] {
				p.addFile(m.ID, &m.Files[fi])
			}
		}
	}
	p.order()
	if err := v.readObjects(ctx, p); err != nil {
		return err
	}
	for _, k := range p.keys {
		v.objectProblems(ctx, k, p.objects[k], selected, known)
	}
	v.extentsPastEnd(selected, p.objects)
	return v.checkUnits(ctx, p)
}

// addRecords adds to p the selected backups' records of the objects they
// wrote, and their ancestors' (whose manifests are read for it). It
// returns the backups whose manifests were read: an object of theirs
// without a record is a manifest problem.
func (v *verifier) addRecords(ctx context.Context, p *objectPlan, selected []*Manifest) (map[string]bool, error) {
	known := map[string]bool{}
	add := func(m *Manifest) {
		known[m.ID] = true
		for i := range m.Objects {
			if !v.damaged[m.ID].objects[m.Objects[i].Key] {
				p.records[m.Objects[i].Key] = &m.Objects[i]
			}
		}
	}
	for _, m := range selected {
		add(m)
	}
	tried := map[string]bool{}
	for _, m := range selected {
		for _, dep := range append(m.DependsOn(), m.Parent) {
			if dep == "" || known[dep] || tried[dep] {
				continue
			}
			tried[dep] = true
			pm, err := v.readManifest(ctx, dep, false)
			if err != nil {
				if !isNoBackup(err) && !errors.Is(err, codec.ErrCorrupt) {
					return nil, err
				}
				v.problem(Problem{Kind: ProblemManifest, Backups: []string{m.ID}, Key: repo.BackupManifestKey(dep),
					Message: fmt.Sprintf("backup %s: it depends on backup %s, whose manifest cannot be read (%v): it cannot be restored", m.ID, dep, err)})
				continue
			}
			add(pm)
		}
	}
	return known, nil
}

// use returns what is known of the object key, adding it to the plan.
func (p *objectPlan) use(key string) *objectUse {
	u := p.objects[key]
	if u == nil {
		u = &objectUse{record: p.records[key], users: map[string]bool{}}
		p.objects[key] = u
	}
	return u
}

// addFile adds the units of file f of backup id: the pieces of each unit
// and the objects they are in. Identical units (same checksum, same
// pieces) of several backups are one check.
func (p *objectPlan) addFile(id string, f *File) {
	for _, e := range f.Extents {
		p.use(e.Key).users[id] = true
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
		k := unitKey(f.Sums[u], ps)
		uc := p.units[k]
		if uc == nil {
			uc = &unitCheck{want: f.Sums[u], pieces: ps}
			p.units[k] = uc
			for i, pc := range ps {
				ou := p.use(pc.key)
				ou.refs = append(ou.refs, unitPieceRef{u: uc, idx: i})
			}
		}
		uc.owners = append(uc.owners, unitOwner{backup: id, path: f.Path, unit: u, size: f.Size})
	}
}

// unitKey identifies a unit by its checksum and where its pieces are.
func unitKey(sum string, ps []unitPiece) string {
	var kb strings.Builder
	kb.WriteString(sum)
	for _, p := range ps {
		kb.WriteByte('|')
		kb.WriteString(p.key)
		kb.WriteByte('@')
		kb.WriteString(strconv.FormatInt(p.at, 10))
		kb.WriteByte('+')
		kb.WriteString(strconv.FormatInt(p.n, 10))
	}
	return kb.String()
}

// order sorts every object's pieces by offset and the objects in reading
// order: newest backups' objects first, so an incremental's pieces of a
// unit (its changed pages) are the ones that wait in the buffer for their
// turn, not its parent's unchanged bulk.
func (p *objectPlan) order() {
	p.keys = make([]string, 0, len(p.objects))
	for k, ou := range p.objects {
		p.keys = append(p.keys, k)
		sort.Slice(ou.refs, func(i, j int) bool {
			return ou.refs[i].u.pieces[ou.refs[i].idx].at < ou.refs[j].u.pieces[ou.refs[j].idx].at
		})
	}
	sort.Slice(p.keys, func(i, j int) bool {
		oi, oj := objectOwner(p.keys[i]), objectOwner(p.keys[j])
		if oi != oj {
			return oi > oj
		}
		return p.keys[i] < p.keys[j]
	})
}

// readObjects reads every object of the plan once, o.Jobs at a time.
func (v *verifier) readObjects(ctx context.Context, p *objectPlan) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.o.Jobs)
	var nObjects atomic.Int64
	var nBytes atomic.Int64
	for _, k := range p.keys {
		ou := p.objects[k]
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
	return nil
}

// extentsPastEnd reports extents that point past the end of an object
// read whole.
func (v *verifier) extentsPastEnd(selected []*Manifest, objects map[string]*objectUse) {
	for _, m := range selected {
		for fi, f := range m.Files {
			if v.damaged[m.ID].files[fi] {
				continue
			}
			for _, e := range f.Extents {
				ou := objects[e.Key]
				if ou != nil && ou.bad == "" && e.At+e.Len > ou.raw {
					v.problem(Problem{Kind: ProblemLayout, Backups: []string{m.ID}, Key: e.Key,
						Message: fmt.Sprintf("backup %s: file %s: bytes %d-%d are said to be at %d-%d of object %s, which holds only %d bytes",
							m.ID, f.Path, e.Off, e.Off+e.Len-1, e.At, e.At+e.Len-1, e.Key, ou.raw)})
				}
			}
		}
	}
}

// checkUnits compares the units hashed as their objects streamed with the
// manifests, after hashing again those that did not fit in the budget.
func (v *verifier) checkUnits(ctx context.Context, p *objectPlan) error {
	var again []*unitCheck
	for _, uc := range p.units {
		if unitTainted(uc, p.objects) {
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
	for _, uc := range p.units {
		if uc.done && !unitTainted(uc, p.objects) {
			v.rep.Units += len(uc.owners)
		}
	}
	return nil
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
