package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/fs"
	"github.com/walferry/walferry/storage/storagetest"
)

// fast retries quickly so tests do not wait.
var fast = Policy{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, MaxElapsed: -1}

var errReset = storage.Retryable(fmt.Errorf("read tcp: %w", syscall.ECONNRESET))

// fault makes the nth opened reader fail with err after it has delivered
// after bytes.
type fault struct {
	after int64
	err   error
}

// fake is an in-memory store whose operations fail on demand.
type fake struct {
	mu      sync.Mutex
	objects map[string][]byte
	errs    map[string][]error // per operation: errors the next calls return
	calls   map[string]int
	faults  []fault    // applied to successive opened readers
	opens   [][2]int64 // offset and length of every Get/GetRange that opened
	// listFailAfter makes the first List fail retryably after that many
	// keys (when > 0).
	listFailAfter int
}

func newFake() *fake {
	return &fake{objects: map[string][]byte{}, errs: map[string][]error{}, calls: map[string]int{}}
}

// call counts a call of op and returns its injected error, if any.
func (f *fake) call(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	if q := f.errs[op]; len(q) > 0 {
		f.errs[op] = q[1:]
		return q[0]
	}
	return nil
}

func (f *fake) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func (f *fake) Put(ctx context.Context, key string, r io.Reader) error {
	// Read some of r before failing, as a real upload would.
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, r, 10); err != nil && err != io.EOF {
		return err
	}
	if err := f.call("put"); err != nil {
		return err
	}
	if _, err := io.Copy(&buf, r); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objects[key] = buf.Bytes()
	return nil
}

func (f *fake) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return f.open("get", key, 0, -1)
}

func (f *fake) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	return f.open("getrange", key, offset, length)
}

func (f *fake) open(op, key string, offset, length int64) (io.ReadCloser, error) {
	if err := f.call(op); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	data, ok := f.objects[key]
	if !ok {
		return nil, fmt.Errorf("fake: %s: %w", key, storage.ErrNotExist)
	}
	f.opens = append(f.opens, [2]int64{offset, length})
	data = data[min(offset, int64(len(data))):]
	if length >= 0 && length < int64(len(data)) {
		data = data[:length]
	}
	fr := &faultyReader{r: bytes.NewReader(data), after: -1}
	if len(f.faults) > 0 {
		fr.after, fr.err = f.faults[0].after, f.faults[0].err
		f.faults = f.faults[1:]
	}
	return fr, nil
}

type faultyReader struct {
	r     io.Reader
	n     int64
	after int64 // fail once n reaches it; -1 never
	err   error
}

func (r *faultyReader) Read(p []byte) (int, error) {
	if r.after >= 0 {
		if r.n >= r.after {
			return 0, r.err
		}
		p = p[:min(int64(len(p)), r.after-r.n)]
	}
	n, err := r.r.Read(p)
	r.n += int64(n)
	return n, err
}

func (r *faultyReader) Close() error { return nil }

func (f *fake) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := f.call("stat"); err != nil {
		return storage.ObjectInfo{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	data, ok := f.objects[key]
	if !ok {
		return storage.ObjectInfo{}, fmt.Errorf("fake: %s: %w", key, storage.ErrNotExist)
	}
	return storage.ObjectInfo{Key: key, Size: int64(len(data)), ModTime: time.Now()}, nil
}

func (f *fake) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := f.call("list"); err != nil {
		return err
	}
	f.mu.Lock()
	var keys []string
	for k := range f.objects {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	failAfter := f.listFailAfter
	f.listFailAfter = 0
	f.mu.Unlock()
	slices.Sort(keys)
	for i, k := range keys {
		if failAfter > 0 && i == failAfter {
			return errReset
		}
		if err := fn(storage.ObjectInfo{Key: k, Size: int64(len(f.objects[k]))}); err != nil {
			return fmt.Errorf("fake: list: %w", err)
		}
	}
	return nil
}

func (f *fake) Delete(ctx context.Context, key string) error {
	if err := f.call("delete"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.objects, key)
	return nil
}

func (f *fake) String() string { return "fake://" }
func (f *fake) Close() error   { return nil }

// fakeFull adds the optional interfaces.
type fakeFull struct{ *fake }

func (f fakeFull) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	if err := f.call("putifabsent"); err != nil {
		return err
	}
	f.mu.Lock()
	_, ok := f.objects[key]
	f.mu.Unlock()
	if ok {
		return storage.ErrExist
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objects[key] = data
	return nil
}

func (f fakeFull) Copy(ctx context.Context, src, dst string) error {
	if err := f.call("copy"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objects[dst] = f.objects[src]
	return nil
}

func TestRetryOperations(t *testing.T) {
	ctx := t.Context()
	tests := []struct {
		op   string
		run  func(s storage.Store) error
		want int // calls of op with two injected retryable errors
	}{
		{"stat", func(s storage.Store) error { _, err := s.Stat(ctx, "k"); return err }, 3},
		{"delete", func(s storage.Store) error { return s.Delete(ctx, "k") }, 3},
		{"list", func(s storage.Store) error {
			return s.List(ctx, "", func(storage.ObjectInfo) error { return nil })
		}, 3},
		{"get", func(s storage.Store) error { rc, err := s.Get(ctx, "k"); closeIf(rc); return err }, 3},
		{"getrange", func(s storage.Store) error { rc, err := s.GetRange(ctx, "k", 1, 1); closeIf(rc); return err }, 3},
		{"put", func(s storage.Store) error { return s.Put(ctx, "k", strings.NewReader("seekable")) }, 3},
		{"copy", func(s storage.Store) error { return s.(storage.Copier).Copy(ctx, "k", "k2") }, 3},
		{"putifabsent", func(s storage.Store) error {
			return s.(storage.ConditionalCreator).PutIfAbsent(ctx, "new", strings.NewReader("seekable"))
		}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.op, func(t *testing.T) {
			f := newFake()
			f.objects["k"] = []byte("hello")
			f.errs[tc.op] = []error{errReset, errReset}
			if err := tc.run(New(fakeFull{f}, fast, nil)); err != nil {
				t.Fatalf("%s after two transient errors: %v", tc.op, err)
			}
			if got := f.count(tc.op); got != tc.want {
				t.Errorf("%s called %d times, want %d", tc.op, got, tc.want)
			}
		})
		t.Run(tc.op+"/permanent", func(t *testing.T) {
			f := newFake()
			f.objects["k"] = []byte("hello")
			perm := fmt.Errorf("fake: %w", storage.ErrPermission)
			f.errs[tc.op] = []error{perm}
			if err := tc.run(New(fakeFull{f}, fast, nil)); !errors.Is(err, storage.ErrPermission) {
				t.Fatalf("%s = %v, want the permanent error", tc.op, err)
			}
			if got := f.count(tc.op); got != 1 {
				t.Errorf("%s called %d times, want 1", tc.op, got)
			}
		})
	}
}

func closeIf(rc io.ReadCloser) {
	if rc != nil {
		rc.Close()
	}
}

func TestPut(t *testing.T) {
	ctx := t.Context()
	data := storagetest.Bytes(1, 1000)
	t.Run("rewinds-to-start-position", func(t *testing.T) {
		f := newFake()
		f.errs["put"] = []error{errReset, errReset}
		r := bytes.NewReader(data)
		if _, err := r.Seek(100, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		if err := New(f, fast, nil).Put(ctx, "k", r); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.objects["k"], data[100:]) {
			t.Errorf("stored %d bytes, want the %d from the start position", len(f.objects["k"]), len(data[100:]))
		}
	})
	t.Run("not-seekable-single-attempt", func(t *testing.T) {
		f := newFake()
		f.errs["put"] = []error{errReset}
		err := New(f, fast, nil).Put(ctx, "k", storagetest.OnlyReader(bytes.NewReader(data)))
		if !storage.IsRetryable(err) {
			t.Errorf("Put = %v, want the first attempt's error", err)
		}
		if got := f.count("put"); got != 1 {
			t.Errorf("put called %d times, want 1", got)
		}
	})
}

func TestPolicyLimits(t *testing.T) {
	t.Run("max-attempts", func(t *testing.T) {
		f := newFake()
		f.errs["stat"] = slices.Repeat([]error{errReset}, 100)
		_, err := New(f, fast, nil).Stat(t.Context(), "k")
		if !storage.IsRetryable(err) || !strings.Contains(err.Error(), "giving up after 5 attempts") {
			t.Errorf("Stat = %v, want a retryable error after 5 attempts", err)
		}
		if got := f.count("stat"); got != 5 {
			t.Errorf("stat called %d times, want 5", got)
		}
	})
	t.Run("max-elapsed", func(t *testing.T) {
		f := newFake()
		f.errs["stat"] = slices.Repeat([]error{errReset}, 1000)
		p := Policy{MaxAttempts: 1000, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 10 * time.Millisecond, MaxElapsed: 60 * time.Millisecond}
		start := time.Now()
		_, err := New(f, p, nil).Stat(t.Context(), "k")
		if err == nil || !strings.Contains(err.Error(), "giving up") {
			t.Errorf("Stat = %v, want giving up", err)
		}
		if got := f.count("stat"); got > 20 {
			t.Errorf("stat called %d times in %v", got, time.Since(start))
		}
	})
	t.Run("cancel-during-backoff", func(t *testing.T) {
		f := newFake()
		f.errs["stat"] = []error{errReset}
		p := Policy{MaxAttempts: 3, InitialBackoff: time.Hour, MaxBackoff: time.Hour, MaxElapsed: -1}
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(20*time.Millisecond, cancel)
		_, err := New(f, p, nil).Stat(ctx, "k")
		if !errors.Is(err, context.Canceled) || storage.IsRetryable(err) {
			t.Errorf("Stat = %v, want the context's error, not retryable", err)
		}
	})
	t.Run("deadline-before-next-attempt", func(t *testing.T) {
		f := newFake()
		f.errs["stat"] = []error{errReset}
		p := Policy{MaxAttempts: 3, InitialBackoff: time.Hour, MaxBackoff: time.Hour, MaxElapsed: -1}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		start := time.Now()
		_, err := New(f, p, nil).Stat(ctx, "k")
		if !errors.Is(err, syscall.ECONNRESET) || time.Since(start) > 10*time.Second {
			t.Errorf("Stat = %v after %v, want the last error at once", err, time.Since(start))
		}
	})
}

func TestPolicyDefaultsAndBackoff(t *testing.T) {
	if got, want := (Policy{}).withDefaults(), DefaultPolicy(); got != want {
		t.Errorf("zero Policy = %+v, want %+v", got, want)
	}
	if got := (Policy{MaxElapsed: -1}).withDefaults().MaxElapsed; got != -1 {
		t.Errorf("negative MaxElapsed became %v", got)
	}
	p := Policy{InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	tests := []struct {
		n        int
		min, max time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 400 * time.Millisecond, 800 * time.Millisecond},
		{5, 500 * time.Millisecond, time.Second},
		{1000, 500 * time.Millisecond, time.Second},
	}
	for _, tc := range tests {
		for range 50 {
			if got := p.Backoff(tc.n); got < tc.min || got > tc.max {
				t.Errorf("backoff(%d) = %v, want within [%v, %v]", tc.n, got, tc.min, tc.max)
			}
		}
	}
}

func TestResumableRead(t *testing.T) {
	data := storagetest.Bytes(9, 100_000)
	tests := []struct {
		name           string
		offset, length int64 // length -2: Get
		faults         []fault
		getErrs        []error
		want           []byte
		wantOpens      [][2]int64
		wantErr        error // matched with errors.Is; nil for success
		wantRetryable  bool
	}{
		{
			name: "get-resumes-twice", length: -2,
			faults:    []fault{{1000, errReset}, {5000, errReset}},
			want:      data,
			wantOpens: [][2]int64{{0, -1}, {1000, -1}, {6000, -1}},
		},
		{
			name: "range-resumes-at-offset", offset: 100, length: 50_000,
			faults:    []fault{{1000, errReset}},
			want:      data[100:50_100],
			wantOpens: [][2]int64{{100, 50_000}, {1100, 49_000}},
		},
		{
			name: "range-to-end", offset: 99_000, length: -1,
			faults:    []fault{{10, errReset}, {0, errReset}, {0, errReset}},
			want:      data[99_000:],
			wantOpens: [][2]int64{{99_000, -1}, {99_010, -1}, {99_010, -1}, {99_010, -1}},
		},
		{
			name: "gives-up-without-progress", length: -2,
			faults:        []fault{{10, errReset}, {0, errReset}, {0, errReset}, {0, errReset}, {0, errReset}, {0, errReset}},
			wantOpens:     [][2]int64{{0, -1}, {10, -1}, {10, -1}, {10, -1}, {10, -1}},
			wantRetryable: true,
		},
		{
			name: "progress-resets-the-count", length: -2,
			faults: []fault{{1, errReset}, {1, errReset}, {1, errReset}, {1, errReset}, {1, errReset}, {1, errReset}, {1, errReset}},
			want:   data,
		},
		{
			name: "permanent-read-error", length: -2,
			faults:  []fault{{10, io.ErrClosedPipe}},
			wantErr: io.ErrClosedPipe,
		},
		{
			name: "object-gone-on-resume", length: -2,
			faults:  []fault{{10, errReset}},
			getErrs: []error{storage.ErrNotExist},
			wantErr: storage.ErrNotExist,
		},
		{
			name: "reopen-retried", length: -2,
			faults:    []fault{{10, errReset}},
			getErrs:   []error{errReset, errReset},
			want:      data,
			wantOpens: [][2]int64{{0, -1}, {10, -1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.objects["k"] = data
			f.faults = tc.faults
			f.errs["getrange"] = tc.getErrs
			s := New(f, fast, nil)
			var rc io.ReadCloser
			var err error
			if tc.length == -2 {
				rc, err = s.Get(t.Context(), "k")
			} else {
				if tc.getErrs != nil {
					t.Fatal("getErrs apply to GetRange only with Get")
				}
				rc, err = s.GetRange(t.Context(), "k", tc.offset, tc.length)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			switch {
			case tc.wantRetryable:
				if !storage.IsRetryable(err) {
					t.Errorf("read error = %v, want a retryable one", err)
				}
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("read error = %v, want %v", err, tc.wantErr)
				}
			case err != nil:
				t.Fatalf("read: %v", err)
			case !bytes.Equal(got, tc.want):
				t.Errorf("read %d bytes, want %d (equal: %v)", len(got), len(tc.want), bytes.Equal(got, tc.want))
			}
			if tc.wantOpens != nil && !slices.Equal(f.opens, tc.wantOpens) {
				t.Errorf("opens = %v, want %v", f.opens, tc.wantOpens)
			}
			if _, err := rc.Read(make([]byte, 1)); err == nil {
				t.Error("Read after the end succeeded")
			}
		})
	}
}

func TestList(t *testing.T) {
	f := newFake()
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		f.objects[k] = []byte(k)
	}
	t.Run("resumes-without-duplicates", func(t *testing.T) {
		f.listFailAfter = 3
		var got []string
		err := New(f, fast, nil).List(t.Context(), "", func(oi storage.ObjectInfo) error {
			got = append(got, oi.Key)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"a", "b", "c", "d", "e"}; !slices.Equal(got, want) {
			t.Errorf("fn saw %q, want %q", got, want)
		}
	})
	t.Run("fn-error-not-retried", func(t *testing.T) {
		before := f.count("list")
		fnErr := storage.Retryable(errors.New("fn failed"))
		err := New(f, fast, nil).List(t.Context(), "", func(storage.ObjectInfo) error { return fnErr })
		if err != fnErr {
			t.Errorf("List = %v, want fn's error itself", err)
		}
		if got := f.count("list") - before; got != 1 {
			t.Errorf("inner List called %d times, want 1", got)
		}
	})
}

func TestForwardsOptionalInterfaces(t *testing.T) {
	type plain struct{ storage.Store }
	type onlyCC struct {
		storage.Store
		storage.ConditionalCreator
	}
	type onlyCopier struct {
		storage.Store
		storage.Copier
	}
	f := newFake()
	full := fakeFull{f}
	tests := []struct {
		name       string
		inner      storage.Store
		cc, copier bool
	}{
		{"none", plain{f}, false, false},
		{"conditional", onlyCC{f, full}, true, false},
		{"copier", onlyCopier{f, full}, false, true},
		{"both", full, true, true},
	}
	for _, tc := range tests {
		s := New(tc.inner, fast, nil)
		if _, ok := s.(storage.ConditionalCreator); ok != tc.cc {
			t.Errorf("%s: ConditionalCreator = %v, want %v", tc.name, ok, tc.cc)
		}
		if _, ok := s.(storage.Copier); ok != tc.copier {
			t.Errorf("%s: Copier = %v, want %v", tc.name, ok, tc.copier)
		}
		if s.String() != f.String() {
			t.Errorf("%s: String() = %q", tc.name, s.String())
		}
	}
}

// TestConformance shows the wrapper is transparent over a real backend.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		c, err := fs.New(fs.Config{Root: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		s := New(c, DefaultPolicy(), nil)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestLogsRetries(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	f := newFake()
	f.objects["wal/1"] = []byte("x")
	f.errs["stat"] = []error{errReset}
	if _, err := New(f, fast, log).Stat(t.Context(), "wal/1"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"level=INFO", "op=stat", "key=wal/1", "attempt=1", "connection reset by peer"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log %q lacks %q", buf.String(), want)
		}
	}
}
