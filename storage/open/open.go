// Package open turns a repository URL into a ready storage.Store: the
// backend for its scheme, wrapped in the retry and concurrency-limit
// policies. It is the only package that knows every backend.
package open

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/azure"
	"github.com/walferry/walferry/storage/fs"
	"github.com/walferry/walferry/storage/gcs"
	"github.com/walferry/walferry/storage/limit"
	"github.com/walferry/walferry/storage/retry"
	"github.com/walferry/walferry/storage/s3"
	"github.com/walferry/walferry/storage/stall"
)

// Options tune every store opened.
type Options struct {
	// Concurrency bounds simultaneous operations on the store and sizes
	// the upload buffers of the object stores.
	Concurrency int
	// PartSize is the multipart part / block size of S3 and Azure uploads
	// and the chunk size of GCS uploads.
	PartSize int64
	// Retry bounds the retries of transient failures.
	Retry retry.Policy
	// StallTimeout is how long a transfer's body may move no bytes before
	// it is cancelled and retried (0: stall.DefaultTimeout).
	StallTimeout time.Duration
	// CreateRoot creates a file:// repository's directory when missing;
	// only repo init sets it, so an unmounted NFS volume is never replaced
	// by an empty local directory.
	CreateRoot bool
	Logger     *slog.Logger
}

// Store opens the repository at rawURL.
func Store(ctx context.Context, rawURL string, o Options) (storage.Store, error) {
	loc, err := storage.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	st, err := backend(ctx, loc, o)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", loc, err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The watchdog under the retries: a stalled transfer is cancelled
	// and retried like any other transient failure.
	st = retry.New(stall.New(st, o.StallTimeout), o.Retry, log.With("component", "storage", "repo", loc.String()))
	if o.Concurrency > 0 {
		st = limit.New(st, o.Concurrency)
	}
	return st, nil
}

func backend(ctx context.Context, loc storage.Location, o Options) (storage.Store, error) {
	switch loc.Scheme {
	case "file":
		if o.CreateRoot {
			if err := os.MkdirAll(loc.Path, 0o750); err != nil {
				return nil, fmt.Errorf("create repository directory: %w", err)
			}
		}
		return fs.New(fs.Config{Root: loc.Path})
	case "s3":
		return s3.New(ctx, s3.Config{
			Bucket:      loc.Bucket,
			Prefix:      loc.Path,
			Endpoint:    loc.Params.Get("endpoint"),
			Region:      loc.Params.Get("region"),
			PathStyle:   loc.Params.Get("path-style") == "true",
			PartSize:    o.PartSize,
			Concurrency: o.Concurrency,
		})
	case "gs":
		return gcs.New(ctx, gcs.Config{
			Bucket:    loc.Bucket,
			Prefix:    loc.Path,
			Endpoint:  loc.Params.Get("endpoint"),
			ChunkSize: int(o.PartSize),
		})
	case "azure":
		return azure.New(ctx, azure.Config{
			Container:   loc.Bucket,
			Prefix:      loc.Path,
			Account:     loc.Params.Get("account"),
			Endpoint:    loc.Params.Get("endpoint"),
			BlockSize:   o.PartSize,
			Concurrency: o.Concurrency,
		})
	}
	return nil, fmt.Errorf("no backend for scheme %q", loc.Scheme)
}
