package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/storage"
)

// bufSize is the buffer each worker streams through: memory stays at
// jobs x bufSize plus the decoders' own buffers, whatever the objects'
// sizes.
const bufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// progressEvery is the least time between two Progress calls.
const progressEvery = 200 * time.Millisecond

// meter counts a phase's bytes and reports them.
type meter struct {
	phase string
	total int64
	done  atomic.Int64
	start time.Time
}

func (m *meter) snapshot() Progress {
	return Progress{Phase: m.phase, Done: m.done.Load(), Total: m.total, Elapsed: time.Since(m.start)}
}

// phase runs fn, calling the Progress callback while it runs and once at
// its end.
func (rs *restorer) phase(name string, total int64, fn func(*meter) error) error {
	m := &meter{phase: name, total: total, start: time.Now()}
	if rs.o.Progress == nil || total == 0 {
		// A phase with nothing to do is not shown ("verify 0 B / 0 B").
		return fn(m)
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				rs.o.Progress(m.snapshot())
			}
		}
	}()
	err := fn(m)
	close(stop)
	<-stopped
	rs.o.Progress(m.snapshot())
	return err
}

// unitTask is one unit of one file to hash.
type unitTask struct {
	it *item
	i  int
}

// hashUnits hashes the given units of their files (at it.path) with the
// configured parallelism and calls check with each unit's hex SHA-256 and
// how many bytes were there.
func (rs *restorer) hashUnits(ctx context.Context, m *meter, tasks []unitTask, check func(t unitTask, sum string, n int64) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rs.jobs)
	for _, t := range tasks {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			off, end := unitSpan(t.i, t.it.f.Size)
			sum, n, err := hashRange(gctx, t.it.path, off, end-off)
			if err != nil {
				return err
			}
			m.done.Add(end - off)
			return check(t, sum, n)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// hashRange returns the hex SHA-256 of up to n bytes of file p from off,
// and how many bytes there were.
func hashRange(ctx context.Context, p string, off, n int64) (string, int64, error) {
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	h := sha256.New()
	got, err := io.CopyBuffer(h, io.NewSectionReader(f, off, n), *bp)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), got, nil
}

// compare looks at what a delta restore finds where each file goes and
// marks the units that differ from the backup.
func (rs *restorer) compare(ctx context.Context) error {
	var tasks []unitTask
	var total int64
	for _, it := range rs.p.items {
		fi, err := os.Lstat(it.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return err
		case !fi.Mode().IsRegular():
			if err := rs.remove(it.path); err != nil {
				return err
			}
			continue
		}
		it.existed, it.localSize = true, fi.Size()
		n := units(it.f.Size)
		it.bad = make([]bool, n)
		for i := 0; i < n; i++ {
			off, end := unitSpan(i, it.f.Size)
			if end > it.localSize {
				it.bad[i] = true // short: cannot match
				continue
			}
			tasks = append(tasks, unitTask{it, i})
			total += end - off
		}
	}
	return rs.phase("compare", total, func(m *meter) error {
		return rs.hashUnits(ctx, m, tasks, func(t unitTask, sum string, n int64) error {
			off, end := unitSpan(t.i, t.it.f.Size)
			if n != end-off || sum != t.it.f.Sums[t.i] {
				t.it.bad[t.i] = true
			}
			return nil
		})
	})
}

// prepareFiles takes files from order until it is empty: it creates every
// file that gets bytes from the repository at its final size and cuts kept
// files to size (the extents tile every file, so every byte of a unit a
// delta restore rewrites is written again). It runs while fetch writes the
// files already prepared, rather than before: creating files is kernel
// work, serialized by the directory's lock, and on a filesystem without
// a journal it is slow just after files were deleted (ext4 then skips
// every inode freed in the last minute), up to a third of a restore's
// time. A file whole from the start goes to the syncers.
func (rs *restorer) prepareFiles(ctx context.Context, order <-chan *item) error {
	for it := range order {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := prepareFile(it); err != nil {
			return err
		}
		close(it.ready)
		if it.pending.Load() == 0 {
			rs.syncs.settled(it) // kept or empty: already whole
		}
	}
	return nil
}

func prepareFile(it *item) error {
	if !it.fetched() {
		if it.localSize != it.f.Size {
			return os.Truncate(it.path, it.f.Size)
		}
		return nil
	}
	f, err := os.OpenFile(it.path, os.O_WRONLY|os.O_CREATE, fileMode(it.f.Mode, 0o600))
	if err != nil {
		return fmt.Errorf("create %s: %w", it.path, err)
	}
	err = f.Truncate(it.f.Size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("prepare %s: %w", it.path, err)
	}
	return nil
}

// piece is a part of an extent to write: n bytes at raw offset at of an
// object, to file offset off of it.
type piece struct {
	it         *item
	off, n, at int64
}

// pieces groups what must be fetched by object key.
func (rs *restorer) pieces() (map[string][]piece, int64) {
	byKey := map[string][]piece{}
	var total int64
	for _, it := range rs.p.items {
		if !it.fetched() {
			continue
		}
		spans := it.spans()
		for _, e := range it.f.Extents {
			for _, sp := range spans {
				lo, hi := max(e.Off, sp[0]), min(e.Off+e.Len, sp[1])
				if lo >= hi {
					continue
				}
				byKey[e.Key] = append(byKey[e.Key], piece{it: it, off: lo, n: hi - lo, at: e.At + lo - e.Off})
				total += hi - lo
			}
		}
	}
	for _, ps := range byKey {
		sort.Slice(ps, func(i, j int) bool { return ps[i].at < ps[j].at })
	}
	return byKey, total
}

// castagnoli is the table of backup.File.CRCs (CRC-32C).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// unitHash checks one unit while it is written: when its bytes arrive in
// file order (a full backup's always do: a unit lives in one object), the
// unit is verified against the manifest without reading it back: by its
// CRC-32C when the manifest has them (File.CRCs), else by its SHA-256. A
// unit whose bytes come out of order (an incremental's pages from several
// objects) is left to verify's read-back.
type unitHash struct {
	mu      sync.Mutex
	started bool // the unit's first byte came, at its start
	h       hash.Hash
	crc     uint32
	useCRC  bool
	next    int64
	broken  bool
	done    bool
}

// stream feeds the bytes written at file offset off to the units they
// belong to, and fails as soon as a completed unit does not match.
func (rs *restorer) stream(it *item, off int64, b []byte) error {
	for len(b) > 0 {
		i := int(off / backup.UnitSize)
		uOff, uEnd := unitSpan(i, it.f.Size)
		n := min(int64(len(b)), uEnd-off)
		u := &it.streamed[i]
		u.mu.Lock()
		err := func() error {
			if u.broken || u.done {
				return nil
			}
			// started, not h != nil: a unit checked by CRC-32C has no
			// hash, and would be restarted (and broken) by each write.
			if !u.started {
				if off != uOff {
					u.broken = true
					return nil
				}
				u.started, u.next = true, uOff
				if u.useCRC = len(it.f.CRCs) == len(it.f.Sums); !u.useCRC {
					u.h = sha256.New()
				}
			}
			if off != u.next {
				u.broken, u.h = true, nil
				return nil
			}
			if u.useCRC {
				u.crc = crc32.Update(u.crc, castagnoli, b[:n])
			} else {
				u.h.Write(b[:n])
			}
			u.next += n
			if u.next < uEnd {
				return nil
			}
			u.done = true
			if u.useCRC {
				if u.crc != it.f.CRCs[i] {
					return fmt.Errorf("restored file %s does not match backup %s at bytes %d..%d (CRC-32C %08x, manifest %08x): the backup's objects and manifest disagree: %w",
						it.f.Path, rs.m.ID, uOff, uEnd, u.crc, it.f.CRCs[i], codec.ErrCorrupt)
				}
				return nil
			}
			sum := hex.EncodeToString(u.h.Sum(nil))
			u.h = nil
			if sum != it.f.Sums[i] {
				return fmt.Errorf("restored file %s does not match backup %s at bytes %d..%d (SHA-256 %s, manifest %s): the backup's objects and manifest disagree: %w",
					it.f.Path, rs.m.ID, uOff, uEnd, sum, it.f.Sums[i], codec.ErrCorrupt)
			}
			return nil
		}()
		u.mu.Unlock()
		if err != nil {
			return err
		}
		off += n
		b = b[n:]
	}
	return nil
}

// fetch prepares the files and downloads every object that holds needed
// bytes, jobs at a time, each once from its start, and writes its pieces
// into place; the files are settled (made durable) as they become whole.
func (rs *restorer) fetch(ctx context.Context) error {
	for _, it := range rs.p.items {
		it.ready = make(chan struct{})
		if !it.fetched() {
			rs.filesKept++
			continue
		}
		rs.filesFetched++
		it.streamed = make([]unitHash, units(it.f.Size))
	}
	byKey, total := rs.pieces()
	for _, ps := range byKey {
		for _, pc := range ps {
			pc.it.pending.Add(pc.n)
		}
	}
	// A file is made durable as soon as it is whole, by syncers working
	// while the next objects are fetched, and its writeback starts every
	// flushEvery bytes: the disk writes while the CPU decodes, instead of
	// everything waiting for the flushes at the end.
	size := len(rs.p.items)
	for _, ps := range byKey {
		for _, pc := range ps {
			size += int(pc.n/flushEvery) + 1
		}
	}
	rs.syncs = rs.startSyncers(size)
	defer rs.syncs.stop()
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rs.log.Info("fetching", "objects", len(keys), "bytes", total)
	return rs.phase("fetch", total, func(m *meter) error {
		g, gctx := errgroup.WithContext(ctx)
		order := rs.creationOrder(keys, byKey)
		for range rs.jobs {
			g.Go(func() error { return rs.prepareFiles(gctx, order) })
		}
		todo := make(chan string, len(keys))
		for _, k := range keys {
			todo <- k
		}
		close(todo)
		for range rs.jobs {
			g.Go(func() error {
				for k := range todo {
					if err := gctx.Err(); err != nil {
						return err
					}
					if err := rs.fetchObject(gctx, m, k, byKey[k]); err != nil {
						return err
					}
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		return ctx.Err()
	})
}

// creationOrder queues the files in the order fetch first writes them,
// then those it does not write (kept, empty).
func (rs *restorer) creationOrder(keys []string, byKey map[string][]piece) <-chan *item {
	out := make(chan *item, len(rs.p.items))
	defer close(out)
	seen := make(map[*item]bool, len(rs.p.items))
	for _, k := range keys {
		for _, pc := range byKey[k] {
			if !seen[pc.it] {
				seen[pc.it] = true
				out <- pc.it
			}
		}
	}
	for _, it := range rs.p.items {
		if !seen[it] {
			out <- it
		}
	}
	return out
}

// fetchObject streams object key through the verifying decoder and
// writes the pieces (sorted by raw offset) that intersect each chunk.
// Bytes no piece needs are read and dropped: the checksum covers the
// whole object, and only its end says the bytes were right.
func (rs *restorer) fetchObject(ctx context.Context, m *meter, key string, ps []piece) error {
	obj, err := rs.r.Get(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		return fmt.Errorf("backup %s needs object %s, which %s does not have: the backup is damaged (see walferry verify)", rs.m.ID, key, rs.r)
	}
	if err != nil {
		return fmt.Errorf("backup %s: get object %s from %s: %w", rs.m.ID, key, rs.r, err)
	}
	defer obj.Close()
	rs.objectsRead.Add(1)
	// Two buffers: while the units of one are hashed on another core, the
	// next is decoded and written.
	bp0, bp1 := bufPool.Get().(*[]byte), bufPool.Get().(*[]byte)
	defer bufPool.Put(bp0)
	defer bufPool.Put(bp1)
	bufs := [2][]byte{*bp0, *bp1}
	type hashJob struct {
		it  *item
		off int64
		b   []byte
	}
	var hashed chan error // the previous buffer's hashing, nil when none
	waitHash := func() error {
		if hashed == nil {
			return nil
		}
		err := <-hashed
		hashed = nil
		return err
	}
	defer waitHash() // before the buffers go back to the pool

	type open struct {
		piece
		f       *os.File
		flushed int64 // file offset up to which writeback was asked for
	}
	var active []open
	defer func() {
		for _, a := range active {
			a.f.Close()
		}
	}()
	next := 0
	var pos int64
	for i := 0; ; i ^= 1 {
		buf := bufs[i]
		n, rerr := obj.Read(buf)
		lo, hi := pos, pos+int64(n)
		pos = hi
		rs.bytesRead.Add(int64(n))
		for next < len(ps) && ps[next].at < hi {
			select {
			case <-ps[next].it.ready:
			case <-ctx.Done():
				return ctx.Err()
			}
			f, err := os.OpenFile(ps[next].it.path, os.O_WRONLY, 0)
			if err != nil {
				return fmt.Errorf("open %s: %w", ps[next].it.path, err)
			}
			active = append(active, open{piece: ps[next], f: f, flushed: ps[next].off})
			next++
		}
		var jobs []hashJob
		kept := active[:0]
		for i := range active {
			a := &active[i]
			s, e := max(a.at, lo), min(a.at+a.n, hi)
			if s < e {
				if _, err := a.f.WriteAt(buf[s-lo:e-lo], a.off+s-a.at); err != nil {
					a.f.Close()
					return err // names the file: "write <path>: no space left on device"
				}
				if a.it.streamed != nil {
					jobs = append(jobs, hashJob{a.it, a.off + s - a.at, buf[s-lo : e-lo]})
				}
				rs.bytesFetched.Add(e - s)
				m.done.Add(e - s)
				// The queue has room for every request: these never block.
				end := a.off + e - a.at
				if a.it.pending.Add(-(e - s)) == 0 {
					rs.syncs.settled(a.it)
				} else if end-a.flushed >= flushEvery || e == a.at+a.n && end > a.flushed {
					rs.syncs.written(a.it, a.flushed, end-a.flushed)
					a.flushed = end
				}
			}
			if a.at+a.n <= hi {
				if err := a.f.Close(); err != nil {
					return fmt.Errorf("write %s: %w", a.it.path, err)
				}
				continue
			}
			kept = append(kept, *a)
		}
		active = kept
		// The other buffer's hashing must end before it is read into
		// again; this one's starts now.
		if err := waitHash(); err != nil {
			return err
		}
		if len(jobs) > 0 {
			done := make(chan error, 1)
			hashed = done
			go func() {
				for _, j := range jobs {
					if err := rs.stream(j.it, j.off, j.b); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("backup %s: %w", rs.m.ID, rerr)
		}
	}
	if err := waitHash(); err != nil {
		return err
	}
	if next < len(ps) || len(active) > 0 {
		want := ps[len(ps)-1].at + ps[len(ps)-1].n
		return fmt.Errorf("backup %s: object %s in %s has %d bytes, but the manifest needs bytes up to %d: %w",
			rs.m.ID, key, rs.r, pos, want, codec.ErrCorrupt)
	}
	return nil
}

// verify reads back every unit written from the repository that was not
// checked while it was written, and compares it with the manifest's
// checksum; then it settles the files the syncers did not.
func (rs *restorer) verify(ctx context.Context) error {
	var tasks []unitTask
	var total int64
	for _, it := range rs.p.items {
		if !it.fetched() {
			continue
		}
		for i := 0; i < units(it.f.Size); i++ {
			if it.streamed != nil && it.streamed[i].done {
				continue // verified while it was written
			}
			if it.needs(i) {
				off, end := unitSpan(i, it.f.Size)
				tasks = append(tasks, unitTask{it, i})
				total += end - off
			}
		}
	}
	err := rs.phase("verify", total, func(m *meter) error {
		return rs.hashUnits(ctx, m, tasks, func(t unitTask, sum string, n int64) error {
			off, end := unitSpan(t.i, t.it.f.Size)
			if n != end-off || sum != t.it.f.Sums[t.i] {
				return fmt.Errorf("restored file %s does not match backup %s at bytes %d..%d (SHA-256 %s, manifest %s): the backup's objects and manifest disagree: %w",
					t.it.f.Path, rs.m.ID, off, end, sum, t.it.f.Sums[t.i], codec.ErrCorrupt)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, it := range rs.p.items {
		if it.settleErr != nil {
			return it.settleErr
		}
	}
	// Fetch gives every file to the syncers; one it missed would be
	// settled here rather than left without its fsync.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rs.syncers())
	for _, it := range rs.p.items {
		if it.synced.Load() {
			continue
		}
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			return rs.settle(it)
		})
	}
	return g.Wait()
}
