package restore

import (
	"os"
	"sync"
	"time"

	"github.com/walferry/walferry/internal/atomicfile"
)

// minSyncers is the least number of files made durable at once (more with
// more jobs). An fsync mostly waits for the disk, and concurrent ones
// share its queue and its cache flushes: the hundreds of small files of a
// data directory are synced about twice as fast eight at a time as two at
// a time, for no more CPU.
const minSyncers = 8

// flushEvery is how many bytes of a file fetch writes before it asks for
// them to be written back. The data directory's dirty pages then go to
// disk while the next bytes are decoded, instead of waiting, all of them,
// for the files' fsyncs (the kernel itself starts only past
// vm.dirty_background_ratio, often more than a whole restore).
const flushEvery = 8 << 20

// syncReq asks a syncer either to start the writeback of n bytes of a
// file from off, or, with whole set, to settle the file: it is complete.
type syncReq struct {
	it     *item
	off, n int64
	whole  bool
}

// syncPool settles files and starts writebacks in the background while
// fetch decodes; its queue holds every request fetch can make, so fetch
// never waits for the disk.
type syncPool struct {
	rs   *restorer
	q    chan syncReq
	done sync.WaitGroup
}

// syncers is how many files are made durable at once.
func (rs *restorer) syncers() int { return max(minSyncers, rs.jobs) }

// startSyncers starts the syncers with room for size requests.
func (rs *restorer) startSyncers(size int) *syncPool {
	sp := &syncPool{rs: rs, q: make(chan syncReq, size)}
	for range rs.syncers() {
		sp.done.Add(1)
		go func() {
			defer sp.done.Done()
			for req := range sp.q {
				sp.serve(req)
			}
		}()
	}
	return sp
}

func (sp *syncPool) serve(req syncReq) {
	if !req.whole {
		// Only a head start for the file's fsync, which reports errors.
		_ = startWriteback(req.it.path, req.off, req.n)
		return
	}
	// Not retried: after a failed fsync the kernel may have dropped the
	// pages it could not write, and a second fsync would succeed.
	req.it.settleErr = sp.rs.settle(req.it)
	req.it.synced.Store(req.it.settleErr == nil)
}

// settled queues a complete file.
func (sp *syncPool) settled(it *item) { sp.q <- syncReq{it: it, whole: true} }

// written queues the writeback of n bytes of it from off.
func (sp *syncPool) written(it *item, off, n int64) { sp.q <- syncReq{it: it, off: off, n: n} }

// stop waits for the requests queued so far.
func (sp *syncPool) stop() {
	close(sp.q)
	sp.done.Wait()
}

// settle gives a restored file its mode, owner and modification time and
// then makes it durable. The fsync comes after the metadata: on a
// filesystem without a journal (ext4 -O ^has_journal, ext2) only the
// file's own fsync writes its inode, so a mode, owner or time set after
// it could be lost by a crash after the restore reported success.
func (rs *restorer) settle(it *item) error {
	if err := os.Chmod(it.path, fileMode(it.f.Mode, 0o600)); err != nil {
		return err
	}
	if err := rs.chown(it.path); err != nil {
		return err
	}
	mt := time.Unix(it.f.MTime, 0)
	if err := os.Chtimes(it.path, mt, mt); err != nil {
		return err
	}
	return atomicfile.Sync(it.path)
}
