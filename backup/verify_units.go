package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"sort"
	"sync"

	"golang.org/x/sync/errgroup"
)

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
