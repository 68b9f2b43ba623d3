package repo

import (
	"context"
	"fmt"
	"io"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/storage"
)

// ObjectInfo returns what an object's header and trailer say (raw size,
// SHA-256 of the raw content, compression) with two small ranged reads,
// without downloading the body. Comparing Sum with a local file's is how a
// duplicate push is told apart from a conflicting one.
func (r *Repo) ObjectInfo(ctx context.Context, key string) (codec.Info, error) {
	st, err := r.store.Stat(ctx, key)
	if err != nil {
		return codec.Info{}, err
	}
	info, err := codec.ReadInfo(&rangeReaderAt{ctx: ctx, store: r.store, key: key}, st.Size, r.keys())
	if err != nil {
		return codec.Info{}, fmt.Errorf("%s in %s: %w", key, r.store, err)
	}
	return info, nil
}

// rangeReaderAt adapts a store's ranged reads to io.ReaderAt.
type rangeReaderAt struct {
	ctx   context.Context
	store storage.Store
	key   string
}

func (ra *rangeReaderAt) ReadAt(p []byte, off int64) (int, error) {
	rc, err := ra.store.GetRange(ra.ctx, ra.key, off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	n, err := io.ReadFull(rc, p)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}
