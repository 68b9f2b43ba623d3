// Package retry wraps a storage.Store so that operations failing with a
// transient error (storage.IsRetryable) are repeated with exponential backoff
// and jitter, and interrupted downloads resume where they stopped.
//
// Only errors marked with storage.Retryable are retried; a missing key, a
// refused permission or a cancelled context is returned at once. Where an
// operation cannot be repeated safely (a Put from a reader that cannot be
// rewound) it is attempted once.
package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/storage"
)

// Policy bounds the retries of one operation. It is walferry's one retry
// policy: the store decorator, archive-push's upload of a segment (which
// the decorator cannot repeat: it is fed from a pipe), the WAL receiver
// and the agent's start-up all retry with a Policy, through Do.
type Policy struct {
	// MaxAttempts is the number of attempts, the first included; negative
	// means no limit (a long-running receiver waiting out an outage). For
	// a resumable read it bounds the consecutive failures without progress.
	MaxAttempts int
	// InitialBackoff is the wait before the second attempt; each further
	// wait doubles, up to MaxBackoff. Each wait is jittered to between half
	// and all of its nominal value.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// MaxElapsed stops retrying once another wait would end this long after
	// the first attempt started. Negative means no limit.
	MaxElapsed time.Duration
}

// DefaultPolicy is the configuration's default (storage.retry_attempts,
// storage.retry_max_elapsed): up to 4 attempts, waits from 250 ms doubling
// up to 5 s, for at most 20 seconds; an operation on an unreachable store
// fails within about 20 s plus its own timeouts.
func DefaultPolicy() Policy {
	return Policy{
		MaxAttempts:    4,
		InitialBackoff: 250 * time.Millisecond,
		MaxBackoff:     5 * time.Second,
		MaxElapsed:     20 * time.Second,
	}
}

// withDefaults fills zero fields from DefaultPolicy.
func (p Policy) withDefaults() Policy {
	d := DefaultPolicy()
	if p.MaxAttempts == 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = d.InitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = max(d.MaxBackoff, p.InitialBackoff)
	}
	if p.MaxBackoff < p.InitialBackoff {
		p.MaxBackoff = p.InitialBackoff
	}
	if p.MaxElapsed == 0 {
		p.MaxElapsed = d.MaxElapsed
	}
	return p
}

// Backoff returns the jittered wait after failure n (1-based).
func (p Policy) Backoff(n int) time.Duration {
	p = p.withDefaults()
	d := p.InitialBackoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, p.MaxBackoff)
	half := d / 2
	return half + rand.N(d-half+1)
}

// Retryable reports whether an error is worth another attempt: a transient
// failure (internal/failure's one classification), while ctx is live.
func Retryable(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && failure.Retryable(err)
}

// Do runs f (attempt counts from 1) until it succeeds, fails with an error
// that is not Retryable, ctx ends, or p gives up; what names the operation
// in errors; each retry logs one Info line on log (nil: none), which the
// caller gives the attributes naming the operation.
// The error it gives up with wraps f's last error.
func Do(ctx context.Context, p Policy, what string, log *slog.Logger, f func(attempt int) error) error {
	p = p.withDefaults()
	start := time.Now()
	for n := 1; ; n++ {
		err := f(n)
		if !Retryable(ctx, err) {
			return err
		}
		if err := p.pause(ctx, what, log, n, start, err); err != nil {
			return err
		}
	}
}

// pause follows retryable failure n (1-based) of a series begun at start:
// it waits the backoff and returns nil, or returns the error to give up
// with. p has its defaults.
func (p Policy) pause(ctx context.Context, what string, log *slog.Logger, n int, start time.Time, err error) error {
	if p.MaxAttempts > 0 && n >= p.MaxAttempts {
		if n == 1 {
			return err
		}
		return fmt.Errorf("retry: %s: giving up after %d attempts: %w", what, n, err)
	}
	d := p.Backoff(n)
	if elapsed := time.Since(start); p.MaxElapsed > 0 && elapsed+d > p.MaxElapsed {
		return fmt.Errorf("retry: %s: giving up after %d attempts in %v: %w", what, n, elapsed.Round(time.Millisecond), err)
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
		return fmt.Errorf("retry: %s: giving up after %d attempts: the deadline comes before the next one: %w", what, n, err)
	}
	if log != nil {
		log.LogAttrs(ctx, slog.LevelInfo, "operation failed; retrying",
			slog.Int("attempt", n), slog.Duration("backoff", d), slog.Any("err", err))
	}
	if Sleep(ctx, d) != nil {
		return fmt.Errorf("retry: %s: %w while waiting to retry (last error: %v)", what, context.Cause(ctx), err)
	}
	return nil
}

// Sleep waits for d, the backoff before another attempt, unless ctx ends
// first: it then returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// New wraps st with p (zero fields take DefaultPolicy's values), logging
// each retry at Info level on log (nil discards). The result implements
// storage.ConditionalCreator and storage.Copier exactly when st does.
//
// Operations and their retries:
//   - Stat, Delete, Copy: retried.
//   - Put, PutIfAbsent: retried only when r is an io.Seeker whose position
//     can be read; each retry seeks r back to where it was at the call.
//     Otherwise attempted once. A PutIfAbsent whose first attempt succeeded
//     unseen (say, the answer was lost) may be reported as storage.ErrExist
//     by its retry: callers that need to know compare the stored content.
//   - Get, GetRange: opening is retried, and the reader resumes: after a
//     retryable read error it reopens the object with GetRange at the
//     offset reached. The reader keeps the ctx of the call for those
//     reopenings. A resumed read could splice two versions of an object
//     replaced meanwhile; walferry's objects carry their own checksums.
//   - List: retried; keys already passed to fn are skipped when the
//     listing starts again, so fn sees each key once, in order. An error
//     returned by fn is never retried.
func New(st storage.Store, p Policy, log *slog.Logger) storage.Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &store{inner: st, p: p.withDefaults(), log: log}
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
	p     Policy
	log   *slog.Logger
}

// Unwrap returns the store s wraps (storage.Wrapper).
func (s *store) Unwrap() storage.Store { return s.inner }

type conditional struct{ *store }

func (c conditional) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return c.putIfAbsent(ctx, key, r)
}

type copier struct{ *store }

func (c copier) Copy(ctx context.Context, srcKey, dstKey string) error {
	return c.copy(ctx, srcKey, dstKey)
}

type conditionalCopier struct{ *store }

func (c conditionalCopier) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return c.putIfAbsent(ctx, key, r)
}

func (c conditionalCopier) Copy(ctx context.Context, srcKey, dstKey string) error {
	return c.copy(ctx, srcKey, dstKey)
}

func (s *store) String() string { return s.inner.String() }
func (s *store) Close() error   { return s.inner.Close() }

// do runs f under the store's policy (Do), naming the store and key.
func (s *store) do(ctx context.Context, op, key string, f func(attempt int) error) error {
	return Do(ctx, s.p, op+" "+key, s.log.With("op", op, "key", key, "store", s.inner.String()), f)
}

func (s *store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, "put", key, r, s.inner.Put)
}

func (s *store) putIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, "put-if-absent", key, r, s.inner.(storage.ConditionalCreator).PutIfAbsent)
}

func (s *store) put(ctx context.Context, op, key string, r io.Reader, put func(context.Context, string, io.Reader) error) error {
	seeker, ok := r.(io.Seeker)
	if !ok {
		return put(ctx, key, r)
	}
	start, err := seeker.Seek(0, io.SeekCurrent)
	if err != nil { // a pipe behind an *os.File, say
		return put(ctx, key, r)
	}
	return s.do(ctx, op, key, func(attempt int) error {
		if attempt > 1 {
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return fmt.Errorf("retry: %s %s: rewinding the reader: %w", op, key, err)
			}
		}
		return put(ctx, key, r)
	})
}

func (s *store) copy(ctx context.Context, srcKey, dstKey string) error {
	cp := s.inner.(storage.Copier)
	return s.do(ctx, "copy", srcKey+" -> "+dstKey, func(int) error { return cp.Copy(ctx, srcKey, dstKey) })
}

// doValue is do for an operation that returns a value: the value of the
// attempt that succeeded.
func doValue[T any](ctx context.Context, s *store, op, key string, f func() (T, error)) (T, error) {
	var v T
	err := s.do(ctx, op, key, func(int) error {
		var err error
		v, err = f()
		return err
	})
	return v, err
}

func (s *store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	return doValue(ctx, s, "stat", key, func() (storage.ObjectInfo, error) { return s.inner.Stat(ctx, key) })
}

func (s *store) Delete(ctx context.Context, key string) error {
	return s.do(ctx, "delete", key, func(int) error { return s.inner.Delete(ctx, key) })
}

// errFnStopped marks a listing stopped by the caller's fn: never retried.
var errFnStopped = errors.New("listing stopped by its callback")

func (s *store) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	var (
		last      string
		delivered bool
		fnErr     error
	)
	err := s.do(ctx, "list", prefix, func(int) error {
		err := s.inner.List(ctx, prefix, func(oi storage.ObjectInfo) error {
			if delivered && oi.Key <= last {
				return nil // seen before this attempt
			}
			if err := fn(oi); err != nil {
				fnErr = err
				return err
			}
			last, delivered = oi.Key, true
			return nil
		})
		if fnErr != nil {
			return errFnStopped
		}
		return err
	})
	if fnErr != nil {
		return fnErr
	}
	return err
}

func (s *store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := doValue(ctx, s, "get", key, func() (io.ReadCloser, error) { return s.inner.Get(ctx, key) })
	if err != nil {
		return nil, err
	}
	return &resumableReader{s: s, ctx: ctx, key: key, rc: rc, remaining: -1}, nil
}

func (s *store) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := doValue(ctx, s, "get", key, func() (io.ReadCloser, error) { return s.inner.GetRange(ctx, key, offset, length) })
	if err != nil {
		return nil, err
	}
	if length < 0 {
		length = -1
	}
	return &resumableReader{s: s, ctx: ctx, key: key, rc: rc, pos: offset, remaining: length}, nil
}

// resumableReader reads an object and, after a retryable read error,
// reopens it at the offset reached.
type resumableReader struct {
	s   *store
	ctx context.Context // the Get's: reopenings belong to that call
	key string

	rc        io.ReadCloser // nil between a failure and the reopening
	pos       int64         // offset in the object of the next byte
	remaining int64         // bytes still wanted; -1 reads to the end
	failures  int           // consecutive failures without progress
	since     time.Time     // when the current series of failures began
	err       error         // sticky: the reader gave up
}

func (r *resumableReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.remaining == 0 {
		return 0, io.EOF
	}
	if r.remaining > 0 && int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	for {
		if r.rc == nil {
			rc, err := r.s.inner.GetRange(r.ctx, r.key, r.pos, r.remaining)
			if err != nil {
				if !Retryable(r.ctx, err) {
					r.err = fmt.Errorf("retry: get %s: resuming at offset %d: %w", r.key, r.pos, err)
					return 0, r.err
				}
				if err := r.fail(err); err != nil {
					return 0, err
				}
				continue
			}
			r.rc = rc
		}
		n, err := r.rc.Read(p)
		r.pos += int64(n)
		if r.remaining > 0 {
			r.remaining -= int64(n)
		}
		if n > 0 {
			r.failures = 0
		}
		if err == nil || err == io.EOF || !Retryable(r.ctx, err) {
			return n, err
		}
		r.rc.Close()
		r.rc = nil
		if ferr := r.fail(err); ferr != nil {
			return n, ferr
		}
		if n > 0 {
			return n, nil
		}
	}
}

// fail counts a retryable failure and waits, or gives up for good.
func (r *resumableReader) fail(err error) error {
	if r.failures == 0 {
		r.since = time.Now()
	}
	r.failures++
	if perr := r.s.p.pause(r.ctx, "get "+r.key, r.s.log.With("op", "get", "key", r.key, "store", r.s.inner.String()), r.failures, r.since, fmt.Errorf("at offset %d: %w", r.pos, err)); perr != nil {
		r.err = perr
		return perr
	}
	return nil
}

// Close closes the current stream. Reads after Close fail.
func (r *resumableReader) Close() error {
	if r.err == nil {
		r.err = errors.New("retry: read after Close")
	}
	if r.rc == nil {
		return nil
	}
	rc := r.rc
	r.rc = nil
	return rc.Close()
}
