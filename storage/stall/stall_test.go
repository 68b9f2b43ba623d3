package stall

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/fs"
)

// hangingStore's Put reads some of the body, then waits for its context
// (a connection that stopped moving); its Get returns a body whose reads
// wait for the context after the first bytes.
type hangingStore struct {
	storage.Store
	readFirst int
}

func (h hangingStore) Put(ctx context.Context, key string, r io.Reader) error {
	if _, err := io.CopyN(io.Discard, r, int64(h.readFirst)); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

func (h hangingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return io.NopCloser(io.MultiReader(strings.NewReader("first bytes"), ctxReader{ctx})), nil
}

type ctxReader struct{ ctx context.Context }

func (c ctxReader) Read([]byte) (int, error) { <-c.ctx.Done(); return 0, c.ctx.Err() }

// slowReader delivers its bytes slowly, like a backup compressing a file.
type slowReader struct {
	r     io.Reader
	pause time.Duration
}

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	return s.r.Read(p)
}

func TestStalls(t *testing.T) {
	inner, err := fs.New(fs.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	st := New(hangingStore{Store: inner, readFirst: 4}, 100*time.Millisecond)
	start := time.Now()
	err = st.Put(context.Background(), "k", strings.NewReader("some bytes"))
	if !storage.IsRetryable(err) || !strings.Contains(err.Error(), "stalled") || time.Since(start) > 5*time.Second {
		t.Errorf("stalled upload: %v after %s; want a retryable 'stalled' error within the timeout", err, time.Since(start))
	}
	rc, err := st.Get(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if string(b) != "first bytes" || !storage.IsRetryable(err) || !strings.Contains(err.Error(), "stalled") {
		t.Errorf("stalled download: %q, %v; want the first bytes then a retryable 'stalled' error", b, err)
	}

	// The caller's own cancellation stays a cancellation.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	if err := New(hangingStore{Store: inner}, time.Minute).Put(ctx, "k", strings.NewReader("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled upload: %v; want context.Canceled", err)
	}
}

// A slow producer and a slow consumer are not the network's fault.
func TestSlowEndsAreNotStalls(t *testing.T) {
	inner, err := fs.New(fs.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	st := New(inner, 100*time.Millisecond)
	data := bytes.Repeat([]byte("x"), 3000)
	if err := st.Put(context.Background(), "k", slowReader{r: iotestOneByte(data), pause: 150 * time.Millisecond}); err != nil {
		t.Fatalf("slow producer: %v", err)
	}
	rc, err := st.Get(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 1000)
	var got []byte
	for {
		n, err := rc.Read(buf)
		got = append(got, buf[:n]...)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("slow consumer: %v", err)
		}
		time.Sleep(150 * time.Millisecond)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("read %d bytes back, want %d", len(got), len(data))
	}
	if _, ok := st.(storage.ConditionalCreator); !ok {
		t.Error("the fs store's conditional create is hidden by the watchdog")
	}
}

// iotestOneByte returns a reader of b giving 1000 bytes per read.
func iotestOneByte(b []byte) io.Reader { return &chunks{b: b} }

type chunks struct{ b []byte }

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 1000)], c.b)
	c.b = c.b[n:]
	return n, nil
}
