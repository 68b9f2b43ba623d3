package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// piece is a byte range of one file assigned to a data object.
type piece struct {
	file     int // index in scan.files
	off, len int64
}

// task is one data object to build: its pieces, read in order.
type task struct {
	n      int
	pieces []piece
	size   int64
}

// planTasks splits the files into data objects of about objectSize raw
// bytes: files larger than that are cut into objectSize chunks (each its
// own object, so one big table is read by every worker at once), smaller
// ones are bundled in path order (so a database's many small files travel
// together). objectSize is a multiple of UnitSize, so no checksum unit
// straddles two objects. Big chunks come first: the workers finish
// together instead of one big file trailing at the end.
func planTasks(files []entry, objectSize int64) []task {
	var big, small []task
	var cur task
	for i, f := range files {
		if f.size > objectSize {
			for off := int64(0); off < f.size; off += objectSize {
				n := min(objectSize, f.size-off)
				big = append(big, task{pieces: []piece{{file: i, off: off, len: n}}, size: n})
			}
			continue
		}
		if cur.size > 0 && cur.size+f.size > objectSize {
			small = append(small, cur)
			cur = task{}
		}
		cur.pieces = append(cur.pieces, piece{file: i, off: 0, len: f.size})
		cur.size += f.size
	}
	if len(cur.pieces) > 0 {
		small = append(small, cur)
	}
	out := append(big, small...)
	for i := range out {
		out[i].n = i + 1
	}
	return out
}

// castagnoli is the CRC-32C table of File.CRCs.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// pieceResult is what reading one piece found.
type pieceResult struct {
	extents []Extent
	sums    []string
	crcs    []uint32
	// read is how many bytes of the piece existed; less than the planned
	// length means the file shrank (or vanished) while the backup ran.
	read     int64
	vanished bool
	newBytes int64
	pageErrs []PageError
}

// packer builds data objects from tasks.
type packer struct {
	r        *repo.Repo
	id       string
	files    []entry
	startLSN pg.LSN
	checksum bool // verify page checksums
	// pageLevel allows page-level incrementals (see changedRanges).
	pageLevel bool
	parent    *Manifest
	parentFS  map[string]*File
	readDone  *atomic.Int64 // progress: bytes read

	mu      sync.Mutex
	results map[piece]*pieceResult
	objects []Object
	bufs    sync.Pool
}

func newPacker(r *repo.Repo, id string, files []entry, startLSN pg.LSN, checksum bool, parent *Manifest, progress *atomic.Int64) *packer {
	p := &packer{r: r, id: id, files: files, startLSN: startLSN, checksum: checksum, parent: parent,
		readDone: progress, results: map[piece]*pieceResult{}}
	if parent != nil {
		p.parentFS = parent.FileMap()
	}
	p.bufs.New = func() any { b := make([]byte, UnitSize); return &b }
	return p
}

// run builds every task's object with jobs workers; the first error
// cancels the rest.
func (p *packer) run(ctx context.Context, tasks []task, jobs int) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ch := make(chan task)
	var wg sync.WaitGroup
	var firstErr error
	var once sync.Once
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range ch {
				if err := p.pack(ctx, t); err != nil {
					once.Do(func() { firstErr = err; cancel(err) })
					return
				}
			}
		}()
	}
feed:
	for _, t := range tasks {
		select {
		case ch <- t:
		case <-ctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return context.Cause(ctx)
}

// objectWriter starts the object's upload on the first byte, so a task
// whose bytes are all unchanged (incremental) stores no object at all.
type objectWriter struct {
	ctx     context.Context
	r       *repo.Repo
	key     string
	pw      *io.PipeWriter
	done    chan error
	sum     repo.ObjectSum
	written int64
}

func (w *objectWriter) Write(b []byte) (int, error) {
	if w.pw == nil {
		pr, pw := io.Pipe()
		w.pw, w.done = pw, make(chan error, 1)
		go func() {
			// The manifest holds a SHA-256 of every 8 MiB of every file,
			// which restore and verify check: the object's own content
			// hash would hash every byte a second time.
			sum, err := w.r.PutWith(w.ctx, w.key, pr, repo.PutOptions{IfAbsent: true, NoRawSum: true})
			w.sum = sum
			pr.CloseWithError(errors.New("upload ended"))
			w.done <- err
		}()
	}
	n, err := w.pw.Write(b)
	w.written += int64(n)
	if err != nil && w.done != nil {
		// The upload stopped reading: its own error says why (the pipe's
		// only says that it closed).
		w.pw.CloseWithError(err)
		if uerr := <-w.done; uerr != nil {
			err = uerr
		}
		w.done = nil
	}
	return n, err
}

// finish ends the upload: with cause nil it completes it, otherwise it
// aborts it (nothing is stored under the key).
func (w *objectWriter) finish(cause error) error {
	if w.pw == nil {
		return cause
	}
	if w.done == nil {
		return cause
	}
	w.pw.CloseWithError(cause)
	err := <-w.done
	w.done = nil
	if cause != nil {
		return cause
	}
	return err
}

// piecesByFile groups the tasks' pieces by file.
func piecesByFile(tasks []task) map[int][]piece {
	byFile := map[int][]piece{}
	for _, t := range tasks {
		for _, pc := range t.pieces {
			byFile[pc.file] = append(byFile[pc.file], pc)
		}
	}
	return byFile
}

// pack reads a task's pieces into one new object.
func (p *packer) pack(ctx context.Context, t task) error {
	w := &objectWriter{ctx: ctx, r: p.r, key: repo.BackupDataKey(p.id, t.n)}
	results := make([]*pieceResult, len(t.pieces))
	var err error
	for i, pc := range t.pieces {
		results[i], err = p.readPiece(ctx, pc, w)
		if err != nil {
			break
		}
	}
	if err := w.finish(err); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, pc := range t.pieces {
		p.results[pc] = results[i]
	}
	if w.written > 0 {
		p.objects = append(p.objects, Object{Key: w.key, RawSize: w.sum.RawSize, StoredSize: w.sum.StoredSize, Sum: w.sum.Sum})
	}
	return nil
}

// readPiece reads one piece unit by unit: hashes each unit, checks page
// checksums, and writes to w what the parent (if any) does not have.
func (p *packer) readPiece(ctx context.Context, pc piece, w *objectWriter) (*pieceResult, error) {
	f := &p.files[pc.file]
	res := &pieceResult{}
	fh, err := os.Open(f.abs)
	if errors.Is(err, fs.ErrNotExist) {
		res.vanished = true // dropped while the backup ran; WAL replay drops it too
		return res, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", f.abs, err)
	}
	defer fh.Close()
	bp := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(bp)
	buf := *bp
	var parentFile *File
	if p.parentFS != nil {
		parentFile = p.parentFS[f.rel]
	}
	for unitOff := pc.off; unitOff < pc.off+pc.len; unitOff += UnitSize {
		if err := ctx.Err(); err != nil {
			return nil, context.Cause(ctx)
		}
		want := min(int64(UnitSize), pc.off+pc.len-unitOff)
		n, err := fh.ReadAt(buf[:want], unitOff)
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("read %s: %w", f.abs, err)
		}
		data := buf[:n]
		p.readDone.Add(int64(n))
		res.read += int64(n)
		if n == 0 {
			break
		}
		if err := p.storeUnit(w, res, f, parentFile, unitOff, data); err != nil {
			return nil, err
		}
		if int64(n) < want {
			break // the file shrank
		}
	}
	return res, nil
}

// storeUnit hashes one unit of a file (at most UnitSize bytes at file
// offset unitOff, UnitSize-aligned), checks its pages, and writes to w what
// the parent does not have, recording where every byte of it is in res.
func (p *packer) storeUnit(w *objectWriter, res *pieceResult, f *entry, parentFile *File, unitOff int64, data []byte) error {
	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	res.sums = append(res.sums, hexSum)
	res.crcs = append(res.crcs, crc32.Checksum(data, castagnoli))
	if f.relation && p.checksum {
		res.pageErrs = append(res.pageErrs, p.checkPages(f, unitOff, data)...)
	}
	for _, rg := range p.changedRanges(f, parentFile, unitOff, data, hexSum) {
		if !rg.fresh {
			res.extents = append(res.extents, sliceExtents(parentFile.Extents, unitOff+rg.from, unitOff+rg.to)...)
			continue
		}
		at := w.written
		if _, err := w.Write(data[rg.from:rg.to]); err != nil {
			return fmt.Errorf("back up %s: %w", f.rel, err)
		}
		res.newBytes += rg.to - rg.from
		res.extents = appendExtent(res.extents, Extent{Off: unitOff + rg.from, Len: rg.to - rg.from, Key: w.key, At: at})
	}
	return nil
}

// checkPages verifies the checksums of a unit's pages. Pages changed
// since the backup started may be read torn; WAL replay rewrites them, so
// they are not checked.
func (p *packer) checkPages(f *entry, unitOff int64, data []byte) []PageError {
	var errs []PageError
	for off := 0; off+pg.PageSize <= len(data); off += pg.PageSize {
		page := data[off : off+pg.PageSize]
		if pg.PageLSN(page) >= p.startLSN {
			continue
		}
		blk := f.firstBlock + uint32((unitOff+int64(off))/pg.PageSize)
		if !pg.VerifyPage(page, blk) {
			errs = append(errs, PageError{Path: f.rel, Block: int64(blk)})
		}
	}
	return errs
}

// byteRange is a part of a unit, either fresh (stored in this backup) or
// the parent's.
type byteRange struct {
	from, to int64
	fresh    bool
}

// changedRanges decides which bytes of a unit this backup stores. Without
// a parent copy, all of them. With one: none when the unit's checksum is
// the parent's. Otherwise, when page LSNs are trustworthy (pageLevel: data
// checksums or wal_log_hints, so even hint-bit changes stamp the page,
// on this backup and its parent) and the file is a main or init fork: the
// pages whose LSN is at or after the parent's start, the pages the parent
// did not have, and new (zeroed) pages; every other page is byte for byte
// the parent's, so the unit's checksum still describes what a restore
// writes. In every other case the whole unit.
func (p *packer) changedRanges(f *entry, parentFile *File, unitOff int64, data []byte, sum string) []byteRange {
	all := []byteRange{{from: 0, to: int64(len(data)), fresh: true}}
	if parentFile == nil {
		return all
	}
	unit := unitOff / UnitSize
	if unit < int64(len(parentFile.Sums)) && parentFile.Sums[unit] == sum &&
		unitOff+int64(len(data)) <= parentFile.Size {
		return []byteRange{{from: 0, to: int64(len(data)), fresh: false}}
	}
	if !p.pageLevel || !f.lsnStamped || len(data)%pg.PageSize != 0 {
		return all
	}
	var out []byteRange
	for off := int64(0); off < int64(len(data)); off += pg.PageSize {
		page := data[off : off+pg.PageSize]
		fresh := unitOff+off+pg.PageSize > parentFile.Size ||
			pg.PageIsNew(page) || pg.PageLSN(page) >= p.parent.StartLSN
		if k := len(out); k > 0 && out[k-1].fresh == fresh {
			out[k-1].to = off + pg.PageSize
			continue
		}
		out = append(out, byteRange{from: off, to: off + pg.PageSize, fresh: fresh})
	}
	return out
}

// appendExtent appends e, merging it into the last extent when it
// continues it in both the file and the object.
func appendExtent(exts []Extent, e Extent) []Extent {
	if k := len(exts); k > 0 {
		last := &exts[k-1]
		if last.Key == e.Key && last.Off+last.Len == e.Off && last.At+last.Len == e.At {
			last.Len += e.Len
			return exts
		}
	}
	return append(exts, e)
}

// sliceExtents returns the parts of exts (sorted by Off, tiling a file)
// that cover file bytes [from, to).
func sliceExtents(exts []Extent, from, to int64) []Extent {
	i := sort.Search(len(exts), func(i int) bool { return exts[i].Off+exts[i].Len > from })
	var out []Extent
	for ; i < len(exts) && exts[i].Off < to; i++ {
		e := exts[i]
		lo, hi := max(e.Off, from), min(e.Off+e.Len, to)
		out = append(out, Extent{Off: lo, Len: hi - lo, Key: e.Key, At: e.At + (lo - e.Off)})
	}
	return out
}

// assemble turns the pieces' results into the manifest's files, in path
// order. A file that shrank while it was read ends at the first short
// piece (what follows was truncated; WAL replay truncates it too); a file
// that vanished is left out.
func (p *packer) assemble(byFile map[int][]piece) ([]File, []PageError, int64) {
	var files []File
	var pageErrs []PageError
	var newBytes int64
	for i := range p.files {
		f := p.files[i]
		pcs := byFile[i]
		sort.Slice(pcs, func(a, b int) bool { return pcs[a].off < pcs[b].off })
		mf := File{Path: f.rel, Mode: uint32(f.mode), MTime: f.mtime, Sums: []string{}, Extents: []Extent{}}
		vanished := false
		for _, pc := range pcs {
			r := p.results[pc]
			if r.vanished && pc.off == 0 {
				vanished = true
				break
			}
			for _, e := range r.extents {
				mf.Extents = appendExtent(mf.Extents, e)
			}
			mf.Sums = append(mf.Sums, r.sums...)
			mf.CRCs = append(mf.CRCs, r.crcs...)
			mf.Size += r.read
			newBytes += r.newBytes
			pageErrs = append(pageErrs, r.pageErrs...)
			if r.read < pc.len {
				break
			}
		}
		if vanished {
			continue
		}
		files = append(files, mf)
	}
	return files, pageErrs, newBytes
}
