// Package limit wraps a storage.Store so that at most n operations run on it
// at once, bounding connections, memory and load on the backend whatever the
// number of callers.
package limit

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/walferry/walferry/storage"
)

// New returns st limited to n concurrent operations (n < 1 means 1). The
// result implements storage.ConditionalCreator and storage.Copier exactly
// when st does.
//
// Each call of Put, PutIfAbsent, Copy, Stat, Delete and List holds a slot
// while it runs; a call waiting for a slot returns ctx's error when ctx is
// done first. A Get or GetRange holds its slot until the returned reader is
// Closed (or the call fails): a caller holding n readers open blocks its
// own next operation until it closes one. Likewise List holds its slot
// while it calls fn, so fn must not wait for another operation on the same
// limited store when all slots may be taken (with n = 1, never).
// String and Close are not limited.
func New(st storage.Store, n int) storage.Store {
	s := &store{inner: st, sem: make(chan struct{}, max(n, 1))}
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
	sem   chan struct{}
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

// acquire takes a slot, or returns ctx's error if ctx is done first.
func (s *store) acquire(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("limit: %s %s: %w", op, key, err)
	}
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("limit: %s %s: waiting for a free slot: %w", op, key, ctx.Err())
	}
}

func (s *store) release() { <-s.sem }

// do runs f in a slot.
func (s *store) do(ctx context.Context, op, key string, f func() error) error {
	if err := s.acquire(ctx, op, key); err != nil {
		return err
	}
	defer s.release()
	return f()
}

func (s *store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.do(ctx, "put", key, func() error { return s.inner.Put(ctx, key, r) })
}

func (s *store) putIfAbsent(ctx context.Context, key string, r io.Reader) error {
	cc := s.inner.(storage.ConditionalCreator)
	return s.do(ctx, "put-if-absent", key, func() error { return cc.PutIfAbsent(ctx, key, r) })
}

func (s *store) copy(ctx context.Context, srcKey, dstKey string) error {
	cp := s.inner.(storage.Copier)
	return s.do(ctx, "copy", srcKey, func() error { return cp.Copy(ctx, srcKey, dstKey) })
}

func (s *store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	var info storage.ObjectInfo
	err := s.do(ctx, "stat", key, func() error {
		var err error
		info, err = s.inner.Stat(ctx, key)
		return err
	})
	return info, err
}

func (s *store) Delete(ctx context.Context, key string) error {
	return s.do(ctx, "delete", key, func() error { return s.inner.Delete(ctx, key) })
}

func (s *store) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	return s.do(ctx, "list", prefix, func() error { return s.inner.List(ctx, prefix, fn) })
}

func (s *store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return s.open(ctx, key, func() (io.ReadCloser, error) { return s.inner.Get(ctx, key) })
}

func (s *store) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	return s.open(ctx, key, func() (io.ReadCloser, error) { return s.inner.GetRange(ctx, key, offset, length) })
}

// open runs a Get in a slot that the returned reader's Close releases.
func (s *store) open(ctx context.Context, key string, get func() (io.ReadCloser, error)) (io.ReadCloser, error) {
	if err := s.acquire(ctx, "get", key); err != nil {
		return nil, err
	}
	rc, err := get()
	if err != nil {
		s.release()
		return nil, err
	}
	return &reader{ReadCloser: rc, release: s.release}, nil
}

func (s *store) String() string { return s.inner.String() }
func (s *store) Close() error   { return s.inner.Close() }

// reader releases its slot on the first Close.
type reader struct {
	io.ReadCloser
	once    sync.Once
	release func()
}

func (r *reader) Close() error {
	err := r.ReadCloser.Close()
	r.once.Do(r.release)
	return err
}
