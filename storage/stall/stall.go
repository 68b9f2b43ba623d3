// Package stall gives every store a progress watchdog: a connection that
// stops moving bytes without closing (a half-dead NAT entry, a load
// balancer that blackholes a flow, a store that hangs mid-body) would
// otherwise keep an upload or a download waiting forever, since the
// transport's timeouts cover connecting and the answer's headers, not a
// body that stops half way.
//
// The watchdog blames the network only: an upload stalls when, while no
// read of its body is in flight, the transport neither asks for the next
// bytes nor finishes within Timeout (a slow producer, say a backup compressing a big
// file, keeps a read in flight and is never blamed); a download stalls
// when one read of the body waits for Timeout (a slow consumer, between
// reads, is never blamed). A stalled call's context is cancelled and it
// fails with a retryable error naming the operation, the key and the
// time, so the retry decorator above starts it again.
package stall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/walferry/walferry/storage"
)

// DefaultTimeout is how long a body may move no bytes: long enough for an
// 8 MiB part over a slow link to be written, short against an operation's
// documented limits (docs/configuration.md, "Retries").
const DefaultTimeout = time.Minute

// New wraps st with a watchdog of timeout d (0: DefaultTimeout). The result
// implements storage.ConditionalCreator and storage.Copier exactly when st
// does.
func New(st storage.Store, d time.Duration) storage.Store {
	if d <= 0 {
		d = DefaultTimeout
	}
	s := &store{inner: st, d: d}
	_, cc := st.(storage.ConditionalCreator)
	_, cp := st.(storage.Copier)
	switch {
	case cc && cp:
		return conditionalCopier{s}
	case cc:
		return conditional{s}
	case cp:
		return copier{s}
	}
	return s
}

type store struct {
	inner storage.Store
	d     time.Duration
}

type conditional struct{ *store }

func (c conditional) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return c.put(ctx, "put-if-absent", key, r, c.inner.(storage.ConditionalCreator).PutIfAbsent)
}

type copier struct{ *store }

func (c copier) Copy(ctx context.Context, srcKey, dstKey string) error {
	return c.inner.(storage.Copier).Copy(ctx, srcKey, dstKey)
}

type conditionalCopier struct{ *store }

func (c conditionalCopier) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return c.put(ctx, "put-if-absent", key, r, c.inner.(storage.ConditionalCreator).PutIfAbsent)
}

func (c conditionalCopier) Copy(ctx context.Context, srcKey, dstKey string) error {
	return c.inner.(storage.Copier).Copy(ctx, srcKey, dstKey)
}

// Unwrap returns the store s wraps (storage.Wrapper).
func (s *store) Unwrap() storage.Store { return s.inner }

func (s *store) String() string { return s.inner.String() }
func (s *store) Close() error   { return s.inner.Close() }

func (s *store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	return s.inner.Stat(ctx, key)
}

func (s *store) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	return s.inner.List(ctx, prefix, fn)
}

func (s *store) Delete(ctx context.Context, key string) error { return s.inner.Delete(ctx, key) }

func (s *store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, "put", key, r, s.inner.Put)
}

// watch is one call's watchdog: fire cancels the call's context.
type watch struct {
	mu      sync.Mutex
	timer   *time.Timer
	d       time.Duration
	stalled bool
	cancel  context.CancelFunc
}

func newWatch(ctx context.Context, d time.Duration) (context.Context, *watch) {
	ctx, cancel := context.WithCancel(ctx)
	w := &watch{d: d, cancel: cancel}
	w.timer = time.AfterFunc(d, w.fire)
	w.timer.Stop()
	return ctx, w
}

func (w *watch) fire() {
	w.mu.Lock()
	w.stalled = true
	w.mu.Unlock()
	w.cancel()
}

func (w *watch) arm()   { w.timer.Reset(w.d) }
func (w *watch) pause() { w.timer.Stop() }

func (w *watch) done() bool {
	w.timer.Stop()
	w.cancel()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stalled
}

// stalledError is what a stalled call returns: retryable, and not a
// cancellation (which the retry policy would take for the caller's).
func (s *store) stalledError(op, key string) error {
	return storage.Retryable(fmt.Errorf("%s %s in %s: no progress for %s: the connection stalled (nothing moved, nothing closed)", op, key, s.inner, s.d))
}

func (s *store) put(ctx context.Context, op, key string, r io.Reader, put func(context.Context, string, io.Reader) error) error {
	wctx, w := newWatch(ctx, s.d)
	w.arm()
	err := put(wctx, key, uploadBody(r, w))
	if w.done() && err != nil && ctx.Err() == nil {
		return s.stalledError(op, key)
	}
	return err
}

// uploadBody wraps r: the watchdog runs between reads and after the last
// one (the transport writing to the network, then the answer), and stops
// while a read is in flight (the producer's time). A Seeker stays a
// Seeker.
func uploadBody(r io.Reader, w *watch) io.Reader {
	b := &upload{r: r, w: w}
	if sk, ok := r.(io.Seeker); ok {
		return &seekableUpload{upload: b, sk: sk}
	}
	return b
}

type upload struct {
	r io.Reader
	w *watch
}

func (u *upload) Read(p []byte) (int, error) {
	u.w.pause()
	n, err := u.r.Read(p)
	u.w.arm()
	return n, err
}

type seekableUpload struct {
	*upload
	sk io.Seeker
}

func (s *seekableUpload) Seek(off int64, whence int) (int64, error) { return s.sk.Seek(off, whence) }

func (s *store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return s.get(ctx, "get", key, func(ctx context.Context) (io.ReadCloser, error) { return s.inner.Get(ctx, key) })
}

func (s *store) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	return s.get(ctx, "get", key, func(ctx context.Context) (io.ReadCloser, error) {
		return s.inner.GetRange(ctx, key, offset, length)
	})
}

func (s *store) get(ctx context.Context, op, key string, open func(context.Context) (io.ReadCloser, error)) (io.ReadCloser, error) {
	wctx, w := newWatch(ctx, s.d)
	w.arm()
	rc, err := open(wctx)
	w.pause()
	if err != nil {
		if w.done() && ctx.Err() == nil {
			return nil, s.stalledError(op, key)
		}
		return nil, err
	}
	return &download{rc: rc, w: w, ctx: ctx, s: s, op: op, key: key}, nil
}

// download runs the watchdog during each read of the body only.
type download struct {
	rc      io.ReadCloser
	w       *watch
	ctx     context.Context
	s       *store
	op, key string
}

func (d *download) Read(p []byte) (int, error) {
	d.w.arm()
	n, err := d.rc.Read(p)
	d.w.pause()
	if err != nil && !errors.Is(err, io.EOF) && d.ctx.Err() == nil {
		d.w.mu.Lock()
		stalled := d.w.stalled
		d.w.mu.Unlock()
		if stalled {
			return n, d.s.stalledError(d.op, d.key)
		}
	}
	return n, err
}

func (d *download) Close() error {
	err := d.rc.Close()
	d.w.done()
	return err
}
