package repo

import (
	"context"
	"fmt"
)

// EncodeSlots bounds how many objects are encoded at the same time by the
// Puts that share it. Encoding (compression, checksums) is CPU work: on a
// machine with 2 cores, 5 WAL segments compressing at once do not finish
// sooner than 2 at a time, they only take turns on the cores, and each turn
// finds its compressor's 2.5 MiB of window and match tables evicted from the
// cache by the others. Measured on archive-push's look-ahead (16 MiB WAL
// segments, zstd, 2 cores): a fifth less time per segment with as many slots
// as cores than without a bound.
//
// A slot covers only the encoding: it is given back as soon as the encoder
// has written its last byte, while the store may still be completing the
// upload, so uploads waiting on the network keep overlapping. (An object
// larger than the store's part or block size, 8 MiB on S3 and Azure, keeps
// its slot while its first parts upload: its encoder waits for the store to
// read on. Compressed WAL segments are smaller.)
type EncodeSlots struct {
	free chan struct{}
}

// NewEncodeSlots returns n slots (at least 1).
func NewEncodeSlots(n int) *EncodeSlots {
	return &EncodeSlots{free: make(chan struct{}, max(n, 1))}
}

// acquire waits for a slot. A nil *EncodeSlots has a slot for everyone.
func (s *EncodeSlots) acquire(ctx context.Context) error {
	if s == nil {
		return nil
	}
	select {
	case s.free <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for a free encoder: %w", context.Cause(ctx))
	}
}

func (s *EncodeSlots) release() {
	if s != nil {
		<-s.free
	}
}
